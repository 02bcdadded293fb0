"""The CPU graph's activation pairs in uint8: the same values, and every quantized layer fused by ONNX Runtime.

What ONNX Runtime does with int8 activation pairs on x86 is its own behaviour, observed here on the real library:
its QDQS8ToU8Transformer (onnxruntime/core/optimizer/qdq_transformer/qdq_s8_to_u8.cc) turns an int8
QuantizeLinear -> DequantizeLinear pair into uint8 only when the QuantizeLinear has one consumer, and its QDQ
selectors (selectors_actions/qdq_selectors.cc) refuse int8 x int8 MatMul/Conv fusions on x86.
"""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from monkey_trt.export.qdq_types import int8_activations, uint8_activations


def _shared_pair_model() -> onnx.ModelProto:
    """x -> one int8 Q -> two DQs -> two quantized MatMuls (a tensor read by two layers, as to_k/to_v read the text)."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"], name="q")]
    inits = [numpy_helper.from_array(np.float32(0.02), "x_scale"), numpy_helper.from_array(np.int8(0), "x_zp")]
    for k in (1, 2):
        nodes += [helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], [f"x_dq{k}"], name=f"dq{k}"),
                  helper.make_node("DequantizeLinear", [f"w{k}", f"w{k}_scale", f"w{k}_zp"], [f"w{k}_dq"], name=f"wdq{k}", axis=1),
                  helper.make_node("MatMul", [f"x_dq{k}", f"w{k}_dq"], [f"y{k}"], name=f"mm{k}")]
        inits += [numpy_helper.from_array(rng.integers(-127, 128, (64, 32)).astype(np.int8), f"w{k}"),
                  numpy_helper.from_array(rng.uniform(0.001, 0.01, 32).astype(np.float32), f"w{k}_scale"),
                  numpy_helper.from_array(np.zeros(32, np.int8), f"w{k}_zp")]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                              [helper.make_tensor_value_info(f"y{k}", TensorProto.FLOAT, [4, 32]) for k in (1, 2)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


def _run(model, x, level) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.log_severity_level = 3
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})


def _optimized_ops(model, tmp_path) -> list[str]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sorted(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)


def test_uint8_pairs_keep_the_values_and_let_ort_fuse_a_shared_pair(tmp_path):
    model = _shared_pair_model()
    x = np.random.default_rng(1).uniform(-3, 3, (4, 64)).astype(np.float32)  # past the int8 range too: saturation
    before = onnx.ModelProto.FromString(model.SerializeToString())
    # ORT itself leaves a shared int8 pair unfused: both MatMuls run in fp32 behind DequantizeLinear
    assert _optimized_ops(before, tmp_path).count("MatMul") == 2
    assert uint8_activations(model.graph) == 1
    zps = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith("_zp") or t.name.endswith("_u8")}
    assert "x_zp" not in zps and zps["x_zp_u8"].dtype == np.uint8 and zps["x_zp_u8"] == 128
    assert all(zps[f"w{k}_zp"].dtype == np.int8 for k in (1, 2)), "weights stay int8"
    onnx.checker.check_model(model)
    # the same values: with ORT's optimizations off every Q/DQ runs as written, and the outputs are the same bits
    plain = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = _run(before, x, plain)
    got = _run(model, x, plain)
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)
    # and ORT now fuses both layers into its integer kernel
    ops = _optimized_ops(model, tmp_path)
    assert "MatMul" not in ops and ops.count("MatMulIntegerToFloat") == 2
    fused = _run(model, x, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    for a, b in zip(want, fused):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    # back to int8 (the GPU graph): zero point 0, the same bits again
    assert int8_activations(model.graph) == 1
    zp = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == model.graph.node[0].input[2])
    assert zp.dtype == np.int8 and zp == 0
    back = _run(model, x, plain)
    for a, b in zip(want, back):
        np.testing.assert_array_equal(a, b)


def test_pairs_it_must_not_touch():
    model = _shared_pair_model()
    g = model.graph
    g.output.append(helper.make_tensor_value_info("x_q", TensorProto.INT8, [4, 64]))  # the int8 tensor is an output
    assert uint8_activations(g) == 0
    model = _shared_pair_model()
    dq2 = next(n for n in model.graph.node if n.name == "dq2")
    model.graph.initializer.append(numpy_helper.from_array(np.float32(0.03), "other_scale"))
    dq2.input[1] = "other_scale"  # a reader with another scale: not a pair
    assert uint8_activations(model.graph) == 0
    model = _shared_pair_model()
    assert int8_activations(model.graph) == 0, "int8 pairs are left as they are"
    assert uint8_activations(model.graph) == 1 and uint8_activations(model.graph) == 0, "idempotent"
