"""8-bit UNet graphs (INT8, FP8) with explicit quantization: Q/DQ pairs in the ONNX, calibrated on MONKEY's own calls.

    settings = QuantSettings("int8")
    files, report = write_quantized_network(src_onnx, dst_dir, "unet", calibration_data, settings)

The library is `onnxruntime.quantization` (static QDQ), shipped with onnxruntime, a core dependency, so the
same install that runs the engine can quantize it on a CPU-only machine (docs/int8.md says why it was kept
over NVIDIA Model Optimizer). The graph is the exported fp32 UNet with QuantizeLinear/DequantizeLinear pairs:

* int8: symmetric int8 activations (zero point 0, what TensorRT's explicit quantization requires) and
  per-output-channel symmetric int8 weights. On x86 CPUs ONNX Runtime rewrites the activation pairs to
  uint8 and runs u8s8 integer kernels. Weights are 7-bit (`reduce_range`) where the CPU lacks VNNI: the
  u8·s8 pair sums of AVX2's integer multiply-add saturate at 16 bits with full 8-bit weights.
* fp8: float8 e4m3fn activations and weights (opset 19 QuantizeLinear), for TensorRT on compute
  capability >= 8.9; ONNX Runtime's CPU provider has no fp8 kernels (refused there).

The weighted layers are quantized: Convs with their outputs too, because ONNX Runtime's CPU provider runs a
Conv in integers only as DequantizeLinear -> Conv -> QuantizeLinear (QLinearConv; with a float output it
dequantizes and runs the fp32 kernel, slower than fp32); linear layers (MatMul with a weight, Gemm) keep a
float output: ONNX Runtime fuses DequantizeLinear -> MatMul into MatMulIntegerToFloat (integer GEMM, float
result), and TensorRT prefers Q/DQ on the inputs of weighted layers. Every consumer gets its own Q/DQ pair
(a DequantizeLinear shared by two layers fuses into neither; engine/ort.py also keeps ONNX Runtime's
common-subexpression elimination from merging them back for int8 sessions).

What stays in float, and why (each is a `KEEP` group; `QuantSettings.keep` chooses them):

* `map` - the mask layer's attention-map path: `to_q`, `to_k_ip`, Q·K_ipᵀ, softmax, head mean. The map
  has no 1/√d scale and is min-max normalised and thresholded at 0.5: an 8-bit Q or K_ip moves logits by
  a sizeable fraction of a unit and flips mask pixels near the threshold.
* `embedding` - the sinusoidal timestep embedding, the guidance (`timestep_cond`) projection, the time
  MLP and every ResNet's `time_emb_proj`: a handful of vector products per step (no speed to win) whose
  error would shift every feature map at once.
* `io` - `conv_in` (the latents) and `conv_out` (the noise prediction): 4-channel layers, cheap, and the
  LCM step multiplies the prediction's error straight into the next latents.
* `attention` - the activation x activation products of attention (Q·Kᵀ, softmax·V): softmax
  probabilities of ~1/tokens fall below int8's 1/127 step. Kept for int8 (NVIDIA's INT8 diffusion recipe
  does the same); fp8's exponent keeps small probabilities, so fp8 quantizes them.
* `skip` - every ResNet's `conv_shortcut`: its input is the un-normalised concatenation of the decoder's
  features and the encoder's skip connection, two ranges one per-tensor scale cannot serve. 1x1 convs
  (a few % of the UNet's MACs); measured on the tiny UNet: +5 dB image PSNR.
* `downsample` - the stride-2 `downsamplers` convs: their input is the un-normalised residual stream with
  its outliers. Cheap (one conv per level at a quarter of its size); +4 dB on top of `skip`.
* normalisations (GroupNorm = InstanceNormalization, LayerNorm), softmax, the IP mask resize, the mask
  multiply and the IP scale are never quantized op types: they compute in float from whatever enters them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from monkey_trt.core.disk import check_room, full_disk_is_an_error
from monkey_trt.core.errors import MonkeyError
from monkey_trt.enginedir.manifest import QUANTIZED_PRECISIONS
from monkey_trt.export.graph_walks import embedding_nodes, map_path_nodes, name_nodes
from monkey_trt.export.qdq_types import uint8_activations
from monkey_trt.export.quant_groups import all_8bit_networks, default_keep, more_kept_nodes

KEEP = ("map", "embedding", "io", "attention", "skip", "downsample",  # kept-precision groups (see the module doc)
        "upsample", "mid_attention", "patch_embedding", "projection")  # (the VAE decoder's, the image encoder's: quant_groups.py)
DEFAULT_KEEP = {"int8": ("map", "embedding", "io", "attention", "skip", "downsample"),
                "fp8": ("map", "embedding", "io", "skip", "downsample")}  # the UNet's; the others: quant_groups.DEFAULT_KEEP
QUANT_OPS = ("Conv", "MatMul", "Gemm")  # the weighted layers (+ attention's MatMuls unless kept)
CALIB_METHODS = ("minmax", "percentile", "entropy")
LIBRARY = "onnxruntime.quantization"
QUANT_ROOM = 2  # x the fp32 UNet: the quantizer's copy of it and its shape-inferred copy are on disk at once (a lower bound)


@dataclass(frozen=True)
class QuantSettings:
    """How one network is quantized; recorded in the manifest (`quantization`)."""

    precision: str = "int8"
    keep: tuple[str, ...] | None = None  # None: the network's default (DEFAULT_KEEP[precision] for the UNet)
    network: str = "unet"  # which network's graph (the others' default kept sets: quant_groups.DEFAULT_KEEP)
    calibrate_method: str = "minmax"  # int8: minmax | percentile | entropy; fp8 always uses ORT's "distribution"
    percentile: float = 99.999
    per_channel: bool = True
    reduce_range: bool | None = None  # None: 7-bit weights where the CPU lacks VNNI (see the module doc)
    calib_calls: int | None = None  # use the first N recorded calls (None: all)
    symmetric_activations: bool = True  # False: uint8 activations with zero points (ORT CPU only; TensorRT refuses them)
    output_ops: tuple[str, ...] = ("Conv",)  # op types whose outputs are quantized too (see the module doc)
    dedicated_pairs: bool = True  # one DQ per consumer: ORT fuses DQ -> op -> Q only when the DQ feeds that op alone

    def __post_init__(self) -> None:
        if self.precision not in QUANTIZED_PRECISIONS:
            raise MonkeyError(f"quantized precision must be one of {', '.join(QUANTIZED_PRECISIONS)}, got {self.precision!r}")
        if self.keep is None:
            keep = DEFAULT_KEEP[self.precision] if self.network == "unet" else default_keep(self.network, self.precision)
        else:
            keep = tuple(dict.fromkeys(self.keep))
        unknown = [k for k in keep if k not in KEEP]
        if unknown:
            raise MonkeyError(f"unknown kept-precision group(s) {', '.join(unknown)} (known: {', '.join(KEEP)})")
        object.__setattr__(self, "keep", keep)
        object.__setattr__(self, "output_ops", tuple(self.output_ops))
        if self.precision == "fp8":  # the only method onnxruntime.quantization has for float8
            object.__setattr__(self, "calibrate_method", "distribution")
        elif self.calibrate_method not in CALIB_METHODS:
            raise MonkeyError(f"calibration method must be one of {', '.join(CALIB_METHODS)}, got {self.calibrate_method!r}")
        if self.reduce_range is None:
            object.__setattr__(self, "reduce_range", self.precision == "int8" and not cpu_has_vnni())

    def to_json(self) -> dict:
        return asdict(self) | {"keep": list(self.keep), "output_ops": list(self.output_ops)}


def cpu_has_vnni() -> bool:
    """x86 VNNI (AVX-512 VNNI or AVX-VNNI) on this machine (Linux /proc/cpuinfo; False when unknown)."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_vnni", "avx_vnni", "avx512vnni"))


