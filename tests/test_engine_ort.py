"""OrtRunner on CPU with tiny ONNX graphs built in the test (no model download)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from monkey_trt.core.errors import BackendUnavailable, MonkeyError
from monkey_trt.engine.ort import (
    OrtRunner,
    available_providers,
    ort_version,
    physical_cores,
    resolve_providers,
)
from monkey_trt.engine.runner import TensorSpec

RNG = np.random.default_rng(0)
W = RNG.standard_normal((8, 4)).astype(np.float32)
BIAS = RNG.standard_normal((4,)).astype(np.float32)
TABLE = RNG.standard_normal((10, 3)).astype(np.float32)


def _save(model: onnx.ModelProto, path) -> str:
    model.opset_import[0].version = 17
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture(scope="module")
def mlp_path(tmp_path_factory) -> str:
    """y = x @ W + b with a dynamic batch "B"; ids (int64, [B, 5]) -> Gather -> emb [B, 5, 3]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8])
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])
    emb = helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["B", 5, 3])
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "bias"], ["y"]),
        helper.make_node("Gather", ["table", "ids"], ["emb"], axis=0),
    ]
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(BIAS, "bias"), numpy_helper.from_array(TABLE, "table")]
    graph = helper.make_graph(nodes, "mlp", [x, ids], [y, emb], initializer=inits)
    return _save(helper.make_model(graph), tmp_path_factory.mktemp("ort") / "mlp.onnx")


def _feeds(batch: int) -> dict[str, np.ndarray]:
    return {
        "x": RNG.standard_normal((batch, 8)).astype(np.float32),
        "ids": RNG.integers(0, 10, size=(batch, 5)).astype(np.int64),
    }


def test_cpu_matches_numpy_across_batches(mlp_path):
    with OrtRunner(mlp_path, providers="cpu") as r:
        assert r.backend == "onnxruntime" and r.name == "mlp"
        for batch in (1, 3, 2):
            f = _feeds(batch)
            out = r.infer(f)
            assert set(out) == {"y", "emb"}
            np.testing.assert_allclose(out["y"], f["x"] @ W + BIAS, rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(out["emb"], TABLE[f["ids"]])
            assert out["y"].dtype == np.float32 and out["y"].shape == (batch, 4)


def test_outputs_are_caller_owned(mlp_path):
    with OrtRunner(mlp_path) as r:
        f = _feeds(2)
        a = r.infer(f)["y"]
        keep = a.copy()
        r.infer(_feeds(2))
        np.testing.assert_array_equal(a, keep)  # a later run does not overwrite earlier results


def test_specs(mlp_path):
    with OrtRunner(mlp_path) as r:
        assert r.input_specs == [TensorSpec("x", "float32", ("B", 8)), TensorSpec("ids", "int64", ("B", 5))]
        assert r.output_specs == [TensorSpec("y", "float32", ("B", 4)), TensorSpec("emb", "float32", ("B", 5, 3))]


def test_specs_need_activation(mlp_path):
    r = OrtRunner(mlp_path)
    with pytest.raises(MonkeyError, match="not active"):
        _ = r.input_specs
    with pytest.raises(MonkeyError, match="not active"):
        r.infer(_feeds(1))


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda f: {**f, "z": f["x"]}, "unknown input"),
        (lambda f: {"x": f["x"]}, "missing input"),
        (lambda f: {**f, "x": f["x"].astype(np.float64)}, "dtype float64"),
        (lambda f: {**f, "ids": f["ids"].astype(np.int32)}, "dtype int32"),
        (lambda f: {**f, "x": f["x"][None]}, "rank 3"),
        (lambda f: {**f, "x": f["x"][:, :7]}, r"shape \(2, 7\)"),
        (lambda f: {**f, "x": f["x"].tolist()}, "numpy array"),
    ],
)
def test_feed_validation(mlp_path, mutate, pattern):
    with OrtRunner(mlp_path) as r:
        with pytest.raises(MonkeyError, match=pattern) as ei:
            r.infer(mutate(_feeds(2)))
        assert "\n" not in str(ei.value)


