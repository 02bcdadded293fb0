"""`monkey-trt build` through **Polygraphy's real code** (the installed polygraphy) against a fake `tensorrt` module
of TensorRT 10 and 11 (tests/fakes/trt_builder.py): an attribute TensorRT removed, or one Polygraphy reads that
the fake's version lacks, breaks a test here instead of a user's first build (issue 24: Polygraphy up to 0.49.x
reads `layer.precision_is_set`, which TensorRT 11 removed)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from monkey_trt.engine.trt import cuda as trt_cuda
from monkey_trt.engine.trt import lib as trt_lib
from monkey_trt.engine.trt.build import build_engine
from monkey_trt.engine.trt.engine import TrtEngine
from monkey_trt.enginedir.networks import ModelDims
from monkey_trt.enginedir.plans import BuildConfig
from tests.fakes.trt import FakeCudart, plan_header
from tests.fakes.trt_builder import fake_tensorrt_module, reset_polygraphy_imports
from tests.test_engine_trt import TINY_DESC, TINY_PROFILE, _expected, _feeds, _tiny_onnx

pytest.importorskip("polygraphy.backend.trt")
VERSIONS = ["10.16.1.11", "11.4.0.106"]


@pytest.fixture(params=VERSIONS)
def real_polygraphy(request, monkeypatch):
    """The real polygraphy.backend.trt importing a fake tensorrt of the given version (and a fake cuda-python)."""
    cudart = FakeCudart()
    trt = fake_tensorrt_module(cudart, request.param)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_cuda, "require_cudart", lambda: cudart)
    monkeypatch.setattr(trt_lib, "_LOGGERS", {})
    reset_polygraphy_imports()
    yield trt
    reset_polygraphy_imports()  # the next user imports whatever tensorrt is then


def _build(tmp_path, name="tiny", **cfg):
    onnx_path = _tiny_onnx(tmp_path / f"{name}.onnx")
    config = BuildConfig(**{"profile": TINY_PROFILE, "workspace_gib": 1, "builder_optimization_level": 2, **cfg})
    return build_engine(onnx_path, tmp_path / f"{name}.plan", TINY_DESC, ModelDims(), config, tmp_path / "timing.cache").plan


def test_polygraphy_builds_a_strongly_typed_plan_that_runs(real_polygraphy, tmp_path):
    trt = real_polygraphy
    plan = _build(tmp_path)
    (b,) = trt.builds
    assert b["strongly_typed"] is True and "TF32" not in b["flags"]  # TensorRT's default TF32 cleared: fp32 is fp32
    assert b["workspace"] == 1 << 30 and b["opt_level"] == 2
    assert b["profile"]["x"] == [[1, 8], [2, 8], [4, 8]] and b["profile"]["s"] == [[4], [4], [4]]
    assert plan_header(plan)["profile"]["x"] == [[1, 8], [2, 8], [4, 8]]
    assert (tmp_path / "timing.cache").read_bytes() == b"+"  # saved by Polygraphy
    _build(tmp_path)
    assert (tmp_path / "timing.cache").read_bytes() == b"++"  # loaded, extended, saved back
    with TrtEngine(plan) as eng:
        f = _feeds(2)
        np.testing.assert_allclose(eng.infer(f)["y"], _expected(f), rtol=1e-5, atol=1e-5)


def test_tf32_only_with_build_tf32(real_polygraphy, tmp_path):
    _build(tmp_path, tf32=True)
    assert "TF32" in real_polygraphy.builds[-1]["flags"]


def test_the_fake_has_what_each_version_has(real_polygraphy, tmp_path):
    """The names the issue is about, by version (read from the bindings wheels; see the fake's docstring)."""
    trt = real_polygraphy
    v11 = trt.__version__.startswith("11.")
    assert hasattr(trt.BuilderFlag, "FP16") is not v11 and hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") is not v11
    assert hasattr(trt.Builder(None).create_builder_config(), "int8_calibrator") is not v11
    parser = trt.OnnxParser(trt.Builder(None).create_network(0), None)
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    assert parser.parse_from_file(str(tmp_path / "bad.onnx")) is False and parser.num_errors == 1  # reported, not raised


def test_layer_precision_is_gone_in_tensorrt_11(real_polygraphy, tmp_path):
    trt = real_polygraphy
    net = trt.Builder(None).create_network(0)
    assert trt.OnnxParser(net, None).parse_from_file(str(_tiny_onnx(tmp_path / "t.onnx")))
    layer = net[0]
    if trt.__version__.startswith("11."):
        with pytest.raises(AttributeError):
            layer.precision_is_set  # noqa: B018 - what Polygraphy <= 0.49 reads in CreateConfig
    else:
        assert layer.precision_is_set is False


def test_tensorrt_refuses_precision_flags_on_strongly_typed_networks(real_polygraphy, tmp_path):
    """NvInfer.h: a strongly typed network takes its types from the graph; the precision flags are an error."""
    trt = real_polygraphy
    from polygraphy.backend import trt as pg

    flag = trt.BuilderFlag.BF16
    net = pg.network_from_onnx_path(str(_tiny_onnx(tmp_path / "t.onnx")), strongly_typed=True)
    config = pg.CreateConfig(profiles=[pg.Profile().add("x", (1, 8), (2, 8), (4, 8)).add("s", (4,), (4,), (4,))])
    builder, network, _parser = net
    cfg = config(builder, network)
    cfg.set_flag(flag)
    assert builder.build_serialized_network(network, cfg) is None and "strongly typed" in trt.log[-1]


def test_a_polygraphy_too_old_for_tensorrt_11_is_refused_before_any_work(real_polygraphy, tmp_path, monkeypatch):
    from monkey_trt.core.errors import BackendUnavailable
    from monkey_trt.engine.trt import build as trt_build

    monkeypatch.setattr(trt_build, "_dist_version", lambda dist: "0.49.26")
    if real_polygraphy.__version__.startswith("10."):
        _build(tmp_path)  # TensorRT 10 still has what 0.49 reads
        return
    with pytest.raises(BackendUnavailable, match=r"^polygraphy 0.49.26 cannot build with TensorRT 11.4.0.106: .*precision_is_set") as e:
        _build(tmp_path)
    assert "\n" not in str(e.value) and "pip install 'polygraphy>=0.53.6'" in str(e.value)
    assert not real_polygraphy.builds and not (tmp_path / "tiny.plan").exists()