# -- which nodes stay in float ------------------------------------------------------------------
def _is_weighted(node, weights: set[str]) -> bool:
    return any(i in weights for i in node.input[1:2])


def kept_nodes(graph, keep: Iterable[str]) -> dict[str, set[str]]:
    """Group -> names of the quantizable nodes (Conv/MatMul/Gemm) it keeps in float (the map group: every node
    of the path, so its softmax and mean are named too)."""
    keep = set(keep)
    weights = {t.name for t in graph.initializer}
    out: dict[str, set[str]] = {}
    if "map" in keep:
        out["map"] = map_path_nodes(graph)
    if "embedding" in keep:
        emb = embedding_nodes(graph)
        emb |= {n.name for n in graph.node if n.op_type in QUANT_OPS and
                ("/time_embedding/" in n.name or n.name.endswith("time_emb_proj/Gemm") or "/time_emb_proj/" in n.name)}
        out["embedding"] = emb
    if "io" in keep:  # (+ the VAE decoder's post_quant_conv: 4 channels in, 4 out)
        out["io"] = {n.name for n in graph.node if n.op_type == "Conv" and any(k in n.name for k in ("/conv_in/", "/conv_out/", "/post_quant_conv/"))}
    if "attention" in keep:
        out["attention"] = {n.name for n in graph.node if n.op_type == "MatMul" and not _is_weighted(n, weights)}
    if "skip" in keep:
        out["skip"] = {n.name for n in graph.node if n.op_type == "Conv" and "/conv_shortcut/" in n.name}
    if "downsample" in keep:
        out["downsample"] = {n.name for n in graph.node if n.op_type == "Conv" and "/downsamplers." in n.name}
    out.update(more_kept_nodes(graph, keep, weights))
    return out


