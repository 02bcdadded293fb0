"""The map-only UNet: each exported UNet graph cut after the mask layer's attention map (issue 21, point 3).

Pass 1 stops after its last mask step, and nobody reads that call's noise prediction (unless the pass-1 image is
asked for): everything after the mask layer (the rest of up_blocks.1, up_blocks.2, up_blocks.3, conv_out) is wasted
there. `unet_map` is the same graph with only the nodes the map `ip_attn_map` depends on: same inputs, same node
names, attributes and weights, the map its one output. Derived from every precision of the UNet (fp32, fp16, 8-bit),
from the graph alone: weights are copied tensor by tensor from the UNet's data file, never all in memory.

    entry = map_entry(descs, lambda p: (dir_of_p, precision_files_of_p), precisions, dst_dir)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import onnx

from monkey_trt.core.atomic import current_umask
from monkey_trt.enginedir.digests import sha256_file
from monkey_trt.enginedir.manifest import NetworkEntry, PrecisionFiles
from monkey_trt.enginedir.networks import MAP_NETWORK, MAP_OUTPUT

ALIGN = 4096  # external tensors of at least ALIGN_MIN bytes start on a page (mmap-friendly)
ALIGN_MIN = 1 << 20
CHUNK = 1 << 24  # bytes copied per read


def map_file_name(precision: str) -> str:
    return f"{MAP_NETWORK}.onnx" if precision == "fp32" else f"{MAP_NETWORK}.{precision}.onnx"


def map_file_names() -> list[str]:
    """Every file a map-only graph may be written as (OutputStage's list of names it owns)."""
    from monkey_trt.enginedir.manifest import GRAPH_KEYS

    return [f for p in ("fp32", *GRAPH_KEYS) for f in (map_file_name(p), map_file_name(p) + ".data")]


def _needed(node: onnx.NodeProto) -> list[str]:
    """Every value `node` reads: its inputs and the outer-scope names its subgraphs read."""
    names = [i for i in node.input if i]
    for a in node.attribute:
        for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
            for n in g.node:
                names += _needed(n)
    return names


def cut_graph(model: onnx.ModelProto, output: str = MAP_OUTPUT) -> onnx.ModelProto:
    """`model` (loaded without its external data) reduced to what `output` depends on: the nodes in their
    order, the initializers, inputs and value_info they use; `output` the only graph output."""
    g = model.graph
    producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}
    keep, todo, seen = set(), [output], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        i = producer.get(name)
        if i is not None and i not in keep:
            keep.add(i)
            todo += _needed(g.node[i])
    outs = [o for o in g.output if o.name == output]
    if not outs:
        raise ValueError(f"the UNet graph has no output {output!r}")
    cut = onnx.helper.make_graph(
        nodes=[n for i, n in enumerate(g.node) if i in keep], name=g.name,
        inputs=[v for v in g.input if v.name in seen], outputs=outs,
        initializer=[t for t in g.initializer if t.name in seen],
        value_info=[v for v in g.value_info if v.name in seen],
        sparse_initializer=[t for t in g.sparse_initializer if t.values.name in seen])
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.CopyFrom(cut)
    return out


def _copy_external(model: onnx.ModelProto, src_dir: Path, data_path: Path) -> None:
    """Copy every external tensor of `model` from its file under `src_dir` into `data_path`, in order, and
    point the tensor there (streamed: at most CHUNK bytes in memory)."""
    from onnx.external_data_helper import ExternalDataInfo

    with open(data_path, "wb") as dst:
        for t in model.graph.initializer:
            if t.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = ExternalDataInfo(t)
            with open(src_dir / info.location, "rb") as src:
                src.seek(info.offset or 0)
                length = info.length if info.length else os.fstat(src.fileno()).st_size - (info.offset or 0)
                if length >= ALIGN_MIN and dst.tell() % ALIGN:
                    dst.write(b"\0" * (ALIGN - dst.tell() % ALIGN))
                offset = dst.tell()
                left = length
                while left:
                    chunk = src.read(min(CHUNK, left))
                    if not chunk:
                        raise ValueError(f"{info.location} ends before tensor {t.name}")
                    dst.write(chunk)
                    left -= len(chunk)
            del t.external_data[:]  # the tensor already lives outside: only where changes
            for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(length))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value


def write_map_graph(src: Path, dst: Path) -> list[str]:
    """Cut the UNet graph `src` (its weights inline or in its data file) into `dst` (+ `dst.data` when `src`
    keeps weights outside). Returns the file names written, the graph first."""
    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src), load_external_data=False)
    cut = cut_graph(model)
    del model
    files = [dst.name]
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in cut.graph.initializer):
        data = dst.with_name(dst.name + ".data")
        _copy_external(cut, src.parent, data)
        files.append(data.name)
    onnx.save_model(cut, str(dst))
    mode = 0o666 & ~current_umask()
    for name in files:
        os.chmod(dst.parent / name, mode)
    onnx.checker.check_model(str(dst))
    return files


def map_entry(desc, unet: NetworkEntry, locate: Callable[[str], Path], dst_dir: Path,
              previous: NetworkEntry | None = None) -> NetworkEntry:
    """The `unet_map` entry for every precision `unet` has: graphs `previous` already holds are kept, the others
    cut from the UNet's graph of that precision (`locate(file name)`: where that file is now) into `dst_dir`."""
    dst_dir = Path(dst_dir)
    made: dict[str, PrecisionFiles] = {}
    for precision in ("fp32", *unet.precisions):
        if previous is not None and (precision == "fp32" or precision in previous.precisions):
            continue
        src_file = unet.files(precision)[0]
        files = write_map_graph(locate(src_file) / src_file, dst_dir / map_file_name(precision))
        paths = [dst_dir / f for f in files]
        of = unet.precisions.get(precision)  # the UNet graph's record (fp16's fp32 ops, 8-bit's quantization) holds for its cut
        made[precision] = PrecisionFiles(files[0], files[1] if len(files) > 1 else None,
                                         {p.name: sha256_file(p) for p in paths}, {p.name: p.stat().st_size for p in paths},
                                         of.fp32_ops if of else (), dict(of.quantization) if of else {},
                                         *((of.base,) if of else ()))  # an 8-bit graph's base (fp32 / fp16) too
    if previous is not None:
        return NetworkEntry(previous.desc, previous.file, previous.data_file, previous.sha256, previous.sizes,
                            {**previous.precisions, **made})
    base = made.pop("fp32")
    return NetworkEntry(desc, base.file, base.data_file, base.sha256, base.sizes, made)


def with_map_graphs(manifest, locate: Callable[[str], Path], dst_dir: Path):
    """`manifest` with its `unet_map` entry covering every UNet precision (cut into `dst_dir` where missing)."""
    from monkey_trt.enginedir.manifest import Manifest
    from monkey_trt.enginedir.networks import map_desc

    unet = manifest.networks["unet"]  # the map-only graph has its UNet's inputs (an older UNet: the static N = 1)
    entry = map_entry(map_desc(unet.desc), unet, locate, dst_dir,
                      manifest.networks.get(MAP_NETWORK))
    return Manifest(**{**manifest.__dict__, "networks": {**manifest.networks, MAP_NETWORK: entry}})
