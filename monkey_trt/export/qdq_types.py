"""The CPU graph's activation Q/DQ pairs as uint8 (zero point 128) rather than int8 (zero point 0): the same
values, in the type ONNX Runtime's x86 integer kernels take.

    n = uint8_activations(model.graph)   # the CPU int8 graph, after quantizing (export/quantize.py)
    n = int8_activations(model.graph)    # back, before the GPU graph is made from it (export/gpu_quant.py)

ONNX Runtime's CPU provider fuses DequantizeLinear -> Conv/MatMul -> QuantizeLinear into QLinearConv,
MatMulIntegerToFloat, ... only for uint8 activations on x86 (int8 x int8 is not allowed there:
qdq_selectors.cc, ConvNodeGroupSelector / MatMulNodeGroupSelector `int8_allowed_`). At load it rewrites int8
activation pairs to uint8 itself (QDQS8ToU8Transformer, qdq_s8_to_u8.cc), but only a QuantizeLinear with a
single consumer. A tensor read by several layers (the text and IP tokens every to_k/to_v reads, a norm read by
to_q/to_k/to_v, a conv output read by GroupNorm's Reshape and Shape) keeps int8, and each layer behind it runs as
DequantizeLinear + an fp32 kernel that also dequantizes its weights on every call. On the sd15 preset at 256²
that was 126 of the UNet's quantized MatMuls and 19 of the VAE decoder's 33 quantized convs.

Here every activation pair is rewritten, whatever its consumers: q_u8 = q_s8 + 128 (saturation included:
[-128, 127] maps onto [0, 255]) and (q_u8 - 128) * s = q_s8 * s, so every dequantized value is the same bits.
Weights stay int8 (uint8 activations x int8 weights: the VNNI kernel). TensorRT takes int8 with zero point 0 only,
so the GPU graph is made from the pairs turned back (`int8_activations`, exact the other way too).
"""

from __future__ import annotations

from collections import defaultdict

_UINT8, _INT8 = 2, 3  # onnx.TensorProto.UINT8, INT8
_SHIFT = 128


def _rewrite_pairs(graph, src_type: int, dst_type: int, shift: int, suffix: str, only_zero_point=None) -> int:
    """Every QuantizeLinear whose zero point is a `src_type` initializer and whose output only DequantizeLinear
    nodes with equal scale and zero point read: the zero point + `shift` in `dst_type`, for it and its readers."""
    import numpy as np
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}
    readers = defaultdict(list)
    for n in graph.node:
        for i in n.input:
            readers[i].append(n)
    graph_outputs = {o.name for o in graph.output}
    value = {}  # initializer name -> array, read once

    def array(name):
        if name not in value:
            value[name] = numpy_helper.to_array(inits[name])
        return value[name]

    def same(a: str, b: str) -> bool:
        return a == b or (a in inits and b in inits and np.array_equal(array(a), array(b)))

    made, retyped = {}, set()  # old zero point -> its shifted copy; the pairs' tensors
    for q in graph.node:
        if q.op_type != "QuantizeLinear" or len(q.input) < 3 or q.input[2] not in inits:
            continue
        zp = inits[q.input[2]]
        if zp.data_type != src_type or (only_zero_point is not None and np.any(array(zp.name) != only_zero_point)):
            continue
        users = readers[q.output[0]]
        if not users or q.output[0] in graph_outputs or not all(
                u.op_type == "DequantizeLinear" and len(u.input) > 2 and same(u.input[1], q.input[1])
                and same(u.input[2], q.input[2]) for u in users):
            continue
        if zp.name not in made:
            shifted = (array(zp.name).astype(np.int16) + shift).astype(np.uint8 if dst_type == _UINT8 else np.int8)
            made[zp.name] = numpy_helper.from_array(shifted, f"{zp.name}{suffix}")
        new = made[zp.name].name
        q.input[2] = new
        for u in users:
            u.input[2] = new
        retyped.add(q.output[0])
    if not retyped:
        return 0
    graph.initializer.extend(made.values())
    for v in graph.value_info:  # shape inference's record of the pair's tensor type
        if v.name in retyped:
            v.type.tensor_type.elem_type = dst_type
    used = {i for n in graph.node for i in n.input}
    stale = {name for name in made if name not in used}  # the old zero points nobody reads now
    kept = [t for t in graph.initializer if t.name not in stale]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return len(retyped)


def uint8_activations(graph) -> int:
    """int8 activation pairs (any zero point) -> uint8 (zero point + 128), in place; returns how many pairs."""
    return _rewrite_pairs(graph, _INT8, _UINT8, _SHIFT, "_u8")


def int8_activations(graph) -> int:
    """uint8 activation pairs of zero point 128 (what uint8_activations wrote) -> int8 zero point 0, in place."""
    return _rewrite_pairs(graph, _UINT8, _INT8, -_SHIFT, "_s8", only_zero_point=_SHIFT)