@dataclass(frozen=True)
class QuantReport:
    network: str
    precision: str
    nodes: int
    quantized: tuple[str, ...]  # node names with Q/DQ around them
    kept: dict[str, tuple[str, ...]] = field(default_factory=dict)  # group -> node names kept in float

    def summary(self) -> dict:
        return {"quantized_nodes": len(self.quantized), "kept_nodes": {k: len(v) for k, v in self.kept.items()}}


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over recorded feed dicts, one call at a time.

    calibrate_streaming hands the calls to ORT's calibrator one range of one at a time (`set_range`)."""

    def __init__(self, feeds: list[dict]):
        self._feeds, self._i, self._end = feeds, 0, len(feeds)

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._i, self._end = start_index, min(end_index, len(self._feeds))

    def get_next(self):
        if self._i >= self._end:
            return None
        self._i += 1
        return self._feeds[self._i - 1]

    def rewind(self):
        self._i, self._end = 0, len(self._feeds)


def quantize_model_file(src: Path, dst: Path, feeds: list[dict], settings: QuantSettings, external: bool) -> QuantReport:
    """Quantize the fp32 graph `src` into `dst` (and `dst`.data when `external`)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    model = onnx.load(str(src), load_external_data=False)
    fp8 = settings.precision == "fp8"
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if fp8 and opset < 19:
        # float8 Q/DQ need opset 19. The quantizer would convert the loaded model in memory, which fails
        # past protobuf's 2 GB (an SD-size UNet): convert the graph while its weights are still on disk.
        from onnx import version_converter

        model = version_converter.convert_version(model, 19)
    name_nodes(model.graph)  # the exclusion list matches by name
    groups = kept_nodes(model.graph, settings.keep)
    exclude = sorted(set().union(*groups.values())) if groups else []
    candidates = [n.name for n in model.graph.node if n.op_type in QUANT_OPS and n.name not in set(exclude)]
    qtype = QuantType.QFLOAT8E4M3FN if fp8 else QuantType.QInt8
    atype = qtype if fp8 or settings.symmetric_activations else QuantType.QUInt8
    method = CalibrationMethod.Distribution if fp8 else {
        "minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy,
    }[settings.calibrate_method]
    extra = {
        "ActivationSymmetric": settings.symmetric_activations, "WeightSymmetric": True,  # TensorRT: zero points are 0
        # not "CalibMaxIntermediateOutputs": onnxruntime 1.32 drops each full batch of it without merging its
        # ranges, so only the last partial batch would count. calibrate_streaming reduces call by call instead
        "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},  # a linear layer's output channels
        "OpTypesToExcludeOutputQuantization": [t for t in QUANT_OPS if t not in settings.output_ops],
        "DedicatedQDQPair": settings.dedicated_pairs,
    }
    if settings.calibrate_method == "percentile" and not fp8:
        extra["CalibPercentile"] = settings.percentile
    if fp8:
        extra["scenario"] = "same"  # ORT's distribution calibration: one fp8 type for weights and activations
    with tempfile.TemporaryDirectory(prefix=".monkey-quant-", dir=dst.parent) as tmp:
        # the calibrator writes its augmented copy of the model next to the input: keep both in our temp folder
        work = Path(tmp) / "fp32.onnx"
        _copy_weight_files(model, Path(src).parent, Path(tmp))  # the graph refers to them: never loaded here
        onnx.save(model, str(work))
        del model
        data = feeds if settings.calib_calls is None else feeds[: settings.calib_calls]
        cwd = os.getcwd()
        try:
            os.chdir(tmp)  # ORT's calibrator keeps scratch files in the working folder on some versions
            with full_disk_is_an_error(tmp, f"quantizing the UNet to {settings.precision}", shown=Path(src).parent), \
                    _quiet_library(), _scratch_in(tmp), _float8_checked_once():
                # calibrated first, on its own (the calibrator's session and the quantizer's copy of the model are
                # never in memory together), then quantized from the ranges through ORT's calibration cache
                ranges = Path(tmp) / "ranges.json"
                calibrate_streaming(work, data, method, extra, external, Path(tmp), ranges)
                quantize_static(
                    str(work), str(dst), None, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANT_OPS),
                    per_channel=settings.per_channel, reduce_range=bool(settings.reduce_range), activation_type=atype,
                    weight_type=qtype, nodes_to_quantize=candidates, nodes_to_exclude=exclude,
                    use_external_data_format=external, calibrate_method=method, extra_options=extra,
                    calibration_cache_path=str(ranges),
                )
        finally:
            os.chdir(cwd)
    quantized = tuple(sorted(candidates))
    return QuantReport(settings.network, settings.precision, len(candidates) + len(exclude), quantized,
                       {k: tuple(sorted(v)) for k, v in groups.items()})


def _copy_weight_files(model, src_dir: Path, dst_dir: Path) -> None:
    """Copy the files `model`'s external weights live in from `src_dir` into `dst_dir` (streamed, a copy and never a
    link: the quantizer writes beside its input, and the engine's own files must not change)."""
    import shutil

    from onnx import TensorProto

    names = {e.value for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL
             for e in t.external_data if e.key == "location"}
    for name in sorted(names):
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise MonkeyError(f"external data location {name!r} leaves the model's folder")
        shutil.copyfile(src_dir / name, dst_dir / name)


