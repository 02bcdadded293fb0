"""GPU-shaped 8-bit graphs: the calibrated fp32 Q/DQ UNet converted to fp16 around its Q/DQ pairs.

    files, report = write_gpu_quantized(src_qdq_onnx, dst_dir, "unet", "int8")   # unet.int8-fp16.onnx (+ .data)
    check_gpu_graph(onnx.load(path, load_external_data=False))                   # the structure, or MonkeyError

TensorRT builds a Q/DQ graph strongly typed: a layer runs in the type its inputs have. The CPU graph
(export/quantize.py) is the fp32 graph with Q/DQ, so on a GPU every layer left unquantized (norms, softmax,
the kept groups, the Q/DQ-free glue) would run in fp32, and an int8 or fp8 plan would be slower than the fp16
plan it should beat. The GPU graph is the same calibrated graph (same scales, same kept groups) with its float
parts in fp16, like the fp16 export (export/fp16.py: fp32 islands = the map path, the normalisations, the
sinusoidal embeddings):

1. opset >= 19: QuantizeLinear/DequantizeLinear take fp16 inputs and scales from opset 19 on (opset 13's
   scales are float32 only); the graph is converted while its weights stay on disk.
2. 7-bit weights (a CPU graph quantized with `reduce_range`, on a CPU without VNNI) are re-quantized to the full
   int8 range from the fp32 UNet's weights (requantize_weights): GPUs have no 16-bit saturation to avoid.
3. constant biases: the quantizer stores a Conv/Gemm bias as int32 with a DequantizeLinear of scale
   activation scale x weight scale (~1e-5, below fp16's normal range); they are folded back to float
   initializers here (TensorRT fuses a float bias into a quantized layer; the fp32 value is exact).
4. fp16 conversion (onnxruntime.transformers.float16, as export/fp16.py): every float initializer and tensor
   outside the islands becomes fp16, Q/DQ scales included, so each DequantizeLinear outputs fp16 (its output
   type is its scale's type) and feeds an fp16 layer; casts go in at the islands' borders and the graph's
   inputs/outputs keep the manifest's float32.

`check_gpu_graph` walks the result: every DequantizeLinear's scale and output fp16 and its consumers fp16 ops
(or a Cast into an island), every island node fp32, no float32 compute outside the islands. The CPU graph
stays the fp32-based one: ONNX Runtime's CPU provider has no fp16 integer kernels to gain from this.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from monkey_trt.core.errors import MonkeyError
from monkey_trt.enginedir.manifest import (
    GPU_BASE,
    QUANT_BASES,
    QUANTIZED_PRECISIONS,
    graph_key,
)
from monkey_trt.export.qdq_types import int8_activations

QDQ_OPSET = 19  # fp16 inputs and scales in QuantizeLinear/DequantizeLinear
QUANT_BASE_CHOICES = ("auto", "fp32", "fp16", "both")  # `export --quant-base`
DEFAULT_QUANT_BASE = "auto"  # the one default (resolve_bases says what it writes)
_FP32, _FP16, _UINT8 = 1, 10, 2  # onnx.TensorProto.FLOAT, FLOAT16, UINT8
_QDQ = ("QuantizeLinear", "DequantizeLinear")
_NEUTRAL = ("Cast", "Shape", "Size", "Constant", "ConstantOfShape")  # no float compute of their own


# -- which bases an export writes -------------------------------------------------------------------------
def resolve_bases(choice: str, precision: str, fp16_graphs: bool, gpu_visible: bool) -> tuple[str, ...]:
    """The bases `export --quant-base CHOICE` writes for one 8-bit precision.

    auto (the default): the CPU graph (fp32 base) always; the GPU graph (fp16 base) too when the directory is
    meant for a GPU: it holds (or this export writes) fp16 graphs, a CUDA device is visible to this export, or
    the precision is fp8 (TensorRT only). A CPU-only export of int8 writes no GPU graph; converting one later
    needs no calibration (`--quant-base fp16` on the directory: seconds on the tiny model, about a minute at
    sd15 size).
    """
    if choice not in QUANT_BASE_CHOICES:
        raise MonkeyError(f"--quant-base must be one of {', '.join(QUANT_BASE_CHOICES)}, got {choice!r}")
    if precision not in QUANTIZED_PRECISIONS:
        return ()
    if choice == "both":
        return QUANT_BASES
    if choice in QUANT_BASES:
        return (choice,)
    gpu = fp16_graphs or gpu_visible or precision == "fp8"
    return ("fp32", GPU_BASE) if gpu else ("fp32",)


def gpu_visible() -> bool:
    """A CUDA device this export could target: ONNX Runtime's CUDA/TensorRT providers or torch's CUDA (False when unsure)."""
    try:
        import onnxruntime

        if {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(onnxruntime.get_available_providers()):
            return True
    except Exception:  # noqa: BLE001 - a broken install is "no GPU" for this default
        pass
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def gpu_quant_file_names(networks, precisions=QUANTIZED_PRECISIONS) -> list[str]:
    """Every file a GPU-shaped 8-bit export may write (OutputStage's list of the names it owns)."""
    return [f for n in networks for p in precisions for f in (gpu_file_name(n, p), gpu_file_name(n, p) + ".data")]


def gpu_file_name(network: str, precision: str) -> str:
    return f"{network}.{graph_key(precision, GPU_BASE)}.onnx"


# -- the conversion ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GpuQuantReport:
    """What the conversion did (recorded in the manifest's `quantization.gpu`)."""

    opset: int
    folded_biases: int
    dequantize_nodes: int
    fp32_nodes: int
    fp32_ops: tuple[str, ...]
    subnormal_scales: int  # scale values below fp16's smallest normal (2^-14): kept, less precise
    requantized_weights: int = 0  # 7-bit CPU weights given their 8th bit back from the fp32 UNet (requantize_weights)

    def to_json(self) -> dict:
        return {"base": GPU_BASE, "opset": self.opset, "folded_biases": self.folded_biases,
                "dequantize_nodes": self.dequantize_nodes, "fp32_nodes": self.fp32_nodes, "fp32_ops": list(self.fp32_ops),
                "subnormal_scales": self.subnormal_scales, "requantized_weights": self.requantized_weights,
                "converter": "onnxruntime.transformers.float16 (export/fp16.py islands)"}


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def fold_constant_dequantize(graph) -> int:
    """Replace every DequantizeLinear of a constant int32 tensor (a quantized bias) by its float32 value."""
    import numpy as np
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}
    folded, keep_nodes = 0, []
    for node in graph.node:
        x = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" and node.input else None
        if x is None or x.data_type != 6 or not all(i in inits for i in node.input[1:] if i):  # 6: INT32
            keep_nodes.append(node)
            continue
        q = numpy_helper.to_array(x).astype(np.float64)
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        zp = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64) if len(node.input) > 2 and node.input[2] else 0.0
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if np.ndim(scale) == 1 and q.ndim > 1:  # per-axis
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zp = scale.reshape(shape), np.reshape(zp, shape) if np.ndim(zp) else zp
        graph.initializer.append(numpy_helper.from_array(((q - zp) * scale).astype(np.float32), node.output[0]))
        folded += 1
    if folded:
        del graph.node[:]
        graph.node.extend(keep_nodes)
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        kept = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return folded


