"""Walks over an ONNX graph that the precision passes share (export/fp16.py, export/quantize.py): which nodes
compute the mask layer's attention map, which feed the sinusoidal embeddings, and unique node names.

    name_nodes(graph)                 # every node gets a unique name (block/exclude lists match by name)
    map_path_nodes(graph)             # the ip_attn_map output's path back to its linear layers
    embedding_nodes(graph)            # everything feeding a Sin/Cos
"""

from __future__ import annotations

# ops whose output is integer/shape data: a backward walk stops there (nothing float lies behind)
_SHAPE_OPS = ("Shape", "Size")


def _upstream(graph, tensors: list[str], ends=None) -> set[str]:
    """Names of the nodes `tensors` are computed from: producers walked backwards to graph inputs and
    initializers; a node for which `ends(node)` holds is included and ends its branch."""
    producers = {out: node for node in graph.node for out in node.output}
    keep: set[str] = set()
    todo = list(tensors)
    while todo:
        node = producers.get(todo.pop())
        if node is None or node.name in keep:
            continue
        keep.add(node.name)
        if ends is None or not ends(node):
            todo.extend(node.input)
    return keep


def map_path_nodes(graph, output: str = "ip_attn_map") -> set[str]:
    """Nodes computing `output` from the mask layer's projections (both linear layers included).

    Walks producers backwards from `output`; a MatMul/Gemm with a weight initializer (a linear
    layer: `to_q`, `to_k_ip`) is included and ends its branch, as do shape ops.
    """
    if output not in {o.name for o in graph.output}:
        return set()
    weights = {t.name for t in graph.initializer}

    def ends(node) -> bool:
        # a linear layer's input is an ordinary (fp16) activation; nothing float lies behind a shape op
        return node.op_type in _SHAPE_OPS or (node.op_type in ("MatMul", "Gemm") and any(i in weights for i in node.input))

    return _upstream(graph, [output], ends)


def embedding_nodes(graph) -> set[str]:
    """Every node feeding a `Sin`/`Cos` (the sinusoidal timestep embedding), back to graph inputs."""
    return _upstream(graph, [i for n in graph.node if n.op_type in ("Sin", "Cos") for i in n.input])


def name_nodes(graph) -> None:
    """Give unnamed nodes a unique name (the converter's node block list matches by name)."""
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_monkey_{i}"
        seen.add(node.name)