def _lean_session(calibrator) -> None:
    """Reopen the calibrator's session (CalibraterBase.infer_session: same graph, same CPU provider, no graph
    optimisation as ORT's create_inference_session) without the CPU memory arena and memory pattern: the
    augmented UNet's activations are freed as they die instead of growing an arena; and in ORT's priority-based
    node order. The same kernels on the same inputs (the ranges are the same bits); only the order of independent
    nodes changes: ORT's default order runs the augmented UNet's branches so that far more of its activations are
    alive at once (sd15 UNet at 512², one call: 10.9 GiB peak in the default order, 4.35 GiB priority-based)."""
    import onnxruntime

    so = onnxruntime.SessionOptions()
    so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.enable_cpu_mem_arena = False
    so.enable_mem_pattern = False
    so.execution_order = onnxruntime.ExecutionOrder.PRIORITY_BASED
    calibrator.infer_session = None
    calibrator.infer_session = onnxruntime.InferenceSession(calibrator.augmented_model_path, sess_options=so,
                                                            providers=["CPUExecutionProvider"])


# ORT's quantize_static options that configure its calibrator (onnxruntime/quantization/quantize.py, 1.32)
CALIBRATOR_OPTIONS = (("CalibTensorRangeSymmetric", "symmetric"), ("CalibMovingAverage", "moving_average"),
                      ("CalibMovingAverageConstant", "averaging_constant"), ("CalibPercentile", "percentile"))


