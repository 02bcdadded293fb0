"""fp16 ONNX from the exported fp32 ONNX, with fp32 islands where the numerics need them.

    write_fp16_network(src_onnx, dst_dir, network) -> PrecisionFiles   (for the manifest)
    convert_model_fp16(model, network, islands=ISLANDS) -> FP16Report  (in place)

Precision lives in the ONNX file: the fp16 graph carries fp16 weights and activations, so a
strongly typed TensorRT build (the only kind TensorRT 11 makes) and ONNX Runtime's CUDA provider
run the same file with the same types. Inputs and outputs keep the manifest's declared dtypes
(float32): the casts are inside the graph, the runtime does not change.

What stays fp32, and why (README "TensorRT and precision" has the measurements):

* the mask layer's attention-map path: `to_q`, `to_k_ip`, Q·K_ipᵀ, the softmax and the head
  mean. The map has **no** 1/√d scale, so its logits are √d times larger than in attention and
  fp16's ~1e-3 relative rounding moves them by a sizeable fraction of a unit; the map is min-max
  normalised and thresholded at 0.5, so that shift flips mask pixels near the threshold.
* every normalisation (`InstanceNormalization` = GroupNorm, `LayerNormalization`): means and
  variances over thousands of fp16 activations lose digits and can overflow (x² > 65504).
  Measured on the tiny model: with them in fp16, PSNR falls from ~55 dB to ~15 dB and mask IoU to 0.5.
* the sinusoidal embeddings (the timestep embedding and its `Sin`/`Cos` inputs): `t · freq`
  reaches ~1000 rad, where fp16 keeps only ~0.5 rad of resolution — the embedding would be noise.
* `Resize` (the converter's default block list; here: the bicubic IP-mask downsampling,
  which must reproduce PyTorch's resize of the binary mask).

Values pass from one fp32 node to the next in fp32 (`collapse_round_trips`): the converter alone would round each
of them to fp16 and back in between.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from monkey_trt.export.graph_walks import embedding_nodes, map_path_nodes, name_nodes

NORM_OPS = ("InstanceNormalization", "LayerNormalization", "GroupNormalization")
ISLANDS = ("map", "norms", "embedding")  # what stays fp32; measurements may drop one to show it matters


@dataclass(frozen=True)
class FP16Report:
    """What the conversion kept in fp32 (node counts; `fp32_ops` goes into the manifest)."""

    network: str
    nodes: int
    fp32_nodes: int
    fp32_ops: tuple[str, ...]
    map_path_nodes: int
    embedding_nodes: int


def convert_model_fp16(model, network: str, extra_fp32_nodes: Iterable[str] = (), islands: Iterable[str] = ISLANDS) -> FP16Report:
    """Convert `model` (an fp32 ModelProto with inferred shapes) to fp16 in place.

    `islands`: which fp32 islands to keep (all by default; fewer only to measure what they buy).
    """
    # ONNX Runtime's converter (onnxruntime.transformers, shipped with onnxruntime and used for its
    # own Stable Diffusion fp16 models): keeps initializers that only fp32 nodes read in fp32.
    from onnxruntime.transformers.float16 import (
        DEFAULT_OP_BLOCK_LIST,
        convert_float_to_float16,
    )
    from onnxruntime.transformers.onnx_model import OnnxModel

    graph = model.graph
    name_nodes(graph)
    islands = set(islands)
    if islands - set(ISLANDS):
        raise ValueError(f"unknown fp32 island(s) {sorted(islands - set(ISLANDS))}")
    map_nodes = map_path_nodes(graph) if "map" in islands else set()
    emb_nodes = embedding_nodes(graph) if "embedding" in islands else set()
    block_nodes = map_nodes | emb_nodes | set(extra_fp32_nodes)
    block_ops = set(DEFAULT_OP_BLOCK_LIST) | (set(NORM_OPS) if "norms" in islands else set())
    block_ops = sorted(block_ops | ({"Sin", "Cos"} if "embedding" in islands else set()))
    n_fp32 = sum(1 for n in graph.node if n.name in block_nodes or n.op_type in block_ops)
    n_nodes = len(graph.node)
    present = sorted({n.op_type for n in graph.node if n.op_type in block_ops})
    # keep_io_types: inputs/outputs stay as the manifest declares them (float32); casts go inside.
    # disable_shape_infer: finalize_onnx already inferred shapes (and >2 GiB models cannot re-infer in memory).
    convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True, op_block_list=block_ops,
                             node_block_list=sorted(block_nodes))
    collapse_round_trips(graph)
    OnnxModel(model).topological_sort()  # the converter appends its Cast nodes at the end of the graph
    return FP16Report(network, n_nodes, n_fp32, tuple(present), len(map_nodes), len(emb_nodes))


def collapse_round_trips(graph) -> int:
    """Let fp32 islands pass fp32 values to each other: the converter declares every float value fp16, so between two
    fp32 nodes it writes Cast(to fp16) -> Cast(to fp32), rounding each island value to fp16 on its way (measured on the
    map path: softmax rows summing to 1 +- 3e-4). Each such Cast(to fp32) reads the first Cast's input instead (what the
    fp32 graph computed, never less exact); a Cast(to fp16) left without readers goes. Returns the pairs collapsed."""
    from onnx import TensorProto

    to = lambda n: next((a.i for a in n.attribute if a.name == "to"), None)  # noqa: E731
    producer = {o: n for n in graph.node for o in n.output}
    collapsed = 0
    for node in graph.node:
        parent = producer.get(node.input[0]) if node.op_type == "Cast" and node.input else None
        if parent is not None and parent.op_type == "Cast" and to(node) == TensorProto.FLOAT and to(parent) == TensorProto.FLOAT16:
            node.input[0] = parent.input[0]
            collapsed += 1
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    dead = [n for n in graph.node if n.op_type == "Cast" and to(n) == TensorProto.FLOAT16 and n.output[0] not in read]
    for n in dead:
        graph.node.remove(n)
    return collapsed


def fp16_file_name(network: str) -> str:
    return f"{network}.fp16.onnx"


def write_fp16_network(src: Path, dst_dir: Path, network: str):
    """Convert the fp32 graph `src` (with inferred shapes) into DST_DIR/<network>.fp16.onnx (+ .data when
    `src` keeps its weights outside). Returns the manifest's PrecisionFiles for it."""
    import onnx

    from monkey_trt.enginedir.digests import sha256_file
    from monkey_trt.enginedir.manifest import PrecisionFiles
    from monkey_trt.export.onnx_files import save_onnx

    src = Path(src)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.load(str(src), load_external_data=False).graph.initializer)
    model = onnx.load(str(src), load_external_data=True)
    report = convert_model_fp16(model, network)
    dst = Path(dst_dir) / fp16_file_name(network)
    files = save_onnx(model, dst, external)
    del model
    onnx.checker.check_model(str(dst))
    paths = [Path(dst_dir) / f for f in files]
    return PrecisionFiles(files[0], files[1] if external else None, {p.name: sha256_file(p) for p in paths},
                          {p.name: p.stat().st_size for p in paths}, report.fp32_ops)
