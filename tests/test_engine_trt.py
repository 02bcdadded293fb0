"""TensorRT backend. Without TensorRT/GPU: clean refusals, cache keys, build configs, profiles, and the
whole build/run control flow against honest fakes. With both (marked gpu): build a tiny plan and run it."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from monkey_trt.core.errors import BackendUnavailable, EngineDirError, MonkeyError
from monkey_trt.engine.trt import build as trt_build
from monkey_trt.engine.trt import cuda as trt_cuda
from monkey_trt.engine.trt import engine as trt_engine
from monkey_trt.engine.trt import lib as trt_lib
from monkey_trt.engine.trt.build import build_engine, build_engine_dir
from monkey_trt.engine.trt.cuda import require_cuda_device
from monkey_trt.engine.trt.engine import TrtEngine
from monkey_trt.engine.trt.lib import require_tensorrt
from monkey_trt.enginedir import plans
from monkey_trt.enginedir.manifest import NetworkEntry, PrecisionFiles
from monkey_trt.enginedir.networks import (
    NETWORKS,
    ModelDims,
    NetworkDesc,
    Profile,
    ShapeRange,
    TensorDesc,
    network_descs,
)
from monkey_trt.enginedir.plans import BuildConfig, cache_key, manifest_onnx_digest
from tests.fakes.trt import (
    OK,
    Err,
    FakeCudart,
    FakeStream,
    fake_polygraphy,
    fake_tensorrt,
)

PROFILE = Profile(ShapeRange(1, 1, 2), ShapeRange(256, 512, 768), ShapeRange(256, 512, 768))


def _has_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _gpu_ready() -> bool:
    try:
        require_tensorrt()
        require_cuda_device()
    except BackendUnavailable:
        return False
    return True


GPU_READY = _gpu_ready()
needs_gpu = pytest.mark.skipif(not GPU_READY, reason="needs TensorRT, cuda-python and a visible NVIDIA GPU")


# -- refusals without TensorRT --------------------------------------------------------------
@pytest.mark.skipif(_has_module("tensorrt"), reason="TensorRT is installed here")
def test_require_tensorrt_refuses_in_one_line():
    with pytest.raises(BackendUnavailable) as ei:
        require_tensorrt()
    msg = str(ei.value)
    assert msg == trt_lib.TRT_MISSING
    assert "\n" not in msg and "pip install 'monkey-trt[gpu]'" in msg
    assert ei.value.__cause__ is None and ei.value.__suppress_context__  # no ImportError chained into the traceback
    assert trt_lib.tensorrt_version() is None


@pytest.mark.skipif(GPU_READY, reason="a GPU is visible here")
def test_require_cuda_device_refuses_without_gpu():
    with pytest.raises(BackendUnavailable) as ei:
        require_cuda_device()
    assert "\n" not in str(ei.value)


@pytest.mark.skipif(GPU_READY, reason="a GPU is visible here")
def test_entry_points_refuse_cleanly(tmp_path):
    desc = network_descs(ModelDims())["vae_decoder"]
    cfg = BuildConfig(profile=PROFILE)
    with pytest.raises(BackendUnavailable):
        build_engine(tmp_path / "vae_decoder.onnx", tmp_path / "vae.plan", desc, ModelDims(), cfg, tmp_path / "timing.cache")
    manifest = SimpleNamespace(networks={}, dims=ModelDims())
    with pytest.raises(BackendUnavailable):
        build_engine_dir(tmp_path, manifest, cfg)
    eng = TrtEngine(tmp_path / "unet.plan")
    with pytest.raises(BackendUnavailable):
        eng.activate()
    with pytest.raises(BackendUnavailable), TrtEngine(tmp_path / "unet.plan"):
        pass
    eng.deactivate()  # harmless when nothing was activated
    assert not list(tmp_path.iterdir())  # nothing written


# -- cache key ------------------------------------------------------------------------------
BASE = dict(onnx_sha256="a" * 64, build_config=BuildConfig(profile=PROFILE), trt_version="10.8.0.43",
            device_name="NVIDIA H100 80GB HBM3", compute_capability="9.0")


def test_cache_key_is_stable_and_readable():
    k = cache_key(**BASE)
    assert k == cache_key(**BASE)
    assert k == cache_key(**{**BASE, "build_config": BuildConfig(profile=Profile.from_dict(PROFILE.to_dict()))})
    assert k == cache_key(**{**BASE, "compute_capability": (9, 0)})
    assert k.startswith(f"v{plans.KEY_VERSION}-fp32-trt10.8.0.43-sm90-")
    assert cache_key(**{**BASE, "build_config": BuildConfig(profile=PROFILE, precision="fp16")}).startswith("v2-fp16-")
    assert "/" not in k and " " not in k


@pytest.mark.parametrize(
    "change",
    [
        {"onnx_sha256": "b" * 64},
        {"trt_version": "10.9.0.34"},
        {"device_name": "NVIDIA L40S"},
        {"compute_capability": "8.9"},
        {"build_config": BuildConfig(profile=PROFILE, precision="fp16")},
        {"build_config": BuildConfig(profile=PROFILE, workspace_gib=4)},
        {"build_config": BuildConfig(profile=PROFILE, builder_optimization_level=5)},
        {"build_config": BuildConfig(profile=PROFILE, static_shapes=True)},
        {"build_config": BuildConfig(profile=PROFILE, tf32=True)},
        {"build_config": BuildConfig(profile=Profile.static(1, 512, 512))},
        {"build_config": BuildConfig(profile=Profile(ShapeRange(1, 1, 4), PROFILE.height, PROFILE.width))},
    ],
)
def test_cache_key_changes_with_every_ingredient(change):
    assert cache_key(**{**BASE, **change}) != cache_key(**BASE)


def test_cache_key_changes_with_key_version(monkeypatch):
    k = cache_key(**BASE)
    monkeypatch.setattr(plans, "KEY_VERSION", plans.KEY_VERSION + 1)
    assert cache_key(**BASE) != k


@pytest.mark.parametrize("bad", [{"onnx_sha256": ""}, {"compute_capability": "sm90"}, {"compute_capability": (9,)},
                                 {"build_config": {"precision": "fp16"}}])
def test_cache_key_rejects_bad_ingredients(bad):
    with pytest.raises(MonkeyError):
        cache_key(**{**BASE, **bad})


def test_manifest_digest_covers_every_file():
    e = lambda d: SimpleNamespace(files=lambda precision: (None, d, {}))
    m1 = SimpleNamespace(networks={"unet": e({"unet.onnx": "1", "unet.onnx.data": "2"}), "vae_decoder": e({"vae_decoder.onnx": "3"})})
    m2 = SimpleNamespace(networks={"unet": e({"unet.onnx": "1", "unet.onnx.data": "X"}), "vae_decoder": e({"vae_decoder.onnx": "3"})})
    assert manifest_onnx_digest(m1) == manifest_onnx_digest(m1)
    assert manifest_onnx_digest(m1) != manifest_onnx_digest(m2)
    assert len(manifest_onnx_digest(m1)) == 64


# -- build config ---------------------------------------------------------------------------
def test_build_config_defaults_and_frozen():
    cfg = BuildConfig(profile=PROFILE)
    assert cfg.precision == "fp32" and cfg.static_shapes is False and cfg.tf32 is False
    assert 0 <= cfg.builder_optimization_level <= 5 and cfg.workspace_gib > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.precision = "fp16"  # type: ignore[misc]
    d = cfg.to_dict()
    assert d["profile"] == PROFILE.to_dict() and json.loads(json.dumps(d)) == d


@pytest.mark.parametrize(
    "kw",
    [
        {"workspace_gib": 0},
        {"workspace_gib": -1},
        {"workspace_gib": float("nan")},
        {"workspace_gib": "8"},
        {"builder_optimization_level": 6},
        {"builder_optimization_level": -1},
        {"builder_optimization_level": 2.5},
        {"precision": "int8"},
        {"precision": True},
        {"static_shapes": "yes"},
        {"profile": {"batch": [1, 1, 1]}},
    ],
)
def test_build_config_validation(kw):
    with pytest.raises(MonkeyError) as ei:
        BuildConfig(**{"profile": PROFILE, **kw})
    assert "\n" not in str(ei.value)


def test_unet_profile_shapes():
    dims = ModelDims()
    unet = network_descs(dims)["unet"]
    shapes = BuildConfig(profile=PROFILE).input_shapes(unet, dims)
    assert set(shapes) == set(unet.input_names)
    assert shapes["sample"] == ((1, 4, 32, 32), (1, 4, 64, 64), (2, 4, 96, 96))
    assert shapes["timestep"] == ((1,), (1,), (2,))
    assert shapes["encoder_hidden_states"] == ((1, 77, 768), (1, 77, 768), (2, 77, 768))
    assert shapes["timestep_cond"] == ((1, 256), (1, 256), (2, 256))
    assert shapes["ip_tokens"] == ((1, 4, 768), (1, 4, 768), (2, 4, 768))
    assert shapes["ip_scale"] == ((16,), (16,), (16,))  # fixed: not part of the profile
    assert shapes["ip_mask"] == ((1, 1, 256, 256), (1, 1, 512, 512), (2, 1, 768, 768))
    # static_shapes: every input is pinned to the opt shape
    static = BuildConfig(profile=PROFILE, static_shapes=True)
    assert static.effective_profile == Profile.static(1, 512, 512)
    for mn, opt, mx in static.input_shapes(unet, dims).values():
        assert mn == opt == mx
    assert static.input_shapes(unet, dims)["sample"][0] == (1, 4, 64, 64)


# -- on a GPU with TensorRT -----------------------------------------------------------------
RNG = np.random.default_rng(0)
W = RNG.standard_normal((8, 4)).astype(np.float32)
BIAS = RNG.standard_normal((4,)).astype(np.float32)
TINY_DESC = NetworkDesc("tiny", inputs=(TensorDesc("x", "float32", ("B", 8)),), outputs=(TensorDesc("y", "float32", ("B", 4)),))
TINY_PROFILE = Profile(ShapeRange(1, 2, 4), ShapeRange(64, 64, 64), ShapeRange(64, 64, 64))


def _tiny_onnx(path: Path | None, half: bool = False):
    """y = (x @ W + b) * s: x [B, 8] dynamic (in the descriptor), s [4] static (not in it).

    half: y is float16 (a Cast at the end), as in a strongly typed fp16 graph's outputs."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8])
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16 if half else TensorProto.FLOAT, ["B", 4])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "bias"], ["z"]),
             helper.make_node("Mul", ["z", "s"], ["y32" if half else "y"])]
    if half:
        nodes.append(helper.make_node("Cast", ["y32"], ["y"], to=TensorProto.FLOAT16))
    graph = helper.make_graph(nodes, "tiny", [x, s], [y], initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(BIAS, "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if path is None:
        return model
    onnx.save(model, str(path))
    return path


def _feeds(batch: int) -> dict[str, np.ndarray]:
    return {"x": RNG.standard_normal((batch, 8)).astype(np.float32), "s": RNG.standard_normal((4,)).astype(np.float32)}


@functools.lru_cache(maxsize=None)
def _session(half: bool):
    import onnxruntime as ort

    return ort.InferenceSession(_tiny_onnx(None, half=half).SerializeToString(), providers=["CPUExecutionProvider"])


def _expected(f, half: bool = False) -> np.ndarray:
    """The tiny graph's output from ONNX Runtime: an executor independent of the engine under test and its fakes."""
    return _session(half).run(None, f)[0]


@pytest.fixture(scope="module")
def tiny_plan(tmp_path_factory):
    d = tmp_path_factory.mktemp("trt")
    onnx_path = _tiny_onnx(d / "tiny.onnx")
    cfg = BuildConfig(profile=TINY_PROFILE, workspace_gib=1, builder_optimization_level=0)
    info = build_engine(onnx_path, d / "tiny.plan", TINY_DESC, ModelDims(), cfg, d / "timing.cache")
    assert info.plan.is_file() and info.bytes > 0 and (d / "timing.cache").is_file()
    return d / "tiny.plan"


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("graph", [False, True])
def test_trt_engine_matches_numpy(tiny_plan, graph):
    with TrtEngine(tiny_plan, use_cuda_graph=graph) as eng:
        assert [s.name for s in eng.input_specs] == ["x", "s"]
        assert eng.input_specs[0].shape == (-1, 8) and eng.output_specs[0].shape == (-1, 4)
        assert eng.profile_range("x") == ((1, 8), (2, 8), (4, 8))
        for batch in (2, 2, 2, 3, 1, 4, 4):  # same shape (replay) and changes (re-capture)
            f = _feeds(batch)
            out = eng.infer(f)
            np.testing.assert_allclose(out["y"], _expected(f), rtol=1e-5, atol=1e-5)
        # results belong to the caller
        f = _feeds(4)
        a = eng.infer(f)["y"]
        eng.infer(_feeds(4))
        np.testing.assert_allclose(a, _expected(f), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("graph", [False, True])
def test_trt_engine_static_inputs(tiny_plan, graph):
    """Static inputs (uploaded once) give the same results as full feeds; shape changes re-allocate."""
    with TrtEngine(tiny_plan, use_cuda_graph=graph) as eng:
        for batch in (2, 2, 3, 1):
            x = _feeds(batch)["x"]
            eng.set_static_inputs({"x": x})
            for _ in range(3):
                s = _feeds(1)["s"]
                np.testing.assert_array_equal(eng.infer({"s": s})["y"], eng.infer({"x": x, "s": s})["y"])
                np.testing.assert_allclose(eng.infer({"s": s})["y"], _expected({"x": x, "s": s}), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@needs_gpu
def test_trt_engine_matches_ort(tiny_plan):
    from monkey_trt.engine.ort import OrtRunner

    f = _feeds(3)
    with OrtRunner(tiny_plan.with_suffix(".onnx")) as ort_r, TrtEngine(tiny_plan) as eng:
        np.testing.assert_allclose(eng.infer(f)["y"], ort_r.infer(f)["y"], rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@needs_gpu
def test_trt_engine_rejects_shapes_outside_profile(tiny_plan):
    with TrtEngine(tiny_plan) as eng:
        with pytest.raises(MonkeyError, match="outside the engine profile") as ei:
            eng.infer(_feeds(5))
        assert "\n" not in str(ei.value)
        with pytest.raises(MonkeyError, match="dtype float64"):
            eng.infer({"x": np.zeros((2, 8)), "s": np.zeros(4, np.float32)})
        f = _feeds(2)  # still usable afterwards
        np.testing.assert_allclose(eng.infer(f)["y"], _expected(f), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@needs_gpu
def test_damaged_plan_advises_rebuild(tmp_path):
    bad = tmp_path / "bad.plan"
    bad.write_bytes(b"\0" * 1024)
    with pytest.raises(EngineDirError, match="--force") as ei:
        TrtEngine(bad).load()
    assert "\n" not in str(ei.value)


def _tiny_manifest(tmp_path):
    """A manifest stand-in with one network "tiny": fp32 and fp16 ONNX graphs written into tmp_path."""
    files = {}
    for precision, name in (("fp32", "tiny.onnx"), ("fp16", "tiny.fp16.onnx")):
        _tiny_onnx(tmp_path / name, half=precision == "fp16")
        files[precision] = (name, {name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()})
    entry = NetworkEntry(TINY_DESC, files["fp32"][0], None, files["fp32"][1], {},
                         {"fp16": PrecisionFiles(files["fp16"][0], None, files["fp16"][1], {})})
    return SimpleNamespace(networks={"tiny": entry}, dims=ModelDims(), profile=TINY_PROFILE, precisions=("fp32", "fp16"),
                           path=lambda root, net, precision="fp32": Path(root) / entry.files(precision)[0])


@pytest.mark.gpu
@needs_gpu
def test_build_engine_dir_skips_and_forces(tmp_path):
    manifest = _tiny_manifest(tmp_path)
    cfg = BuildConfig(profile=TINY_PROFILE, workspace_gib=1, builder_optimization_level=0)
    events: list[tuple[str, str]] = []
    out = build_engine_dir(tmp_path, manifest, cfg, networks=["tiny"], progress=lambda n, m: events.append((n, m)))
    assert out.parent == tmp_path / "trt" and (out / "tiny.plan").is_file() and (out / "timing.cache").is_file()
    meta = json.loads((out / "build.json").read_text())
    assert meta["key"] == out.name and meta["networks"]["tiny"]["seconds"] >= 0
    assert meta["inputs"]["build_config"] == cfg.to_dict()
    assert any("built" in m for _, m in events)
    mtime = (out / "tiny.plan").stat().st_mtime_ns
    events.clear()
    assert build_engine_dir(tmp_path, manifest, cfg, networks=["tiny"], progress=lambda n, m: events.append((n, m))) == out
    assert any("up to date" in m for _, m in events) and (out / "tiny.plan").stat().st_mtime_ns == mtime
    build_engine_dir(tmp_path, manifest, cfg, networks=["tiny"], force=True)
    with TrtEngine(out / "tiny.plan") as eng:
        f = _feeds(2)
        np.testing.assert_allclose(eng.infer(f)["y"], _expected(f), rtol=1e-5, atol=1e-5)
    with pytest.raises(MonkeyError, match="unknown network"):
        build_engine_dir(tmp_path, manifest, cfg, networks=["unet"])


# -- the same control flow against in-process fakes of tensorrt, polygraphy + cuda-python (runs everywhere) --
@pytest.fixture
def fakes(monkeypatch):
    pytest.importorskip("polygraphy.backend.trt")
    cudart = FakeCudart()
    fake_trt = fake_tensorrt(cudart)
    log: list = []
    monkeypatch.setattr(trt_lib, "require_tensorrt", lambda: fake_trt)
    monkeypatch.setattr(trt_cuda, "require_cudart", lambda: cudart)
    monkeypatch.setattr(trt_build, "require_polygraphy", lambda: fake_polygraphy(fake_trt, log))
    monkeypatch.setattr(trt_lib, "_LOGGERS", {})
    return SimpleNamespace(trt=fake_trt, cudart=cudart, polygraphy_calls=log)


def _build(tmp_path, half=False, name="tiny", **cfg):
    onnx_path = _tiny_onnx(tmp_path / f"{name}.onnx", half=half)
    config = BuildConfig(**{"profile": TINY_PROFILE, "workspace_gib": 1, "builder_optimization_level": 1, **cfg})
    return build_engine(onnx_path, tmp_path / f"{name}.plan", TINY_DESC, ModelDims(), config, tmp_path / "timing.cache").plan


@pytest.fixture
def fake_plan(fakes, tmp_path):
    return _build(tmp_path)


def test_fake_device_query(fakes):
    dev = require_cuda_device()
    assert (dev.name, dev.compute_capability, dev.index) == ("Fake GPU 80GB", "9.0", 0)
    with pytest.raises(BackendUnavailable, match="does not exist"):
        require_cuda_device(1)
    fakes.cudart.devices = 0
    with pytest.raises(BackendUnavailable, match="no NVIDIA GPU"):
        require_cuda_device()


def test_fake_build_uses_polygraphy_strongly_typed_with_profile_and_timing_cache(fakes, tmp_path):
    tc = tmp_path / "timing.cache"
    plan = _build(tmp_path, workspace_gib=2, builder_optimization_level=4)
    calls = dict(fakes.polygraphy_calls)
    assert calls["network_from_onnx_path"] == {"strongly_typed": True}
    cfg = calls["CreateConfig"]
    assert cfg["tf32"] is False and cfg["builder_optimization_level"] == 4 and cfg["load_timing_cache"] is None
    assert cfg["memory_pool_limits"] == {fakes.trt.MemoryPoolType.WORKSPACE: 2 << 30}
    (prof,) = cfg["profiles"]
    assert (prof["x"].min, prof["x"].opt, prof["x"].max) == ((1, 8), (2, 8), (4, 8))  # from the descriptor
    assert (prof["s"].min, prof["s"].max) == ((4,), (4,))  # not in the descriptor: its fixed shape
    assert plan.read_bytes().startswith(b"FAKEPLAN") and tc.read_bytes() == b"+"
    fakes.polygraphy_calls.clear()
    _build(tmp_path)
    assert dict(fakes.polygraphy_calls)["CreateConfig"]["load_timing_cache"] is not None  # loaded, then saved back
    assert tc.read_bytes() == b"++"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["timing.cache", "tiny.onnx", "tiny.plan"]  # no temp files left
    fakes.polygraphy_calls.clear()
    _build(tmp_path, name="s", static_shapes=True, tf32=True)
    (prof,) = dict(fakes.polygraphy_calls)["CreateConfig"]["profiles"]
    assert (prof["x"].min, prof["x"].max) == ((2, 8), (2, 8)) and dict(fakes.polygraphy_calls)["CreateConfig"]["tf32"] is True


def test_fake_failed_build_leaves_no_files(fakes, tmp_path, monkeypatch):
    onnx_path = _tiny_onnx(tmp_path / "tiny.onnx")
    (tmp_path / "timing.cache").write_bytes(b"old")
    broken = fake_polygraphy(fakes.trt, [])
    broken.engine_from_network = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("Invalid Engine.\nmore"))
    monkeypatch.setattr(trt_build, "require_polygraphy", lambda: broken)
    with pytest.raises(MonkeyError, match="cannot build tiny.onnx: Invalid Engine") as ei:
        build_engine(onnx_path, tmp_path / "t.plan", TINY_DESC, ModelDims(), BuildConfig(profile=TINY_PROFILE), tmp_path / "timing.cache")
    assert "\n" not in str(ei.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["timing.cache", "tiny.onnx"] and (tmp_path / "timing.cache").read_bytes() == b"old"


def test_fake_unparsable_onnx_is_one_line(fakes, tmp_path, monkeypatch):
    onnx_path = _tiny_onnx(tmp_path / "tiny.onnx")
    broken = fake_polygraphy(fakes.trt, [])
    broken.network_from_onnx_path = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("Failed to parse ONNX model.\ndetails"))
    monkeypatch.setattr(trt_build, "require_polygraphy", lambda: broken)
    with pytest.raises(MonkeyError, match="cannot build tiny.onnx: Failed to parse ONNX model") as ei:
        build_engine(onnx_path, tmp_path / "t.plan", TINY_DESC, ModelDims(), BuildConfig(profile=TINY_PROFILE), tmp_path / "tc")
    assert "\n" not in str(ei.value) and sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]


def test_fake_build_rejects_descriptor_mismatch(fakes, tmp_path):
    onnx_path = _tiny_onnx(tmp_path / "tiny.onnx")
    wrong = NetworkDesc("tiny", inputs=(TensorDesc("x", "float32", ("B", 9)),), outputs=TINY_DESC.outputs)
    with pytest.raises(MonkeyError, match="re-export"):
        build_engine(onnx_path, tmp_path / "t.plan", wrong, ModelDims(), BuildConfig(profile=TINY_PROFILE), None)
    no_x = NetworkDesc("tiny", inputs=(), outputs=TINY_DESC.outputs)
    with pytest.raises(MonkeyError, match="no shape range"):
        build_engine(onnx_path, tmp_path / "t.plan", no_x, ModelDims(), BuildConfig(profile=TINY_PROFILE), None)
    with pytest.raises(EngineDirError, match="does not exist"):
        build_engine(tmp_path / "nope.onnx", tmp_path / "t.plan", TINY_DESC, ModelDims(), BuildConfig(profile=TINY_PROFILE), None)
    assert fakes.polygraphy_calls == []


@pytest.mark.parametrize("graph", [False, True])
def test_fake_engine_runs_and_reuses_buffers(fakes, fake_plan, graph):
    cu = fakes.cudart
    with TrtEngine(fake_plan, use_cuda_graph=graph) as eng:
        assert [s.name for s in eng.input_specs] == ["x", "s"] and eng.output_specs[0].shape == (-1, 4)
        for batch in (2, 2, 2, 3, 3, 1):
            f = _feeds(batch)
            np.testing.assert_allclose(eng.infer(f)["y"], _expected(f), rtol=1e-5, atol=1e-5)
        n_dev = len(cu.dev)
        assert n_dev == 3 and len(cu.host) == 3  # one device + one pinned buffer per tensor
        f = _feeds(2)  # smaller again: buffers reused, not re-allocated
        np.testing.assert_allclose(eng.infer(f)["y"], _expected(f), rtol=1e-5, atol=1e-5)
        assert len(cu.dev) == n_dev
    if graph:
        assert cu.captures == 4  # batch 2, 3, 1, 2: one capture per shape change
        assert cu.launches == 3  # replays of batch 2 (x2) and batch 3 (x1)
    else:
        assert cu.captures == 0 and cu.launches == 0
    assert cu.dev == {} and cu.host == {} and cu.graphs_alive == 0 and cu.queues == {}  # everything freed


@pytest.mark.parametrize("graph", [False, True])
def test_fake_half_outputs_come_back_as_float16(fakes, tmp_path, graph):
    plan = _build(tmp_path, half=True)
    with TrtEngine(plan, use_cuda_graph=graph) as eng:
        assert eng.output_specs[0].dtype == "float16"
        for batch in (3, 3, 1):
            f = _feeds(batch)
            y = eng.infer(f)["y"]
            assert y.dtype == np.float16 and y.shape == (batch, 4)
            np.testing.assert_allclose(y.astype(np.float32), _expected(f, half=True).astype(np.float32), rtol=2e-3, atol=2e-3)


def test_fake_half_mapped_to_float32_fails(fakes, tmp_path, monkeypatch):
    """The fakes catch a wrong HALF mapping: read as float32, the output is garbage."""
    plan = _build(tmp_path, half=True)
    real = trt_engine._np_dtype
    monkeypatch.setattr(trt_engine, "_np_dtype", lambda trt, dt: np.dtype(np.float32) if dt == trt.DataType.HALF else real(trt, dt))
    with TrtEngine(plan) as eng:
        f = _feeds(2)
        y = eng.infer(f)["y"]
        assert not np.allclose(y, _expected(f, half=True).astype(np.float32), rtol=2e-3, atol=2e-3)


def test_fake_outputs_need_the_stream_synchronised(fakes, fake_plan, monkeypatch):
    """Device->host copies complete at the stream's synchronisation: without it, the outputs are stale."""
    with TrtEngine(fake_plan) as eng:
        f = _feeds(2)
        np.testing.assert_allclose(eng.infer(f)["y"], _expected(f), rtol=1e-5, atol=1e-5)
        syncs = fakes.cudart.syncs
        real_sync = fakes.cudart.cudaStreamSynchronize
        monkeypatch.setattr(fakes.cudart, "cudaStreamSynchronize", lambda s: (OK,))  # a forgotten sync
        g = _feeds(2)
        assert not np.allclose(eng.infer(g)["y"], _expected(g), rtol=1e-5, atol=1e-5)
        monkeypatch.setattr(fakes.cudart, "cudaStreamSynchronize", real_sync)
    assert syncs > 0


def test_fake_enqueue_takes_the_native_stream_handle(fakes, fake_plan, monkeypatch):
    with TrtEngine(fake_plan) as eng:
        assert eng._stream_handle == int(eng._stream) and eng._stream_handle in fakes.cudart.queues
        eng._stream_handle = eng._stream  # the handle object instead of its value
        with pytest.raises(AssertionError, match="native stream handle"):
            eng.infer(_feeds(2))
        eng._stream_handle = 0  # the legacy default stream: not the engine's stream
        with pytest.raises(AssertionError, match="not a live stream"):
            eng.infer(_feeds(2))
        eng._stream_handle = int(eng._stream)  # restored: deactivate() syncs the real stream


def test_native_handle_prefers_cuda_python_accessor(monkeypatch):
    """cuda-python >= 12.9: cuda.bindings.utils.get_cuda_native_handle, not the deprecated int(obj)."""
    import sys
    import types

    class Handle:
        def __int__(self):
            raise AssertionError("int(handle) is deprecated in cuda-python 13")

    utils = types.ModuleType("cuda.bindings.utils")
    utils.get_cuda_native_handle = lambda obj: 0x1234 if isinstance(obj, Handle) else (_ for _ in ()).throw(TypeError("Unknown type"))
    for name, mod in (("cuda", types.ModuleType("cuda")), ("cuda.bindings", types.ModuleType("cuda.bindings")), ("cuda.bindings.utils", utils)):
        monkeypatch.setitem(sys.modules, name, mod)
    assert trt_cuda.native_handle(Handle()) == 0x1234
    assert trt_cuda.native_handle(FakeStream(77)) == 77  # not a cuda-python type: int()
    monkeypatch.setitem(sys.modules, "cuda.bindings.utils", None)  # cuda-python < 12.9: no accessor
    assert trt_cuda.native_handle(FakeStream(78)) == 78


def test_fake_engine_rejects_out_of_profile_and_bad_feeds(fakes, fake_plan):
    with TrtEngine(fake_plan) as eng:
        with pytest.raises(MonkeyError, match=r"outside the engine profile \[1, 8\]\.\.\[4, 8\]"):
            eng.infer(_feeds(5))
        with pytest.raises(MonkeyError, match="missing input"):
            eng.infer({"x": _feeds(2)["x"]})
        with pytest.raises(MonkeyError, match=r"shape \(3,\)"):
            eng.infer({"x": _feeds(2)["x"], "s": np.zeros(3, np.float32)})
        f = _feeds(4)
        np.testing.assert_allclose(eng.infer(f)["y"], _expected(f), rtol=1e-5, atol=1e-5)
    with pytest.raises(MonkeyError, match="not active"):
        TrtEngine(fake_plan).infer(_feeds(1))


def test_fake_damaged_or_missing_plan(fakes, tmp_path):
    bad = tmp_path / "unet.plan"
    bad.write_bytes(b"\0" * 64)
    with pytest.raises(EngineDirError, match=r"monkey-trt build --force") as ei:
        TrtEngine(bad).load()
    assert "\n" not in str(ei.value) and "Fake GPU" in str(ei.value)
    with pytest.raises(EngineDirError, match="missing"):
        TrtEngine(tmp_path / "nope.plan").activate()


def test_fake_build_engine_dir(fakes, tmp_path):
    manifest = _tiny_manifest(tmp_path)
    cfg = BuildConfig(profile=TINY_PROFILE)
    events: list[tuple[str, str]] = []
    out = build_engine_dir(tmp_path, manifest, cfg, networks=["tiny"], progress=lambda n, m: events.append((n, m)))
    assert out == tmp_path / "trt" / cache_key(manifest_onnx_digest(manifest), cfg, "11.4.0.106", "Fake GPU 80GB", "9.0")
    assert sorted(p.name for p in out.iterdir()) == ["build.json", "timing.cache", "tiny.plan"]
    meta = json.loads((out / "build.json").read_text())
    assert meta["key"] == out.name and meta["inputs"]["onnx_files"] == {"tiny": dict(manifest.networks["tiny"].sha256)}
    assert meta["inputs"]["device_name"] == "Fake GPU 80GB" and meta["versions"]["tensorrt"] == "11.4.0.106"
    assert meta["inputs"]["precision"] == "fp32" and meta["networks"]["tiny"]["onnx"] == "tiny.onnx"
    first = meta["networks"]["tiny"]
    assert events[0] == ("tiny", "building (fp32)") and "built in" in events[-1][1]
    events.clear()
    build_engine_dir(tmp_path, manifest, cfg, networks=["tiny"], progress=lambda n, m: events.append((n, m)))
    assert len(events) == 1 and "up to date" in events[0][1]
    assert json.loads((out / "build.json").read_text())["networks"]["tiny"] == first  # kept
    build_engine_dir(tmp_path, manifest, cfg, networks=["tiny"], force=True)
    assert json.loads((out / "build.json").read_text())["networks"]["tiny"]["built_at"] >= first["built_at"]
    fp16 = build_engine_dir(tmp_path, manifest, BuildConfig(profile=TINY_PROFILE, precision="fp16"), networks=["tiny"])
    assert fp16 != out and fp16.name.startswith("v2-fp16-") and json.loads((fp16 / "build.json").read_text())["networks"]["tiny"]["onnx"] == "tiny.fp16.onnx"
    with TrtEngine(out / "tiny.plan") as eng, TrtEngine(fp16 / "tiny.plan") as eng16:
        f = _feeds(3)
        np.testing.assert_allclose(eng.infer(f)["y"], _expected(f), rtol=1e-5, atol=1e-5)
        assert eng16.infer(f)["y"].dtype == np.float16  # built from the fp16 graph
    with pytest.raises(MonkeyError, match="unknown network"):
        build_engine_dir(tmp_path, manifest, cfg, networks=["unet"])


def _networks_manifest(tmp_path, precisions=("fp32", "fp16")):
    """A stand-in for the four networks, each the tiny graph, for plan selection."""
    tiny = _tiny_manifest(tmp_path)
    entry = tiny.networks["tiny"]
    nets = {n: entry for n in NETWORKS}
    return SimpleNamespace(networks=nets, dims=ModelDims(), profile=TINY_PROFILE, precisions=precisions, path=tiny.path)


def test_fake_plan_selection_by_full_key(fakes, tmp_path, monkeypatch):
    manifest = _networks_manifest(tmp_path)
    monkeypatch.setattr(trt_build, "_profile_shapes", lambda onnx_path, desc, dims, cfg: {"x": ((1, 8), (2, 8), (4, 8)), "s": ((4,),) * 3})
    with pytest.raises(EngineDirError, match=r"no fp16 TensorRT plans .* run `monkey-trt build --engine-dir .* --precision fp16`") as ei:
        trt_engine.find_plan_dir(tmp_path, manifest, "fp16")
    assert "\n" not in str(ei.value)
    fp32 = build_engine_dir(tmp_path, manifest, BuildConfig(profile=TINY_PROFILE))
    fp16 = build_engine_dir(tmp_path, manifest, BuildConfig(profile=TINY_PROFILE, precision="fp16"))
    (fp32 / "build.json").touch()  # the newest: must not matter
    assert trt_engine.find_plan_dir(tmp_path, manifest, "fp16") == fp16
    assert trt_engine.find_plan_dir(tmp_path, manifest, "fp32") == fp32
    # a non-default build (static shapes) is found when it is the only one for the key's other parts
    static = build_engine_dir(tmp_path, manifest, BuildConfig(profile=TINY_PROFILE, precision="fp16", static_shapes=True))
    assert trt_engine.find_plan_dir(tmp_path, manifest, "fp16") == fp16  # the default build wins
    import shutil

    shutil.rmtree(fp16)
    assert trt_engine.find_plan_dir(tmp_path, manifest, "fp16") == static
    # another TensorRT version or GPU: none of these plans
    monkeypatch.setattr(fakes.trt, "__version__", "11.5.0.1")
    with pytest.raises(EngineDirError, match="TensorRT 11.5.0.1"):
        trt_engine.find_plan_dir(tmp_path, manifest, "fp32")
    with pytest.raises(EngineDirError, match="export --out .* --precision fp16"):
        trt_engine.find_plan_dir(tmp_path, _networks_manifest(tmp_path, precisions=("fp32",)), "fp16")


# -- static inputs (set_static_inputs): uploaded once, graphs kept across new values --------------
@pytest.mark.parametrize("graph", [False, True])
def test_fake_static_inputs_upload_once(fakes, fake_plan, graph):
    cu = fakes.cudart
    with TrtEngine(fake_plan, use_cuda_graph=graph) as eng:
        x = _feeds(2)["x"]
        eng.set_static_inputs({"x": x})  # nothing allocated yet: uploaded by the first infer()
        assert cu.copies == []
        for _ in range(5):
            s = _feeds(1)["s"]
            out = eng.infer({"s": s})["y"]
            np.testing.assert_allclose(out, _expected({"x": x, "s": s}), rtol=1e-5, atol=1e-5)
        assert cu.h2d_counts(eng) == {"x": 1, "s": 5}  # the static input once, the other one per call
        assert (cu.captures, cu.launches) == ((1, 4) if graph else (0, 0))

        # new values, same shape: uploaded right away, the captured graph stays valid
        cu.copies.clear()
        x2 = _feeds(2)["x"]
        eng.set_static_inputs({"x": x2})
        assert cu.h2d_counts(eng) == {"x": 1}
        for _ in range(3):
            s = _feeds(1)["s"]
            np.testing.assert_allclose(eng.infer({"s": s})["y"], _expected({"x": x2, "s": s}), rtol=1e-5, atol=1e-5)
        assert cu.h2d_counts(eng) == {"x": 1, "s": 3}
        assert (cu.captures, cu.launches) == ((1, 7) if graph else (0, 0))

        # a new static shape: larger (x and y re-allocated) then smaller (buffers reused), re-captured each time
        for batch, captures in ((3, 2), (1, 3)):
            cu.copies.clear()
            xb = _feeds(batch)["x"]
            eng.set_static_inputs({"x": xb})
            assert cu.copies == []  # deferred: the next infer() knows every input's shape
            for _ in range(3):
                s = _feeds(1)["s"]
                np.testing.assert_allclose(eng.infer({"s": s})["y"], _expected({"x": xb, "s": s}), rtol=1e-5, atol=1e-5)
            assert cu.h2d_counts(eng) == {"x": 1, "s": 3}
            assert eng._shapes["y"] == (batch, 4) and len(cu.dev) == 3
            if graph:
                assert cu.captures == captures and cu.graphs_alive == 2
    assert cu.dev == {} and cu.host == {} and cu.graphs_alive == 0


@pytest.mark.parametrize("graph", [False, True])
def test_fake_static_inputs_match_plain_feeds(fakes, fake_plan, graph):
    with TrtEngine(fake_plan, use_cuda_graph=graph) as eng, TrtEngine(fake_plan, use_cuda_graph=graph) as plain:
        for batch in (2, 2, 4, 1):
            f = _feeds(batch)
            eng.set_static_inputs({"s": f["s"]})
            for _ in range(2):
                x = _feeds(batch)["x"]
                np.testing.assert_array_equal(eng.infer({"x": x})["y"], plain.infer({"x": x, "s": f["s"]})["y"])


def test_fake_static_inputs_validation_and_override(fakes, fake_plan):
    cu = fakes.cudart
    s1, s2 = _feeds(1)["s"], _feeds(1)["s"]
    with TrtEngine(fake_plan) as eng:
        with pytest.raises(MonkeyError, match="unknown input"):
            eng.set_static_inputs({"z": s1})
        with pytest.raises(MonkeyError, match="dtype float64"):
            eng.set_static_inputs({"s": s1.astype(np.float64)})
        with pytest.raises(MonkeyError, match=r"shape \(3,\)"):
            eng.set_static_inputs({"s": s1[:3]})
        eng.set_static_inputs({"s": s1})
        x = _feeds(2)["x"]
        np.testing.assert_allclose(eng.infer({"x": x})["y"], _expected({"x": x, "s": s1}), rtol=1e-5, atol=1e-5)
        # a feed overrides the static value for that call; the static one is uploaded again afterwards
        cu.copies.clear()
        np.testing.assert_allclose(eng.infer({"x": x, "s": s2})["y"], _expected({"x": x, "s": s2}), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(eng.infer({"x": x})["y"], _expected({"x": x, "s": s1}), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(eng.infer({"x": x})["y"], _expected({"x": x, "s": s1}), rtol=1e-5, atol=1e-5)
        assert cu.h2d_counts(eng) == {"x": 3, "s": 2}
        with pytest.raises(MonkeyError, match="missing input.*'x'"):
            eng.infer({})
        with pytest.raises(MonkeyError, match="must be a dict"):
            eng.infer([x])  # type: ignore[arg-type]
        eng.set_static_inputs({})  # replaces the set: nothing static any more
        with pytest.raises(MonkeyError, match="missing input.*'s'"):
            eng.infer({"x": x})

    # before activate(): kept and uploaded on first use; again after a deactivate/activate cycle
    eng = TrtEngine(fake_plan)
    eng.set_static_inputs({"s": s2})
    for _ in range(2):
        cu.copies.clear()
        with eng:
            for _ in range(3):
                np.testing.assert_allclose(eng.infer({"x": x})["y"], _expected({"x": x, "s": s2}), rtol=1e-5, atol=1e-5)
            assert cu.h2d_counts(eng) == {"x": 3, "s": 1}
    assert cu.dev == {} and cu.host == {}


# -- TensorRT / cuda-python error paths as the bindings report them ------------------------------
def test_fake_graph_instantiate_failure_falls_back(fakes, fake_plan):
    cu = fakes.cudart
    cu.instantiate_error = Err.cudaErrorStreamCaptureInvalidated
    with TrtEngine(fake_plan, use_cuda_graph=True) as eng:
        f = _feeds(2)
        with pytest.warns(UserWarning, match="does not instantiate"):
            np.testing.assert_allclose(eng.infer(f)["y"], _expected(f), rtol=1e-5, atol=1e-5)
        assert cu.graphs_alive == 0  # the captured graph was destroyed, nothing half-kept
        for batch in (2, 3):
            f = _feeds(batch)
            np.testing.assert_allclose(eng.infer(f)["y"], _expected(f), rtol=1e-5, atol=1e-5)
        assert cu.captures == 1 and cu.launches == 0  # no capture retried: plain execution


def test_fake_infer_shapes_error_is_one_line(fakes, fake_plan):
    with TrtEngine(fake_plan) as eng:
        eng.engine.infer_shapes_error = True
        with pytest.raises(MonkeyError, match=r"cannot infer the output shapes for inputs x \[2, 8\], s \[4\]") as ei:
            eng.infer(_feeds(2))
        assert "\n" not in str(ei.value)
        eng.engine.infer_shapes_error = False
        f = _feeds(2)
        np.testing.assert_allclose(eng.infer(f)["y"], _expected(f), rtol=1e-5, atol=1e-5)


def test_fake_build_rejects_inconsistent_profile(fakes, tmp_path, monkeypatch):
    onnx_path = _tiny_onnx(tmp_path / "tiny.onnx")
    monkeypatch.setattr(BuildConfig, "input_shapes", lambda self, desc, dims: {"x": ((4, 8), (2, 8), (1, 8))})
    with pytest.raises(MonkeyError, match=r"inconsistent shape range \[4, 8\]\.\.\[1, 8\] .* of input 'x'") as ei:
        build_engine(onnx_path, tmp_path / "t.plan", TINY_DESC, ModelDims(), BuildConfig(profile=TINY_PROFILE), None)
    assert "\n" not in str(ei.value) and not (tmp_path / "t.plan").exists()