def requantize_weights(graph, fp32_weights) -> int:
    """Full 8-bit int8 weights (symmetric, per channel, [-127, 127]) from the fp32 UNet's own weights, for a CPU
    graph quantized with 7-bit weights (`reduce_range`: AVX2 CPUs without VNNI). GPUs have no 16-bit saturation
    to avoid, so the GPU graph gets the 8th bit back. `fp32_weights(name)` -> the fp32 array, or None. Returns
    how many weights were re-quantized (ONNX Runtime names them `<weight>_quantized` / `_scale`)."""
    import numpy as np
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}
    done = 0
    for node in graph.node:
        q = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if q is None or q.data_type != 3 or not q.name.endswith("_quantized") or node.input[1] not in inits:  # 3: INT8
            continue
        w = fp32_weights(q.name[: -len("_quantized")])
        if w is None or w.shape != tuple(q.dims):
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % max(w.ndim, 1)
        per_channel = numpy_helper.to_array(inits[node.input[1]]).ndim == 1
        reduce = tuple(i for i in range(w.ndim) if i != axis) if per_channel else None
        amax = np.abs(w.astype(np.float64)).max(axis=reduce, keepdims=per_channel)
        scale = np.where(amax > 0, amax / 127.0, 1.0)
        new_q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        inits[q.name].CopyFrom(numpy_helper.from_array(new_q, q.name))
        flat = scale.reshape(-1) if per_channel else np.asarray(scale)
        sname = node.input[1]
        inits[sname].CopyFrom(numpy_helper.from_array(flat.astype(numpy_helper.to_array(inits[sname]).dtype), sname))
        done += 1
    return done


