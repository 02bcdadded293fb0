"""The Runner contract (engine/runner.py), checked once for every runner this machine can run.

A new backend gets these tests by adding a fixture to RUNNERS: ONNX Runtime on the CPU, onnx's reference
evaluator, OpenVINO's CPU plugin, and the GPU backends on their upstream-modelled fakes (tests/fakes/ort.py: ORT's CUDA and TensorRT
execution providers; tests/fakes/trt.py: TensorRT + cuda-python + Polygraphy). Every runner gets the same graph:

    y = (x @ W + b) * s        x [B, 8] float32 (batch 1..4 in the profile), s [4] float32 (static)
    m = x @ W                  [B, 4] a second output (like the UNet's map next to its noise prediction)

and its outputs are compared with a CPU onnxruntime session that is not the runner under test.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from monkey_trt.core.errors import MonkeyError
from monkey_trt.engine.runner import Runner, StaticInputs
from monkey_trt.enginedir.networks import ModelDims, NetworkDesc, Profile, ShapeRange, TensorDesc

RNG = np.random.default_rng(7)
W = RNG.standard_normal((8, 4)).astype(np.float32)
B = RNG.standard_normal((4,)).astype(np.float32)
PROFILE = {"x": ((1, 8), (2, 8), (4, 8))}  # the engine directory's profile of the dynamic input
DESC = NetworkDesc("tiny", inputs=(TensorDesc("x", "float32", ("B", 8)),), outputs=(TensorDesc("y", "float32", ("B", 4)),))
TRT_PROFILE = Profile(ShapeRange(1, 2, 4), ShapeRange(64, 64, 64), ShapeRange(64, 64, 64))


def _model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8])
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])
    m = helper.make_tensor_value_info("m", TensorProto.FLOAT, ["B", 4])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "bias"], ["z"]),
             helper.make_node("Mul", ["z", "s"], ["y"]), helper.make_node("Identity", ["xw"], ["m"])]
    graph = helper.make_graph(nodes, "tiny", [x, s], [y, m], initializer=[numpy_helper.from_array(W, "W"),
                                                                          numpy_helper.from_array(B, "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("contract") / "tiny.onnx"
    onnx.save(_model(), str(path))
    return path


@functools.lru_cache(maxsize=None)
def _oracle():
    import onnxruntime as ort

    return ort.InferenceSession(_model().SerializeToString(), providers=["CPUExecutionProvider"])


def expected(x: np.ndarray, s: np.ndarray) -> dict[str, np.ndarray]:
    y, m = _oracle().run(["y", "m"], {"x": x, "s": s})
    return {"y": y, "m": m}


def x_of(batch: int) -> np.ndarray:
    return RNG.standard_normal((batch, 8)).astype(np.float32)


def s_of() -> np.ndarray:
    return RNG.standard_normal((4,)).astype(np.float32)


# -- one fixture per runner ------------------------------------------------------------------------
def ort_cpu(onnx_path, monkeypatch, tmp_path) -> Runner:
    from monkey_trt.engine.ort import OrtRunner

    return OrtRunner(onnx_path, providers="cpu", name="tiny", trt_profile=PROFILE)


def onnx_reference(onnx_path, monkeypatch, tmp_path) -> Runner:
    from monkey_trt.engine.onnx_reference import OnnxReferenceRunner

    return OnnxReferenceRunner(onnx_path, name="tiny", profile=PROFILE)


def openvino_cpu(onnx_path, monkeypatch, tmp_path) -> Runner:
    pytest.importorskip("openvino")
    from monkey_trt.engine.openvino import OpenVinoRunner

    return OpenVinoRunner(onnx_path, name="tiny", profile=PROFILE, cache_root=tmp_path / "ov-cache")


def _fake_ort(monkeypatch, tmp_path):
    from tests.fakes import ort as fakes

    monkeypatch.setenv("MONKEY_TRT_CACHE", str(tmp_path / "user-cache"))
    return fakes.install(monkeypatch)


def ort_cuda_fake(onnx_path, monkeypatch, tmp_path) -> Runner:
    from monkey_trt.engine.ort import OrtRunner

    _fake_ort(monkeypatch, tmp_path)
    return OrtRunner(onnx_path, providers="cuda", name="tiny", trt_profile=PROFILE)


def ort_cuda_graph_fake(onnx_path, monkeypatch, tmp_path) -> Runner:
    from monkey_trt.engine.ort import OrtRunner

    _fake_ort(monkeypatch, tmp_path)
    return OrtRunner(onnx_path, providers="cuda", name="tiny", trt_profile=PROFILE, cuda_graph=True)


def ort_tensorrt_ep_fake(onnx_path, monkeypatch, tmp_path) -> Runner:
    from monkey_trt.engine.ort import OrtRunner

    _fake_ort(monkeypatch, tmp_path)
    return OrtRunner(onnx_path, providers="tensorrt", name="tiny", trt_profile=PROFILE)


def trt_fake(onnx_path, monkeypatch, tmp_path, cuda_graph: bool = False) -> Runner:
    pytest.importorskip("polygraphy.backend.trt")
    from monkey_trt.engine.trt import build as trt_build
    from monkey_trt.engine.trt import cuda as trt_cuda
    from monkey_trt.engine.trt import lib as trt_lib
    from monkey_trt.engine.trt.build import build_engine
    from monkey_trt.engine.trt.engine import TrtEngine
    from monkey_trt.enginedir.plans import BuildConfig
    from tests.fakes.trt import FakeCudart, fake_polygraphy, fake_tensorrt

    cudart = FakeCudart()
    trt = fake_tensorrt(cudart)
    monkeypatch.setattr(trt_lib, "require_tensorrt", lambda: trt)
    monkeypatch.setattr(trt_cuda, "require_cudart", lambda: cudart)
    monkeypatch.setattr(trt_build, "require_polygraphy", lambda: fake_polygraphy(trt, []))
    monkeypatch.setattr(trt_lib, "_LOGGERS", {})
    cfg = BuildConfig(profile=TRT_PROFILE, workspace_gib=1, builder_optimization_level=0)
    plan = build_engine(onnx_path, tmp_path / "tiny.plan", DESC, ModelDims(), cfg, tmp_path / "timing.cache").plan
    return TrtEngine(plan, name="tiny", use_cuda_graph=cuda_graph)


RUNNERS = {
    "ort-cpu": ort_cpu,
    "onnx-reference": onnx_reference,
    "openvino-cpu": openvino_cpu,
    "ort-cuda-fake": ort_cuda_fake,
    "ort-cuda-graph-fake": ort_cuda_graph_fake,
    "ort-tensorrt-ep-fake": ort_tensorrt_ep_fake,
    "trt-fake": trt_fake,
    "trt-cuda-graph-fake": functools.partial(trt_fake, cuda_graph=True),
}


@pytest.fixture(params=sorted(RUNNERS))
def runner(request, onnx_path, monkeypatch, tmp_path) -> Runner:
    r = RUNNERS[request.param](onnx_path, monkeypatch, tmp_path)
    yield r
    r.deactivate()


def close(got: dict, want: dict, names=("y", "m")) -> None:
    assert sorted(got) == sorted(names), sorted(got)
    for n in names:
        assert got[n].dtype == np.float32 and got[n].shape == want[n].shape, (n, got[n].dtype, got[n].shape)
        np.testing.assert_allclose(got[n], want[n], rtol=1e-5, atol=1e-5)


# -- the contract ----------------------------------------------------------------------------------
def test_names_and_dtypes(runner):
    with runner:
        assert [(t.name, t.dtype) for t in runner.input_specs] == [("x", "float32"), ("s", "float32")]
        assert [(t.name, t.dtype) for t in runner.output_specs] == [("y", "float32"), ("m", "float32")]
        assert [len(t.shape) for t in runner.input_specs] == [2, 1]


def test_refuses_to_run_inactive(runner):
    with pytest.raises(MonkeyError, match="not active"):
        runner.infer({"x": x_of(1), "s": s_of()})


def test_dynamic_shapes_within_the_profile(runner):
    with runner:
        for batch in (1, 2, 4, 3, 1):
            x, s = x_of(batch), s_of()
            close(runner.infer({"x": x, "s": s}), expected(x, s))


@pytest.mark.parametrize("feeds, says", [
    (lambda: {"x": x_of(5), "s": s_of()}, "outside the engine profile"),
    (lambda: {"x": x_of(2).astype(np.float64), "s": s_of()}, "dtype float64"),
    (lambda: {"x": x_of(2)}, "missing input"),
    (lambda: {"x": x_of(2), "s": s_of(), "t": s_of()}, "unknown input"),
    (lambda: {"x": x_of(2), "s": np.zeros(5, np.float32)}, "the network wants"),
    (lambda: {"x": x_of(2)[0], "s": s_of()}, "rank"),
    (lambda: {"x": x_of(2).tolist(), "s": s_of()}, "numpy array"),
    (lambda: [x_of(2), s_of()], "dict"),
])
def test_refusals_are_one_line(runner, feeds, says):
    with runner:
        with pytest.raises(MonkeyError, match=says) as ei:
            runner.infer(feeds())
        assert "\n" not in str(ei.value) and str(ei.value).startswith("tiny:")
        x, s = x_of(2), s_of()  # still usable after a refusal
        close(runner.infer({"x": x, "s": s}), expected(x, s))


def test_static_inputs_per_handle(runner):
    """Two handles interleaved each keep their own values; a feed overrides one; the handle holds a copy."""
    with runner:
        s1, s2 = s_of(), s_of()
        h1, h2 = runner.bind_static({"s": s1}), runner.bind_static({"s": s2})
        assert isinstance(h1, StaticInputs) and h1.shapes() == {"s": (4,)}
        s1[:] = 0  # the caller's array changed after binding: the handle kept its own copy
        for i, batch in enumerate((2, 1, 2, 4)):
            x = x_of(batch)
            close(runner.infer({"x": x}, static=h2 if i % 2 else h1), expected(x, h2.host["s"] if i % 2 else h1.host["s"]))
        x, s3 = x_of(2), s_of()
        close(runner.infer({"x": x, "s": s3}, static=h1), expected(x, s3))  # the feed wins
        with pytest.raises(MonkeyError, match="unknown input"):
            runner.bind_static({"q": s3})
        h1.release()
        with pytest.raises(MonkeyError, match="bind_static"):
            runner.infer({"x": x}, static=h1)
        other = StaticInputs("another-runner", {"s": s3})
        with pytest.raises(MonkeyError, match="bind_static"):
            runner.infer({"x": x}, static=other)
        close(runner.infer({"x": x}, static=h2), expected(x, h2.host["s"]))


def test_outputs_only_when_asked_and_owned_by_the_caller(runner):
    with runner:
        x, s = x_of(2), s_of()
        want = expected(x, s)
        only_y = runner.infer({"x": x, "s": s}, outputs=("y",))
        close(only_y, want, names=("y",))
        close(runner.infer({"x": x, "s": s}, outputs=["m"]), want, names=("m",))
        only_y["y"][:] = 123.0  # the caller's copy: the next call is unaffected
        close(runner.infer({"x": x, "s": s}), want)
        with pytest.raises(MonkeyError, match="unknown output"):
            runner.infer({"x": x, "s": s}, outputs=("nope",))


def test_close_and_reuse(runner):
    """deactivate() ends every use (handles included); activate() again serves new calls and new handles."""
    runner.activate()
    s = s_of()
    handle = runner.bind_static({"s": s})
    runner.infer({"x": x_of(1)}, static=handle)
    runner.deactivate()
    with pytest.raises(MonkeyError, match="not active"):
        runner.infer({"x": x_of(1), "s": s})
    runner.deactivate()  # idempotent
    runner.activate()
    runner.activate()  # idempotent
    x = x_of(2)
    close(runner.infer({"x": x, "s": s}), expected(x, s))
    fresh = runner.bind_static({"s": s})
    close(runner.infer({"x": x}, static=fresh), expected(x, s))


def test_every_backend_of_the_table_has_a_contract_fixture():
    """The engine-directory backends of runtime.backend.BACKEND_TABLE each run under at least one fixture above."""
    from monkey_trt.runtime.backend import BACKEND_TABLE

    covered = {"ort": ("ort-cpu", "ort-cuda-fake", "ort-tensorrt-ep-fake"), "trt": ("trt-fake",), "openvino": ("openvino-cpu",)}
    engine_backends = {n for n, b in BACKEND_TABLE.items() if b.needs_engine_dir}
    assert engine_backends == set(covered), f"add a fixture to RUNNERS for {engine_backends - set(covered)}"
    assert all(name in RUNNERS for names in covered.values() for name in names)
    for name, row in BACKEND_TABLE.items():
        assert callable(row.open_function()), name  # every opener resolves
