"""ONNX graph work in bounded memory: the weights stay on disk (or in the one loaded copy) while the graph is folded
and written, so finishing a 3.4 GB UNet costs about one copy of its weights at most, not five.

    model = onnx.load(path, load_external_data=False)    # the graph; big weights are references into files
    model = fold_graph_only(model)                       # Polygraphy folding on the graph, weights held aside
    files = write_streaming(model, src_dir, dst, external) # one tensor at a time into `<dst>.data` (or inline)

Why: Polygraphy's `fold_constants` on the whole model serialises it, opens an ONNX Runtime session on it and
imports it into onnx-graphsurgeon, each a copy of every weight (the sd15 fp32 export peaked at six times the
UNet's weights). torch.onnx's own `do_constant_folding` already folds everything computed from weights; what
Polygraphy adds is folding of shapes and small constant chains, which never reads a big weight. So the big
weights are taken out of the graph while it folds (each becomes a graph input of the same type and shape: never
a constant, so nothing reading it is folded) and put back unchanged afterwards.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from monkey_trt.core.atomic import current_umask

HOLD_BYTES = 1 << 16  # weights above 64 KiB wait outside the graph while it folds (shape constants are far smaller)
EXTERNAL_MIN_BYTES = 1024  # the size onnx.save_model moves to external data (its `size_threshold`)
CHUNK = 1 << 24  # bytes copied at a time


def _stored_bytes(t: TensorProto) -> int:
    """Bytes a weight occupies, in the graph (raw_data) or in its external file."""
    if t.data_location == TensorProto.EXTERNAL:
        return int(next((e.value for e in t.external_data if e.key == "length"), "0") or 0)
    return len(t.raw_data)


def fold_graph_only(model: onnx.ModelProto, hold_bytes: int | None = None) -> onnx.ModelProto:
    """Polygraphy's constant folding with every weight over `hold_bytes` (and every external one) kept out of it.

    Returns the folded model with those weights back as initializers, unchanged (still pointing into their files
    where they did); weights no node reads any more are dropped, as the folding drops unused constants."""
    from polygraphy.backend.onnx import fold_constants
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # folding runs ORT: keep its optimizer notices quiet
    hold_bytes = HOLD_BYTES if hold_bytes is None else hold_bytes
    g = model.graph
    held: dict[str, TensorProto] = {}
    keep = []
    for t in g.initializer:
        if t.data_location == TensorProto.EXTERNAL or _stored_bytes(t) > hold_bytes:
            held[t.name] = t
        else:
            keep.append(t)
    real_inputs = [i.name for i in g.input]
    if held:
        skeleton = onnx.ModelProto()
        skeleton.CopyFrom(_without_initializers(model))
        skeleton.graph.initializer.extend(keep)
        for name, t in held.items():  # [dims] of the weight's dtype: an input, never a constant
            skeleton.graph.input.append(helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
    else:
        skeleton = model
    try:  # the whole graph at once (2x faster; same bytes when it folds)
        folded = fold_constants(skeleton, error_ok=False, partitioning=None)
    except Exception:  # a node ONNX Runtime cannot evaluate: fold partition by partition around it
        folded = fold_constants(skeleton, error_ok=True, partitioning="basic")
    if not held:
        return folded
    read = {i for n in folded.graph.node for i in n.input} | _subgraph_inputs(folded.graph)
    inputs = [i for i in folded.graph.input if i.name not in held]
    del folded.graph.input[:]
    folded.graph.input.extend(inputs)
    assert [i.name for i in folded.graph.input] == real_inputs, "folding changed the graph's inputs"
    # back in the order a whole-model folding writes them (by first use; onnx-graphsurgeon's export): same bytes
    first_use: dict[str, int] = {}
    for n in folded.graph.node:
        for i in n.input:
            first_use.setdefault(i, len(first_use))
    inits = [*folded.graph.initializer, *(t for name, t in held.items() if name in read)]
    inits.sort(key=lambda t: first_use.get(t.name, len(first_use)))
    ordered = [_copy(t) for t in inits]
    del inits
    del folded.graph.initializer[:]
    folded.graph.initializer.extend(ordered)
    return folded


def _copy(t: TensorProto) -> TensorProto:
    c = TensorProto()
    c.CopyFrom(t)
    return c


def _without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A shallow copy of `model` with no initializers (the graph's nodes, inputs, outputs, value_info, metadata)."""
    g = model.graph
    graph = helper.make_graph([], g.name, [], [], doc_string=g.doc_string)
    graph.node.extend(g.node)
    graph.input.extend(g.input)
    graph.output.extend(g.output)
    graph.value_info.extend(g.value_info)
    graph.sparse_initializer.extend(g.sparse_initializer)
    out = onnx.ModelProto()
    for f in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(out, f, getattr(model, f))
    out.opset_import.extend(model.opset_import)
    out.metadata_props.extend(model.metadata_props)
    out.functions.extend(model.functions)
    out.graph.CopyFrom(graph)
    return out