def convert_qdq_fp16(model, network: str = "unet") -> GpuQuantReport:
    """The calibrated fp32 Q/DQ `model` (weights loaded, opset >= 19, types inferred) to fp16 in place."""
    import numpy as np
    from onnx import numpy_helper

    from monkey_trt.export.fp16 import convert_model_fp16

    if _opset(model) < QDQ_OPSET:
        raise MonkeyError(f"the GPU-shaped 8-bit graph needs opset >= {QDQ_OPSET} (fp16 Q/DQ scales), got {_opset(model)}")
    folded = fold_constant_dequantize(model.graph)
    report = convert_model_fp16(model, network)
    inits = {t.name: t for t in model.graph.initializer}
    dq = [n for n in model.graph.node if n.op_type in _QDQ]
    tiny = 0
    for n in dq:
        s = inits.get(n.input[1])
        if s is not None and s.data_type == _FP16:
            v = np.abs(numpy_helper.to_array(s).astype(np.float32))
            tiny += int(((v > 0) & (v < 2.0 ** -14)).sum())
    return GpuQuantReport(_opset(model), folded, sum(n.op_type == "DequantizeLinear" for n in dq), report.fp32_nodes,
                          report.fp32_ops, tiny)


def _to_opset(src: Path, dst: Path, external: bool) -> None:
    """`src` converted to opset QDQ_OPSET (weights untouched on disk) and its types inferred, saved as `dst`."""
    import onnx
    from onnx import shape_inference, version_converter

    model = onnx.load(str(src), load_external_data=False)
    if _opset(model) < QDQ_OPSET:
        model = version_converter.convert_version(model, QDQ_OPSET)
    onnx.load_external_data_for_model(model, str(Path(src).parent))
    from monkey_trt.export.onnx_files import save_onnx

    save_onnx(model, dst, external)
    del model
    shape_inference.infer_shapes_path(str(dst), str(dst))  # by path: works past protobuf's 2 GB


def _weights_of(fp32_onnx: Path):
    """name -> the fp32 graph's initializer as an array, read one at a time (external data stays on disk)."""
    import onnx
    from onnx import numpy_helper

    tensors = {t.name: t for t in onnx.load(str(fp32_onnx), load_external_data=False).graph.initializer}
    return lambda name: numpy_helper.to_array(tensors[name], base_dir=str(Path(fp32_onnx).parent)) if name in tensors else None


def write_gpu_quantized(src: Path, dst_dir: Path, network: str, precision: str, record: dict | None = None,
                        fp32_src: Path | None = None):
    """DST_DIR/<network>.<precision>-fp16.onnx (+ .data) from the CPU (fp32-based) Q/DQ graph `src`, checked by
    check_gpu_graph; returns its PrecisionFiles (base fp16; `record`: the CPU graph's quantization record, whose
    calibration and settings it shares) and the GpuQuantReport. `fp32_src`: the network's fp32 graph, whose
    weights replace 7-bit int8 weights (a CPU graph made with `reduce_range`) by full 8-bit ones."""
    import onnx

    from monkey_trt.enginedir.digests import sha256_file
    from monkey_trt.enginedir.manifest import PrecisionFiles
    from monkey_trt.export.onnx_files import save_onnx

    src = Path(src)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.load(str(src), load_external_data=False).graph.initializer)
    dst = Path(dst_dir) / gpu_file_name(network, precision)
    with tempfile.TemporaryDirectory(prefix=".monkey-gpu-quant-", dir=dst_dir) as tmp:
        work = Path(tmp) / "qdq19.onnx"
        _to_opset(src, work, external)
        model = onnx.load(str(work), load_external_data=True)
        int8_activations(model.graph)  # TensorRT: int8 activations of zero point 0 (a CPU graph has uint8: qdq_types.py)
        seven_bit = precision == "int8" and bool((record or {}).get("settings", {}).get("reduce_range"))
        requantized = requantize_weights(model.graph, _weights_of(fp32_src)) if seven_bit and fp32_src else 0
        report = replace(convert_qdq_fp16(model, network), requantized_weights=requantized)
        files = save_onnx(model, dst, external)
        del model
    onnx.checker.check_model(str(dst))
    check_gpu_graph(onnx.load(str(dst), load_external_data=False))
    paths = [Path(dst_dir) / f for f in files]
    quant = {**(record or {}), "gpu": report.to_json()}
    return PrecisionFiles(files[0], files[1] if external else None, {p.name: sha256_file(p) for p in paths},
                          {p.name: p.stat().st_size for p in paths}, report.fp32_ops, quantization=quant,
                          base=GPU_BASE), report