def calibrate_streaming(model: Path, feeds: list[dict], method, extra: dict, external: bool, tmp: Path, out: Path) -> None:
    """The activation ranges of `model` over `feeds`, written to `out` (ORT's calibration cache, save_tensors_data).

    ORT's own calibrator (create_calibrator, what quantize_static builds) is driven one call at a time: after each
    call its ranges are merged (MinMax: min of the minima, max of the maxima, exact) or its histograms merged
    (percentile, entropy, fp8's distribution), and that call's outputs dropped. Memory is one call's outputs,
    whatever the number of calls (the same as quantize_static's `CalibStridedMinMax` = 1)."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    options = {key: extra[name] for name, key in CALIBRATOR_OPTIONS if name in extra}
    calibrator = create_calibrator(Path(model), list(QUANT_OPS), augmented_model_path=str(tmp / "augmented.onnx"),
                                   calibrate_method=method, use_external_data_format=external, extra_options=options)
    # its copy of the model is read only while augmenting (calibrate.py 1.32: __init__, augment_graph): once saved its
    # weights are on disk, but protobuf's upb arena keeps all of them (the sd15 UNet: 3.4 GB) until the message goes
    calibrator.model = None
    _lean_session(calibrator)  # sd15 UNet at 512², one call: 22.1 GiB peak with ORT's arena (default order), 4.35 now
    reader = _Reader(feeds)
    for i in range(len(feeds)):
        reader.set_range(i, i + 1)
        calibrator.collect_data(reader)
    ranges = calibrator.compute_data()
    del calibrator
    save_tensors_data(ranges, out)


@contextlib.contextmanager
def _float8_checked_once():
    """ORT's quantizer, while it runs, with its float8 NaN check done once per initializer, vectorised.

    onnxruntime 1.32 (quantization/onnx_model.py): `ONNXModel.initializer_extend` re-runs `_check_init` on every
    initializer of the model each time it adds one, and `_check_init` scans a FLOAT8E4M3FN initializer's bytes in a
    Python generator (`any((i & 127) == 127 for i in list(init.raw_data))`). Quantizing a model to fp8 adds a few
    initializers per bias, so the scan is the fp8 weights times the number of biases: the sd15 UNet (860 M fp8
    bytes, ~700 bias additions) was still in it after 15 minutes. The same check, the same ValueError, each
    initializer's bytes scanned once (numpy), for as long as this block runs; the method is restored after."""
    import numpy as np
    import onnx
    from onnxruntime.quantization import onnx_model

    original = onnx_model.ONNXModel._check_init
    checked: set[tuple] = set()  # (name, dims): an ONNX graph holds one initializer per name; raw_data is not read

    def check(self, init, test=None):
        if init.data_type == onnx.TensorProto.FLOAT8E4M3FN and init.HasField("raw_data"):
            seen = (init.name, tuple(init.dims))
            if seen not in checked:
                if (np.bitwise_and(np.frombuffer(init.raw_data, np.uint8), 127) == 127).any():
                    raise ValueError(f"Initializer {init.name!r} has nan.")
                checked.add(seen)
        return init

    onnx_model.ONNXModel._check_init = check
    try:
        yield
    finally:
        onnx_model.ONNXModel._check_init = original


@contextlib.contextmanager
def _scratch_in(folder: str):
    """The quantizer's own temp folders (`ort.quant.*`, `tempfile` default folder) go into `folder`, inside our
    staging folder: a killed quantization leaves nothing in the system temp folder, and its staging folder is
    removed by the next run (its marker proves it ours; core/output_folders.py), never by a name pattern."""
    before = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = before