def _subgraph_inputs(graph) -> set[str]:
    """Names read inside If/Loop/Scan bodies (outer-scope reads count as reads)."""
    names: set[str] = set()
    for n in graph.node:
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                names |= {i for m in sub.node for i in m.input} | _subgraph_inputs(sub)
    return names


def _external_info(t: TensorProto) -> tuple[str, int, int | None]:
    info = {e.key: e.value for e in t.external_data}
    length = info.get("length")
    return info["location"], int(info.get("offset", 0) or 0), int(length) if length is not None else None


def _read_external(t: TensorProto, src_dir: Path):
    """Yield the bytes of an external tensor, CHUNK at a time."""
    location, offset, length = _external_info(t)
    src = Path(src_dir) / location
    if Path(location).is_absolute() or ".." in Path(location).parts:
        raise ValueError(f"external data location {location!r} leaves the model's folder")
    with open(src, "rb") as f:
        f.seek(offset)
        left = length if length is not None else os.fstat(f.fileno()).st_size - offset
        while left > 0:
            block = f.read(min(CHUNK, left))
            if not block:
                raise ValueError(f"external data {location} ends early for {t.name}")
            left -= len(block)
            yield block


def write_streaming(model: onnx.ModelProto, src_dir: Path, path: Path, external: bool) -> list[str]:
    """Save `model` at `path`; weights that are references into files under `src_dir` are copied one chunk at a time.

    `external`: every weight of >= 1 KiB goes to `<name>.data` (in initializer order, like onnx.save_model), else
    all inline. Returns the file names written, the graph first; files get the user's umask (see onnx_files)."""
    path = Path(path)
    written = [path.name]
    if external:
        data_name = path.name + ".data"
        with open(path.parent / data_name, "wb") as out:
            for t in model.graph.initializer:
                if t.data_location == TensorProto.EXTERNAL:
                    offset = out.tell()
                    for block in _read_external(t, src_dir):
                        out.write(block)
                elif t.HasField("raw_data") and sys.getsizeof(t.raw_data) >= EXTERNAL_MIN_BYTES:
                    offset = out.tell()
                    out.write(t.raw_data)
                    t.ClearField("raw_data")
                else:
                    continue
                _point_to(t, data_name, offset, out.tell() - offset)
        written.append(data_name)
    else:
        for t in model.graph.initializer:
            if t.data_location == TensorProto.EXTERNAL:
                t.raw_data = b"".join(_read_external(t, src_dir))
                del t.external_data[:]
                t.data_location = TensorProto.DEFAULT
    onnx.save_model(model, str(path))
    mode = 0o666 & ~current_umask()
    for name in written:
        os.chmod(path.parent / name, mode)
    return written


def _point_to(t: TensorProto, location: str, offset: int, length: int) -> None:
    del t.external_data[:]
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v