def test_non_contiguous_input(mlp_path):
    with OrtRunner(mlp_path) as r:
        f = _feeds(4)
        xt = np.asfortranarray(f["x"])
        out = r.infer({"x": xt, "ids": f["ids"]})
        np.testing.assert_allclose(out["y"], f["x"] @ W + BIAS, rtol=1e-5, atol=1e-5)


def test_missing_providers_raise_backend_unavailable(mlp_path):
    have = available_providers()
    assert "CPUExecutionProvider" in have
    for short, full in (("tensorrt", "TensorrtExecutionProvider"), ("cuda", "CUDAExecutionProvider")):
        if full in have:
            continue
        with pytest.raises(BackendUnavailable) as ei:
            OrtRunner(mlp_path, providers=short)
        msg = str(ei.value)
        assert full in msg and "CPUExecutionProvider" in msg and "\n" not in msg


def test_provider_chain_and_unknown_names():
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    assert resolve_providers(["cpu"]) == ["CPUExecutionProvider"]
    with pytest.raises(MonkeyError, match="unknown execution provider"):
        resolve_providers("rocm")
    with pytest.raises(MonkeyError):
        resolve_providers([])


def test_versions_and_threads():
    assert ort_version() and ort_version()[0].isdigit()
    # an independent count: distinct (physical id, core id) pairs of /proc/cpuinfo among the usable CPUs
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo")
    usable = os.sched_getaffinity(0)
    cores = set()
    for block in cpuinfo.read_text().strip().split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if int(fields["processor"]) in usable:
            cores.add((fields.get("physical id", "?"), fields.get("core id", fields["processor"])))
    assert physical_cores() == len(cores) <= len(usable)


def test_missing_or_bad_model_file(tmp_path):
    with pytest.raises(MonkeyError, match="does not exist"):
        OrtRunner(tmp_path / "nope.onnx").activate()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(MonkeyError, match="cannot load") as ei:
        OrtRunner(bad).activate()
    assert "\n" not in str(ei.value)


def test_optimized_model_cache(mlp_path, tmp_path):
    cache = tmp_path / "ortcache"
    f = _feeds(3)
    with OrtRunner(mlp_path, optimized_model_cache=cache) as r:
        first = r.infer(f)
    entries = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and (entries[0] / "model.onnx").is_file()
    with OrtRunner(mlp_path, optimized_model_cache=cache) as r:  # second start: loads the cached graph
        second = r.infer(f)
        assert [s.name for s in r.input_specs] == ["x", "ids"]
    np.testing.assert_allclose(second["y"], first["y"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(second["emb"], first["emb"])
    assert len([p for p in cache.iterdir()]) == 1  # no temp folders left behind


def test_fixed_buffer_graph_mode_control_flow(mlp_path):
    """The CUDA-graph path (fixed I/O OrtValues, rebuilt on shape change) exercised on CPU buffers."""
    r = OrtRunner(mlp_path)
    assert r.cuda_graph is False  # never on for a CPU-only provider chain
    r.cuda_graph, r._graph_device = True, "cpu"
    with r:
        for batch in (2, 2, 2, 3, 3):
            f = _feeds(batch)
            out = r.infer(f)
            np.testing.assert_allclose(out["y"], f["x"] @ W + BIAS, rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(out["emb"], TABLE[f["ids"]])
        kept = out["y"].copy()
        r.infer(_feeds(3))
        np.testing.assert_array_equal(out["y"], kept)  # results stay the caller's


def test_static_inputs_merge_into_every_run(mlp_path):
    """set_static_inputs: fixed inputs given once, per-run feeds only the rest; replacing the set works."""
    with OrtRunner(mlp_path, providers="cpu") as r:
        f1, f2 = _feeds(2), _feeds(2)
        r.set_static_inputs({"ids": f1["ids"]})
        for f in (f1, f2):
            out = r.infer({"x": f["x"]})
            np.testing.assert_allclose(out["y"], f["x"] @ W + BIAS, rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(out["emb"], TABLE[f1["ids"]])
        r.set_static_inputs({"ids": f2["ids"]})
        np.testing.assert_array_equal(r.infer({"x": f1["x"]})["emb"], TABLE[f2["ids"]])
        r.set_static_inputs({})
        with pytest.raises(MonkeyError, match="ids"):
            r.infer({"x": f1["x"]})