@contextlib.contextmanager
def _quiet_library():
    """The quantizer prints progress and logs advice on the root logger: not the export's output."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def quant_file_name(network: str, precision: str) -> str:
    return f"{network}.{precision}.onnx"


def library_version() -> str:
    import onnxruntime

    return f"{LIBRARY} {onnxruntime.__version__}"


def write_quantized_network(src: Path, dst_dir: Path, network: str, feeds: list[dict], settings: QuantSettings,
                            calibration: dict | None = None):
    """DST_DIR/<network>.<precision>.onnx (+ .data when `src` keeps its weights outside) and its PrecisionFiles."""
    import onnx

    from monkey_trt.enginedir.digests import sha256_file
    from monkey_trt.enginedir.manifest import PrecisionFiles
    from monkey_trt.export.onnx_files import save_onnx

    src = Path(src)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.load(str(src), load_external_data=False).graph.initializer)
    dst = Path(dst_dir) / quant_file_name(network, settings.precision)
    with tempfile.TemporaryDirectory(prefix=".monkey-quant-out-", dir=dst_dir) as tmp:
        raw = Path(tmp) / dst.name
        report = quantize_model_file(src, raw, feeds, settings, external)
        model = onnx.load(str(raw), load_external_data=True)
        _strip_metadata(model)
        # the CPU graph: ONNX Runtime's x86 integer kernels take uint8 activations (the same values; qdq_types.py)
        unsigned = uint8_activations(model.graph) if settings.precision == "int8" else 0
        files = save_onnx(model, dst, external)  # the project's one layout: <name>.onnx (+ <name>.onnx.data)
        del model
    onnx.checker.check_model(str(dst))
    paths = [Path(dst_dir) / f for f in files]
    record = {"library": library_version(), "settings": settings.to_json(), **report.summary(),
              **({"uint8_activation_pairs": unsigned} if unsigned else {}),
              **({"calibration": calibration} if calibration else {})}
    return PrecisionFiles(files[0], files[1] if external else None, {p.name: sha256_file(p) for p in paths},
                          {p.name: p.stat().st_size for p in paths}, quantization=record), report


def _strip_metadata(model) -> None:
    """Nothing run-specific (temp paths) in the file: the same calibration gives the same bytes."""
    del model.metadata_props[:]


# -- into an engine directory -------------------------------------------------------------------
QUANTIZED_NETWORKS = ("unet",)  # calibrated on its recorded calls here; the VAE decoder (+ the opt-in image encoder): quantize_nets.py
# the text encoder always runs fp32 (Manifest.run_precision); docs/int8.md has the measurements


def quantized_file_names() -> list[str]:
    """Every file an 8-bit export may write (OutputStage's list of names it owns), the opt-in image encoder's included."""
    return [f for n in all_8bit_networks() for p in QUANTIZED_PRECISIONS for f in (quant_file_name(n, p), quant_file_name(n, p) + ".data")]


def add_quantized(root: Path, manifest, dst_dir: Path, precisions: Iterable[str], spec, progress=None,
                  settings: dict | None = None, cache: Path | None = None, record_also: tuple[str, ...] = ()):
    """Calibrate on the fp32 engine directory `root` and write the 8-bit graphs of `precisions` into `dst_dir`
    (the staging folder of the same commit); returns the manifest with their entries and exporter record.

    `spec`: the CalibrationSpec (export/calibration.py); `settings`: precision -> QuantSettings (default:
    QuantSettings(precision)). The calibration recording is shared by all precisions and cached. The UNet only:
    quantize_nets.add_8bit adds the VAE decoder (and the opt-in image encoder), whose inputs a fresh recording
    also records (`record_also`: network_calibration.load_or_collect_with_unet).
    """
    from monkey_trt.enginedir.manifest import Manifest, NetworkEntry
    from monkey_trt.export.network_calibration import load_or_collect_with_unet

    todo = [p for p in precisions if p in QUANTIZED_PRECISIONS]
    if not todo:
        return manifest
    say = progress or (lambda msg, done, total: None)
    unet = sum(sum(manifest.networks[n].sizes.values()) for n in QUANTIZED_NETWORKS)  # the fp32 graphs (+ data)
    check_room(dst_dir, QUANT_ROOM * unet, "quantizing the UNet", shown=root)  # before minutes of calibration
    say("calibrating: recording MONKEY's UNet calls on the fp32 engine", 0, 1)
    data, reused = load_or_collect_with_unet(Path(root), manifest, spec, record_also, progress=say, cache=cache)
    calib = {**spec.record(), "calls": len(data), "data_sha256": data.digest, "reused_cache": reused}
    entries, exporter = dict(manifest.networks), dict(manifest.exporter)
    feeds = data.feeds()
    for p in todo:
        s = (settings or {}).get(p) or QuantSettings(p)
        for name in QUANTIZED_NETWORKS:
            say(f"quantizing {name} to {p} ({len(feeds)} calibration calls)", 0, 1)
            files, _report = write_quantized_network(manifest.path(root, name), dst_dir, name, feeds, s, calib)
            e = entries[name]
            entries[name] = NetworkEntry(e.desc, e.file, e.data_file, e.sha256, e.sizes, {**e.precisions, p: files})
        exporter[f"{p}_quantizer"] = library_version()
    return Manifest(**{**manifest.__dict__, "networks": entries, "exporter": exporter})