# -- the structure check ---------------------------------------------------------------------------------------
def island_nodes(graph) -> set[str]:
    """Names of the nodes the fp16 export keeps in fp32 (export/fp16.py ISLANDS + the converter's block list)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    from monkey_trt.export.fp16 import NORM_OPS
    from monkey_trt.export.graph_walks import embedding_nodes, map_path_nodes

    ops = set(DEFAULT_OP_BLOCK_LIST) | set(NORM_OPS) | {"Sin", "Cos"}
    return map_path_nodes(graph) | embedding_nodes(graph) | {n.name for n in graph.node if n.op_type in ops}


def check_gpu_graph(model) -> dict:
    """Walk a GPU-shaped 8-bit graph (weights need not be loaded); MonkeyError naming the first fault.

    * no uint8 Q/DQ (TensorRT's explicit quantization: int8 of zero point 0, or fp8);
    * every DequantizeLinear has an fp16 scale, so an fp16 output, and feeds fp16 ops (a Cast into an island at most);
    * every quantized layer (a Conv/MatMul/Gemm reading a DequantizeLinear) computes in fp16;
    * every island node (map path, normalisations, embeddings) computes in fp32;
    * no other node computes in fp32 (only Casts and shape ops produce float32 outside the islands).
    Returns counts: dequantize nodes, quantized layers, island nodes, fp16 nodes.
    """
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    islands = island_nodes(g)
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    floats = (_FP32, _FP16)

    def fail(msg: str):
        raise MonkeyError(f"GPU-shaped 8-bit graph: {msg}")

    for n in g.node:
        if n.op_type in _QDQ and len(n.input) > 2 and types.get(n.input[2]) == _UINT8:
            fail(f"{n.op_type} {n.name} has a uint8 zero point (TensorRT takes int8 with zero point 0, or fp8)")
    dq = [n for n in g.node if n.op_type == "DequantizeLinear"]
    layers = set()
    for n in dq:
        if types.get(n.input[1]) != _FP16 or types.get(n.output[0]) != _FP16:
            fail(f"DequantizeLinear {n.name} has a {'fp16' if types.get(n.input[1]) == _FP16 else 'non-fp16'} scale and "
                 "a non-fp16 output (TensorRT's strongly typed mode gives it its scale's type)")
        for c in consumers.get(n.output[0], []):
            if c.op_type == "Cast" and all(cc.name in islands for cc in consumers.get(c.output[0], [])):
                continue
            if c.name in islands or any(types.get(o) == _FP32 for o in c.output):
                fail(f"DequantizeLinear {n.name} feeds {c.op_type} {c.name}, which computes in fp32")
            if c.op_type in ("Conv", "MatMul", "Gemm"):
                layers.add(c.name)
    if not dq:
        fail("no DequantizeLinear (not a quantized graph)")
    fp16_nodes = 0
    for n in g.node:
        outs = [types.get(o) for o in n.output if o]
        if n.name in islands:
            if n.op_type not in _NEUTRAL and any(t == _FP16 for t in outs):
                fail(f"island node {n.op_type} {n.name} computes in fp16 (it must stay fp32)")
            continue
        if n.op_type in _NEUTRAL or n.op_type in _QDQ:
            continue
        if any(t == _FP32 for t in outs):
            fail(f"{n.op_type} {n.name} computes in fp32 outside the fp32 islands")
        fp16_nodes += any(t == _FP16 for t in outs)
        if any(t in floats and t != _FP16 for t in outs):  # bf16/double: not this graph's types
            fail(f"{n.op_type} {n.name} outputs a float type other than fp16/fp32")
    return {"dequantize_nodes": len(dq), "quantized_layers": len(layers), "island_nodes": len(islands),
            "fp16_nodes": fp16_nodes}


# -- into an engine directory ---------------------------------------------------------------------------------
def check_quant_base(choice: str, precisions) -> str:
    """`export --quant-base`: a known choice, and given away from auto only with an 8-bit precision."""
    if choice not in QUANT_BASE_CHOICES:
        raise MonkeyError(f"--quant-base must be one of {', '.join(QUANT_BASE_CHOICES)}, got {choice!r}")
    if choice != DEFAULT_QUANT_BASE and not any(p in QUANTIZED_PRECISIONS for p in precisions):
        raise MonkeyError("--quant-base applies to --precision int8 or fp8 only")
    return choice


@dataclass(frozen=True)
class BasePlan:
    """What an export does for one 8-bit precision: calibrate (the CPU graph is missing and needed), convert to
    the GPU graph, and which bases the directory keeps."""

    eight_bit: str  # int8 | fp8
    bases: tuple[str, ...]  # wanted (resolve_bases)
    calibrate: bool  # quantize_static on the fp32 UNet (export/quantize.py): the CPU graph is needed and missing
    convert: bool  # the GPU graph is wanted and missing


def plan_bases(manifest, precisions, choice: str, fp16_graphs: bool, gpu: bool | None = None) -> list[BasePlan]:
    """The BasePlan of each 8-bit precision in `precisions` against `manifest` (None: a new directory)."""
    out = []
    for p in precisions:
        if p not in QUANTIZED_PRECISIONS:
            continue
        bases = resolve_bases(choice, p, fp16_graphs, gpu_visible() if gpu is None and choice == "auto" else bool(gpu))
        have = () if manifest is None else _bases_present(manifest, p)
        convert = GPU_BASE in bases and GPU_BASE not in have
        calibrate = "fp32" not in have and ("fp32" in bases or convert)
        out.append(BasePlan(p, bases, calibrate, convert))
    return out


def _bases_present(manifest, precision: str) -> tuple[str, ...]:
    """Bases every quantized network of `manifest` has for `precision` (() when none is quantized)."""
    nets = [n for n in manifest.networks if manifest.bases(n, precision)]
    return tuple(b for b in QUANT_BASES if nets and all(b in manifest.bases(n, precision) for n in nets))


def add_gpu_graphs(root: Path, manifest, dst_dir: Path, plans: list[BasePlan], progress=None):
    """Convert the CPU 8-bit graphs of `plans` into GPU graphs in `dst_dir` (the staging folder of the same commit;
    the CPU graph is read from `dst_dir` when this commit wrote it (plan.calibrate), else from `root`), and drop
    the CPU graphs this commit wrote but no plan keeps (files we staged ourselves; one already in `root` is kept).
    Returns the manifest with the entries."""
    from monkey_trt.enginedir.manifest import Manifest, NetworkEntry

    say = progress or (lambda msg, done, total: None)
    entries, exporter = dict(manifest.networks), dict(manifest.exporter)
    for plan in plans:
        cpu_key, gpu_key = graph_key(plan.eight_bit, "fp32"), graph_key(plan.eight_bit, GPU_BASE)
        for name, e in list(entries.items()):
            cpu = e.precisions.get(cpu_key)
            if cpu is None:
                continue
            precisions = dict(e.precisions)
            if plan.convert and gpu_key not in precisions:
                say(f"converting {name}'s {plan.eight_bit} graph to the GPU graph (fp16 base)", 0, 1)
                src = (Path(dst_dir) if plan.calibrate else Path(root)) / cpu.file
                precisions[gpu_key], _report = write_gpu_quantized(src, dst_dir, name, plan.eight_bit, cpu.quantization,
                                                                   fp32_src=Path(root) / e.file)
            if "fp32" not in plan.bases and plan.calibrate:
                for f in cpu.sha256:  # calibrate: add_quantized wrote it into our staging folder, this commit: ours
                    (Path(dst_dir) / f).unlink(missing_ok=True)
                precisions.pop(cpu_key)
            entries[name] = NetworkEntry(e.desc, e.file, e.data_file, e.sha256, e.sizes, precisions)
        if plan.convert:
            exporter[f"{plan.eight_bit}_gpu_converter"] = "onnxruntime.transformers.float16 + export/gpu_quant.py"
    return Manifest(**{**manifest.__dict__, "networks": entries, "exporter": exporter})
