"""TensorRT backend. Without TensorRT/GPU: clean refusals, cache keys, build configs, profiles, and the
whole build/run control flow against honest fakes. With both (marked gpu): build a tiny plan and run it."""

from __future__ import annotations

import ctypes
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
from monkey_trt.engine.trt import engine_dir as trt_engine_dir
from monkey_trt.engine.trt import memory as trt_memory
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
    plan_header,
    set_plan_header,
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
        {"precision": "int4"},
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


def _tiny_onnx(path: Path | None, half: bool = False, extra: bool = False):
    """y = (x @ W + b) * s: x [B, 8] dynamic (in the descriptor), s [4] static (not in it).

    half: y is float16 (a Cast at the end), as in a strongly typed fp16 graph's outputs.
    extra: a second output m = x @ W [B, 4] (like the UNet's ip_attn_map next to noise_pred)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8])
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16 if half else TensorProto.FLOAT, ["B", 4])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "bias"], ["z"]),
             helper.make_node("Mul", ["z", "s"], ["y32" if half else "y"])]
    if half:
        nodes.append(helper.make_node("Cast", ["y32"], ["y"], to=TensorProto.FLOAT16))
    outs = [y]
    if extra:
        nodes.append(helper.make_node("Identity", ["xw"], ["m"]))
        outs.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, ["B", 4]))
    graph = helper.make_graph(nodes, "tiny", [x, s], outs, initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(BIAS, "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if path is None:
        return model
    onnx.save(model, str(path))
    return path


def _feeds(batch: int) -> dict[str, np.ndarray]:
    return {"x": RNG.standard_normal((batch, 8)).astype(np.float32), "s": RNG.standard_normal((4,)).astype(np.float32)}


@functools.lru_cache(maxsize=None)
def _session(half: bool, extra: bool = False):
    import onnxruntime as ort

    return ort.InferenceSession(_tiny_onnx(None, half=half, extra=extra).SerializeToString(), providers=["CPUExecutionProvider"])


def _expected(f, half: bool = False, name: str = "y") -> np.ndarray:
    """The tiny graph's output from ONNX Runtime: an executor independent of the engine under test and its fakes."""
    return _session(half, name == "m").run([name], f)[0]


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
    """Static inputs (bound once, on the device) give the same results as full feeds, at every shape."""
    with TrtEngine(tiny_plan, use_cuda_graph=graph) as eng:
        for batch in (2, 2, 3, 1):
            x = _feeds(batch)["x"]
            fixed = eng.bind_static({"x": x})
            for _ in range(3):
                s = _feeds(1)["s"]
                np.testing.assert_array_equal(eng.infer({"s": s}, static=fixed)["y"], eng.infer({"x": x, "s": s})["y"])
                np.testing.assert_allclose(eng.infer({"s": s}, static=fixed)["y"], _expected({"x": x, "s": s}), rtol=1e-5, atol=1e-5)
            fixed.release()


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
def _install_fakes(monkeypatch, version: str = "11.4.0.106"):
    pytest.importorskip("polygraphy.backend.trt")
    cudart = FakeCudart()
    fake_trt = fake_tensorrt(cudart, version)
    log: list = []
    monkeypatch.setattr(trt_lib, "require_tensorrt", lambda: fake_trt)
    monkeypatch.setattr(trt_cuda, "require_cudart", lambda: cudart)
    monkeypatch.setattr(trt_build, "require_polygraphy", lambda: fake_polygraphy(fake_trt, log))
    monkeypatch.setattr(trt_lib, "_LOGGERS", {})
    return SimpleNamespace(trt=fake_trt, cudart=cudart, polygraphy_calls=log)


@pytest.fixture
def fakes(monkeypatch):
    return _install_fakes(monkeypatch)


def _build(tmp_path, half=False, name="tiny", extra=False, **cfg):
    onnx_path = _tiny_onnx(tmp_path / f"{name}.onnx", half=half, extra=extra)
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
        assert n_dev == 3 * 3 + 1 and len(cu.host) == 3 * 3  # per shape set: a device + a pinned buffer per tensor; + activations
        assert eng.shape_sets == [{"x": (b, 8), "s": (4,)} for b in (2, 3, 1)]
        f = _feeds(2)  # a shape seen before: its buffers (and graph) reused, nothing allocated
        np.testing.assert_allclose(eng.infer(f)["y"], _expected(f), rtol=1e-5, atol=1e-5)
        assert len(cu.dev) == n_dev and eng.engine.contexts == 3
    if graph:
        assert cu.captures == 3  # batch 2, 3, 1: one capture per shape, kept
        assert cu.launches == 4  # replays of batch 2 (x3) and batch 3 (x1)
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
        assert np.isnan(eng.infer(g)["y"]).all()  # the host buffer holds nothing valid yet
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
    with pytest.raises(EngineDirError, match=rf"run `monkey-trt build --engine-dir {tmp_path} --precision fp32 --force`") as ei:
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
    return SimpleNamespace(networks=nets, dims=ModelDims(), profile=TINY_PROFILE, precisions=precisions, path=tiny.path,
                           export_command=lambda root, p: f"monkey-trt export --out {root} --base tiny --precision {p}")


def test_fake_plan_selection_by_full_key(fakes, tmp_path, monkeypatch):
    manifest = _networks_manifest(tmp_path)
    monkeypatch.setattr(trt_build, "_profile_shapes", lambda onnx_path, desc, dims, cfg, max_images=1: {"x": ((1, 8), (2, 8), (4, 8)), "s": ((4,),) * 3})
    with pytest.raises(EngineDirError, match=r"no fp16 TensorRT plans .* run `monkey-trt build --engine-dir .* --precision fp16`") as ei:
        trt_engine_dir.find_plan_dir(tmp_path, manifest, "fp16")
    assert "\n" not in str(ei.value)
    fp32 = build_engine_dir(tmp_path, manifest, BuildConfig(profile=TINY_PROFILE))
    fp16 = build_engine_dir(tmp_path, manifest, BuildConfig(profile=TINY_PROFILE, precision="fp16"))
    (fp32 / "build.json").touch()  # the newest: must not matter
    assert trt_engine_dir.find_plan_dir(tmp_path, manifest, "fp16") == fp16
    assert trt_engine_dir.find_plan_dir(tmp_path, manifest, "fp32") == fp32
    # a non-default build (static shapes) is found when it is the only one for the key's other parts
    static = build_engine_dir(tmp_path, manifest, BuildConfig(profile=TINY_PROFILE, precision="fp16", static_shapes=True))
    assert trt_engine_dir.find_plan_dir(tmp_path, manifest, "fp16") == fp16  # the default build wins
    import shutil

    shutil.rmtree(fp16)
    assert trt_engine_dir.find_plan_dir(tmp_path, manifest, "fp16") == static
    # another TensorRT version or GPU: none of these plans
    monkeypatch.setattr(fakes.trt, "__version__", "11.5.0.1")
    with pytest.raises(EngineDirError, match="TensorRT 11.5.0.1"):
        trt_engine_dir.find_plan_dir(tmp_path, manifest, "fp32")
    with pytest.raises(EngineDirError, match="export --out .* --precision fp16"):
        trt_engine_dir.find_plan_dir(tmp_path, _networks_manifest(tmp_path, precisions=("fp32",)), "fp16")


# -- static inputs (bind_static): owned by the caller's handle, on the device -------------------------
def _dev_ptrs(eng, name: str) -> set[int]:
    """Device pointers of input/output `name` in every shape set of `eng`."""
    return {ss.dev[name].ptr for ss in eng._sets.values()}


def _handle_ptrs(handle, name: str) -> set[int]:
    return {handle.device[name].ptr} if name in handle.device else set()


@pytest.mark.parametrize("graph", [False, True])
def test_fake_static_inputs_stay_on_the_device(fakes, fake_plan, graph):
    """bind_static uploads once into the handle's buffers; calls copy them device-to-device (once per handle and
    shape set), never host-to-device again; the per-call input goes host-to-device every call."""
    cu = fakes.cudart
    with TrtEngine(fake_plan, use_cuda_graph=graph) as eng:
        x = _feeds(2)["x"]
        fixed = eng.bind_static({"x": x})
        assert cu.count("H2D", _handle_ptrs(fixed, "x")) == 1 and set(fixed.device) == {"x"}
        cu.copies.clear()
        for _ in range(5):
            s = _feeds(1)["s"]
            np.testing.assert_allclose(eng.infer({"s": s}, static=fixed)["y"], _expected({"x": x, "s": s}), rtol=1e-5, atol=1e-5)
        assert cu.count("H2D", _dev_ptrs(eng, "x") | _handle_ptrs(fixed, "x")) == 0  # never from the host again
        assert cu.count("D2D", _dev_ptrs(eng, "x")) == 1  # into the shape set's buffer, once
        assert cu.count("H2D", _dev_ptrs(eng, "s")) == 5
        assert all("x" not in ss.host for ss in eng._sets.values())  # no pinned staging for an input always bound
        assert (cu.captures, cu.launches) == ((1, 4) if graph else (0, 0))
        # a new handle (next session), same shape: uploaded once, copied in once, the graph kept
        cu.copies.clear()
        x2 = _feeds(2)["x"]
        fixed2 = eng.bind_static({"x": x2})
        for _ in range(3):
            s = _feeds(1)["s"]
            np.testing.assert_allclose(eng.infer({"s": s}, static=fixed2)["y"], _expected({"x": x2, "s": s}), rtol=1e-5, atol=1e-5)
        assert cu.count("H2D", _handle_ptrs(fixed2, "x")) == 1 and cu.count("D2D", _dev_ptrs(eng, "x")) == 1
        assert (cu.captures, cu.launches) == ((1, 7) if graph else (0, 0))
        fixed.release()
        assert fixed.device == {} and fixed.released
    assert cu.dev == {} and cu.host == {} and cu.graphs_alive == 0 and fixed2.device == {}  # deactivate freed the handles' copies


@pytest.mark.parametrize("graph", [False, True])
def test_fake_static_inputs_match_plain_feeds(fakes, fake_plan, graph):
    with TrtEngine(fake_plan, use_cuda_graph=graph) as eng, TrtEngine(fake_plan, use_cuda_graph=graph) as plain:
        for batch in (2, 2, 4, 1):
            f = _feeds(batch)
            fixed = eng.bind_static({"s": f["s"]})
            for _ in range(2):
                x = _feeds(batch)["x"]
                np.testing.assert_array_equal(eng.infer({"x": x}, static=fixed)["y"], plain.infer({"x": x, "s": f["s"]})["y"])
            fixed.release()


def test_fake_static_inputs_validation_and_override(fakes, fake_plan):
    cu = fakes.cudart
    s1, s2 = _feeds(1)["s"], _feeds(1)["s"]
    with TrtEngine(fake_plan) as eng, TrtEngine(fake_plan, name="other") as other:
        with pytest.raises(MonkeyError, match="unknown input"):
            eng.bind_static({"z": s1})
        with pytest.raises(MonkeyError, match="dtype float64"):
            eng.bind_static({"s": s1.astype(np.float64)})
        with pytest.raises(MonkeyError, match=r"shape \(3,\)"):
            eng.bind_static({"s": s1[:3]})
        fixed = eng.bind_static({"s": s1})
        x = _feeds(2)["x"]
        np.testing.assert_allclose(eng.infer({"x": x}, static=fixed)["y"], _expected({"x": x, "s": s1}), rtol=1e-5, atol=1e-5)
        # a feed overrides the static value for that call; the static one is copied in again afterwards (on the device)
        cu.copies.clear()
        np.testing.assert_allclose(eng.infer({"x": x, "s": s2}, static=fixed)["y"], _expected({"x": x, "s": s2}), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(eng.infer({"x": x}, static=fixed)["y"], _expected({"x": x, "s": s1}), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(eng.infer({"x": x}, static=fixed)["y"], _expected({"x": x, "s": s1}), rtol=1e-5, atol=1e-5)
        assert cu.count("H2D", _dev_ptrs(eng, "s")) == 1 and cu.count("D2D", _dev_ptrs(eng, "s")) == 1
        assert cu.count("H2D", _dev_ptrs(eng, "x")) == 3
        with pytest.raises(MonkeyError, match="missing input.*'x'"):
            eng.infer({}, static=fixed)
        with pytest.raises(MonkeyError, match="must be a dict"):
            eng.infer([x])  # type: ignore[arg-type]
        with pytest.raises(MonkeyError, match="missing input.*'s'"):
            eng.infer({"x": x})  # no handle: nothing static
        with pytest.raises(MonkeyError, match="this runner's bind_static"):
            other.infer({"x": x}, static=fixed)  # another runner's handle
        fixed.release()
        with pytest.raises(MonkeyError, match="not be released"):
            eng.infer({"x": x}, static=fixed)

    # bound before activate(): kept on the host, uploaded on first use; again after a deactivate/activate cycle
    eng = TrtEngine(fake_plan)
    fixed = eng.bind_static({"s": s2})
    assert fixed.device == {}
    for _ in range(2):
        cu.copies.clear()
        with eng:
            for _ in range(3):
                np.testing.assert_allclose(eng.infer({"x": x}, static=fixed)["y"], _expected({"x": x, "s": s2}), rtol=1e-5, atol=1e-5)
            assert cu.count("H2D", _handle_ptrs(fixed, "s")) == 1 and cu.count("H2D", _dev_ptrs(eng, "x")) == 3
        assert fixed.device == {} and not fixed.released
    assert cu.dev == {} and cu.host == {}


# -- issue: graphs per shape, kept across generations (pass batching: UNet batch 2 then 1 every generation) --
@pytest.mark.parametrize("graph", [False, True])
def test_fake_graph_per_shape_survives_batch_changes(fakes, fake_plan, graph):
    """Batch 2 -> 1 -> 2 -> ...: one context, buffer set and graph per shape, captured once and replayed."""
    cu = fakes.cudart
    with TrtEngine(fake_plan, use_cuda_graph=graph) as eng:
        for i in range(20):
            f = _feeds(2 if i % 2 == 0 else 1)
            np.testing.assert_allclose(eng.infer(f)["y"], _expected(f), rtol=1e-5, atol=1e-5)
        assert cu.captures == (2 if graph else 0) and cu.launches == (18 if graph else 0)
        assert cu.graphs_alive == (4 if graph else 0)  # graph + instance per shape, none dropped
        assert eng.engine.contexts == 2 and len(eng.shape_sets) == 2


@pytest.mark.parametrize("static_name", ["x", "s"])  # batch-shaped (like the text embeddings) or not (like ip_scale)
def test_fake_soak_captures_one_graph_per_shape(fakes, fake_plan, static_name):
    """50 generations, each: a batch-2 session then a batch-1 session, each with a new static handle."""
    cu = fakes.cudart
    with TrtEngine(fake_plan, use_cuda_graph=True) as eng:
        allocated = None
        for gen in range(50):
            for batch in (2, 1):
                f = _feeds(batch)
                fixed = eng.bind_static({static_name: f[static_name]})
                dyn = "s" if static_name == "x" else "x"
                for _step in range(3):
                    feed = {dyn: _feeds(batch)[dyn]}
                    out = eng.infer(feed, static=fixed, outputs=("y",))
                    np.testing.assert_allclose(out["y"], _expected({**feed, static_name: f[static_name]}), rtol=1e-5, atol=1e-5)
                fixed.release()
            if gen == 0:
                allocated = len(cu.dev)
            assert len(cu.dev) == allocated  # no growth: handles' buffers freed on release, shape sets kept
        assert cu.captures == 2 and len(eng.shape_sets) == 2 and eng.engine.contexts == 2
        assert cu.launches == 50 * 2 * 3 - 2


@pytest.mark.parametrize("graph", [False, True])
def test_fake_two_live_handles_never_interfere(fakes, fake_plan, graph):
    """Two sessions interleaved (A, B, A, B, and a third of another shape) give exactly their solo results."""
    cu = fakes.cudart
    xa, xb, xc = _feeds(2)["x"], _feeds(2)["x"], _feeds(1)["x"]
    steps = [_feeds(1)["s"] for _ in range(4)]
    with TrtEngine(fake_plan, use_cuda_graph=graph) as solo:
        want = {}
        for tag, x in (("a", xa), ("b", xb), ("c", xc)):
            h = solo.bind_static({"x": x})
            want[tag] = [solo.infer({"s": s}, static=h)["y"] for s in steps]
            h.release()
    captured_solo = cu.captures
    with TrtEngine(fake_plan, use_cuda_graph=graph) as eng:
        ha, hb, hc = eng.bind_static({"x": xa}), eng.bind_static({"x": xb}), eng.bind_static({"x": xc})
        assert not (_handle_ptrs(ha, "x") & _handle_ptrs(hb, "x"))  # each handle owns its device copy
        got = {"a": [], "b": [], "c": []}
        for s in steps:
            for tag, h in (("a", ha), ("b", hb), ("c", hc), ("a", ha)):
                got[tag].append(eng.infer({"s": s}, static=h)["y"])
        for tag in "abc":
            expect = want[tag] if tag != "a" else [y for y in want["a"] for _ in range(2)]
            for g, w in zip(got[tag], expect):
                np.testing.assert_array_equal(g, w)
        if graph:
            assert cu.captures - captured_solo == 2  # batch 2 and 1; both sessions of batch 2 replay the same graph
        # a handle released mid-way: the others (and the graph) keep working, nothing points at its memory
        ha.release()
        for i, s in enumerate(steps):
            np.testing.assert_array_equal(eng.infer({"s": s}, static=hb)["y"], want["b"][i])
            np.testing.assert_array_equal(eng.infer({"s": s}, static=hc)["y"], want["c"][i])


def test_fake_graph_does_not_bake_in_handle_addresses(fakes, fake_plan):
    """The replayed graph reads the shape set's own buffers: freeing a session's copies never breaks a replay."""
    cu = fakes.cudart
    with TrtEngine(fake_plan, use_cuda_graph=True) as eng:
        for _session in range(4):
            x = _feeds(2)["x"]
            h = eng.bind_static({"x": x})
            handle_mem = _handle_ptrs(h, "x")
            for _ in range(2):
                s = _feeds(1)["s"]
                np.testing.assert_allclose(eng.infer({"s": s}, static=h)["y"], _expected({"x": x, "s": s}), rtol=1e-5, atol=1e-5)
            h.release()
            assert not (handle_mem & set(cu.dev))  # freed right away
        assert cu.captures == 1


# -- issue: copy back only what is asked; one activation buffer per pipeline; memory by TensorRT's numbers --
def test_fake_outputs_copied_back_only_when_asked(fakes, tmp_path):
    cu = fakes.cudart
    plan = _build(tmp_path, extra=True)
    with TrtEngine(plan, use_cuda_graph=True) as eng:
        assert [s.name for s in eng.output_specs] == ["y", "m"]
        f = _feeds(2)
        both = eng.infer(f)
        assert set(both) == {"y", "m"}
        np.testing.assert_allclose(both["m"], _expected(f, name="m"), rtol=1e-5, atol=1e-5)
        cu.copies.clear()
        for _ in range(3):
            f = _feeds(2)
            out = eng.infer(f, outputs=("y",))
            assert set(out) == {"y"}
            np.testing.assert_allclose(out["y"], _expected(f), rtol=1e-5, atol=1e-5)
        assert cu.count("D2H", _dev_ptrs(eng, "m")) == 0 and cu.count("D2H", _dev_ptrs(eng, "y")) == 3
        out = eng.infer(f, outputs=("m",))
        assert set(out) == {"m"}
        np.testing.assert_allclose(out["m"], _expected(f, name="m"), rtol=1e-5, atol=1e-5)
        assert eng.infer(f, outputs=()) == {}
        with pytest.raises(MonkeyError, match="unknown output"):
            eng.infer(f, outputs=("noise",))


def _open_pipeline(fakes, tmp_path, monkeypatch, sizes: dict[str, int]):
    """open_trt_runners over four tiny networks whose contexts need `sizes` bytes of activation memory."""
    manifest = _networks_manifest(tmp_path)
    monkeypatch.setattr(trt_build, "_profile_shapes", lambda onnx_path, desc, dims, cfg, max_images=1: {"x": ((1, 8), (2, 8), (4, 8)), "s": ((4,),) * 3})
    build_engine_dir(tmp_path, manifest, BuildConfig(profile=TINY_PROFILE))
    real = fakes.trt.Runtime.deserialize_cuda_engine
    order = iter(NETWORKS)

    def deserialize(self, data):  # the plans are alike: give each network its own activation need
        engine = real(self, data)
        engine.required_memory = sizes[next(order)]
        return engine

    monkeypatch.setattr(fakes.trt.Runtime, "deserialize_cuda_engine", deserialize)
    return trt_engine_dir.open_trt_runners(tmp_path, manifest, cuda_graph=True)


def test_fake_pipeline_shares_one_activation_buffer(fakes, tmp_path, monkeypatch):
    """Every network's contexts use one user-managed buffer, sized by the largest: peak = max, not the sum."""
    cu = fakes.cudart
    sizes = dict(zip(NETWORKS, (3 << 20, 1 << 20, 5 << 20, 2 << 20)))
    runners = _open_pipeline(fakes, tmp_path, monkeypatch, sizes)
    try:
        for r in runners.values():
            r.activate()
        for _gen in range(3):
            for r in runners.values():
                for batch in (2, 1):
                    f = _feeds(batch)
                    np.testing.assert_allclose(r.infer(f)["y"], _expected(f), rtol=1e-5, atol=1e-5)
        assert cu.internal == {}  # TensorRT allocated no activation memory of its own
        assert cu.peak_bytes < sum(sizes.values())
        assert len({id(r.activation_memory) for r in runners.values()}) == 1
        pool = runners["unet"].activation_memory
        assert pool.nbytes == pool.required == 5 << 20
        io = sum(r.memory()["io_bytes"] for r in runners.values())
        assert cu.peak_bytes <= (5 << 20) + io < sum(sizes.values())
        report = trt_engine_dir.memory_report(runners)
        assert report["activation_shared_bytes"] == report["activation_allocated_bytes"] == 5 << 20
        assert report["activation_sum_bytes"] == sum(sizes.values())
        assert {n: m["activation_bytes"] for n, m in report["networks"].items()} == sizes
    finally:
        for r in runners.values():
            r.deactivate()
    assert cu.dev == {} and cu.host == {} and pool.nbytes == 0


def test_fake_activation_memory_grows_and_rebinds(fakes, tmp_path):
    """An engine joining later with a larger need: one bigger buffer, every context re-pointed, graphs re-captured."""
    cu = fakes.cudart
    small, big = _build(tmp_path, name="small"), _build(tmp_path, name="big")
    set_plan_header(small, device_memory=1 << 16)
    set_plan_header(big, device_memory=1 << 18)
    pool = trt_memory.ActivationMemory()
    with TrtEngine(small, use_cuda_graph=True, activation_memory=pool) as a:
        f = _feeds(2)
        np.testing.assert_allclose(a.infer(f)["y"], _expected(f), rtol=1e-5, atol=1e-5)
        assert pool.nbytes == 1 << 16 and cu.captures == 1
        with TrtEngine(big, use_cuda_graph=True, activation_memory=pool) as b:
            assert pool.nbytes == 1 << 18
            for eng in (a, b, a):
                f = _feeds(2)
                np.testing.assert_allclose(eng.infer(f)["y"], _expected(f), rtol=1e-5, atol=1e-5)
            assert cu.captures == 3  # a's graph baked the old buffer: captured again; b's first
        assert pool.nbytes == 1 << 18  # b detached: a still uses the buffer
    assert pool.nbytes == 0 and cu.dev == {}


@pytest.mark.parametrize("version", ["10.0.1", "10.8.0.43", "11.4.0.106"])
def test_fake_context_memory_by_tensorrt_version(monkeypatch, tmp_path, version):
    """10.0: device_memory_size + the device_memory setter; 10.1+: the v2 size + set_device_memory(ptr, size);
    TOTAL_WEIGHTS_SIZE where the version has get_engine_stat (10.14+)."""
    fk = _install_fakes(monkeypatch, version)
    plan = _build(tmp_path)
    with TrtEngine(plan, use_cuda_graph=True) as eng:
        for batch in (2, 1, 2):
            f = _feeds(batch)
            np.testing.assert_allclose(eng.infer(f)["y"], _expected(f), rtol=1e-5, atol=1e-5)
        mem = eng.memory()
        header = plan_header(plan)
        assert mem["activation_bytes"] == header["device_memory"] == eng.activation_memory.nbytes
        assert mem["plan_bytes"] == plan.stat().st_size
        assert mem["weights_bytes"] == (header["weights"] if version.startswith("11.") else None)
        assert mem["io_bytes"] == sum(ss.io_bytes for ss in eng._sets.values()) > 0
    assert fk.cudart.internal == {} and fk.cudart.dev == {}


def test_fake_runner_properties(fakes, tmp_path, fake_plan):
    with TrtEngine(fake_plan) as eng:
        assert (eng.device, eng.providers, eng.max_batch) == ("cuda", ("TensorRT",), 4)
    static = _build(tmp_path, name="static", static_shapes=True)
    assert TrtEngine(static).max_batch == 2  # a static-shape plan runs its one (opt) batch


def test_fake_shape_sets_are_bounded(fakes, fake_plan):
    """At most max_shapes shape sets (context + buffers + graph); the least recently used one goes first."""
    cu = fakes.cudart
    with TrtEngine(fake_plan, use_cuda_graph=True, max_shapes=2) as eng:
        for batch in (1, 2, 1, 3, 1):
            f = _feeds(batch)
            np.testing.assert_allclose(eng.infer(f)["y"], _expected(f), rtol=1e-5, atol=1e-5)
        assert [s["x"][0] for s in eng.shape_sets] == [3, 1] and cu.graphs_alive == 4
        assert cu.captures == 3  # 1, 2, 3 (batch 2 was dropped when 3 came; 1 stayed in use)
    with pytest.raises(MonkeyError, match="max_shapes"):
        TrtEngine(fake_plan, max_shapes=0)


def test_fake_doctor_reports_tensorrt_memory(fakes, tmp_path, monkeypatch):
    from monkey_trt.commands import doctor

    sizes = dict(zip(NETWORKS, (3 << 20, 1 << 20, 5 << 20, 2 << 20)))
    _open_pipeline(fakes, tmp_path, monkeypatch, sizes)
    manifest = _networks_manifest(tmp_path)
    rows = {r.name: r for r in doctor.tensorrt_memory_rows(tmp_path, manifest)}
    assert set(rows) == {"tensorrt memory"} and rows["tensorrt memory"].ok is True
    detail = rows["tensorrt memory"].detail
    assert "unet" in detail and "activations shared 5.0 MiB (sum 11.0 MiB)" in detail and "\n" not in detail
    monkeypatch.setattr(trt_lib, "require_tensorrt", lambda: (_ for _ in ()).throw(trt_lib.BackendUnavailable(trt_lib.TRT_MISSING)))
    assert doctor.tensorrt_memory_rows(tmp_path, manifest) == []  # nothing to show without TensorRT


def test_fake_doctor_command_shows_the_memory_row(fakes, tmp_path, monkeypatch, capsys):
    """Issue 13: `doctor --engine-dir DIR --precision P` adds TensorRT's memory row (TensorRT, cuda-python, a GPU: faked)."""
    from monkey_trt.cli import main
    from monkey_trt.commands import doctor

    sizes = dict(zip(NETWORKS, (3 << 20, 1 << 20, 5 << 20, 2 << 20)))
    _open_pipeline(fakes, tmp_path, monkeypatch, sizes)
    manifest = _networks_manifest(tmp_path)
    seen = {}
    real_rows = doctor.tensorrt_memory_rows

    def rows(engine_dir, manifest_=None, precision="fp32"):
        seen["precision"] = precision
        return real_rows(engine_dir, manifest, precision)

    monkeypatch.setattr(doctor, "tensorrt_memory_rows", rows)
    monkeypatch.setattr(doctor, "nvidia_gpus", lambda: [doctor.GpuInfo("NVIDIA Fake", "1.0", "80 GiB", "9.0")])
    monkeypatch.setattr(doctor, "_tensorrt_row", lambda: (doctor.CheckRow("tensorrt", True, "fake"), True))
    monkeypatch.setattr(doctor, "_cuda_python_row", lambda: (doctor.CheckRow("cuda-python", True, "fake"), True))
    monkeypatch.setenv("COLUMNS", "400")
    assert main(["doctor", "--engine-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "tensorrt memory" in out and "activations shared 5.0 MiB (sum 11.0 MiB)" in out and seen["precision"] == "fp32"
    assert main(["doctor", "--engine-dir", str(tmp_path / "nope")]) == 2
    assert main(["doctor", "--engine-dir", str(tmp_path), "--precision", "fp4"]) == 2


def test_fake_bench_reports_trt_memory(fakes, tmp_path, monkeypatch):
    """Issue 13: bench's trt rows carry TensorRT's memory numbers (the JSON's trt_memory, one printed line)."""
    from types import SimpleNamespace

    from monkey_trt.bench.measure import BackendResult, Spread, memory_lines, trt_memory

    sizes = dict(zip(NETWORKS, (3 << 20, 1 << 20, 5 << 20, 2 << 20)))
    runners = _open_pipeline(fakes, tmp_path, monkeypatch, sizes)
    try:
        for r in runners.values():
            r.activate()
        mem = trt_memory(SimpleNamespace(runners=runners))
        assert mem["activation_shared_bytes"] == 5 << 20 and set(mem["networks"]) == set(NETWORKS)
        assert trt_memory(SimpleNamespace(runners={})) is None and trt_memory(object()) is None
        spread = Spread(1.0, 1.0, 1.0)
        rows = [BackendResult(name, {}, 1.0, 1.0, spread, 1.0, {}, [], spread, 1.0, 1.0, None, 0, "", trt_memory=m)
                for name, m in (("ort", None), ("trt", mem))]
        lines = memory_lines(rows)
        assert len(lines) == 1 and lines[0].startswith("trt memory: ") and "activations shared 5.0 MiB (sum 11.0 MiB)" in lines[0]
    finally:
        for r in runners.values():
            r.deactivate()


# -- the fakes are strict where TensorRT and CUDA are ------------------------------------------------
def test_fake_tensorrt_refuses_what_tensorrt_refuses(fakes, fake_plan):
    trt, cu = fakes.trt, fakes.cudart
    engine = trt.Runtime(None).deserialize_cuda_engine(fake_plan.read_bytes())
    ctx = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
    _err, stream = cu.cudaStreamCreate()
    assert ctx.set_input_shape("x", (5, 8)) is False and ctx.set_input_shape("x", (2, 8, 1)) is False  # outside profile / rank
    assert ctx.set_input_shape("x", (2, 8)) and ctx.set_input_shape("s", (4,))
    bufs = {n: cu.cudaMalloc(64)[1] for n in ("x", "s")}
    for n, p in bufs.items():
        ctx.set_tensor_address(n, p)
    assert ctx.execute_async_v3(int(stream)) is False and "address" in trt.log[-1]  # y has no address
    ctx.set_tensor_address("y", cu.cudaMalloc(32)[1])
    assert ctx.execute_async_v3(int(stream)) is False and "device memory" in trt.log[-1]  # user-managed memory not set
    small = cu.cudaMalloc(engine.required_memory // 2)[1]
    ctx.set_device_memory(small, engine.required_memory // 2)
    assert ctx.execute_async_v3(int(stream)) is False  # too small
    mem = cu.cudaMalloc(engine.required_memory)[1]
    with pytest.raises(AssertionError, match="aligned"):
        ctx.set_device_memory(mem + 8, engine.required_memory)
    ctx.set_device_memory(mem, engine.required_memory)
    cu.cudaStreamBeginCapture(stream, cu.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal)
    assert ctx.execute_async_v3(int(stream)) is False  # capture before the enqueue that updates the internal state
    _err, g = cu.cudaStreamEndCapture(stream)
    assert ctx.execute_async_v3(int(stream)) is True  # warm-up
    cu.cudaStreamBeginCapture(stream, cu.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal)
    assert ctx.execute_async_v3(int(stream)) is True
    _err, g = cu.cudaStreamEndCapture(stream)
    _err, exe = cu.cudaGraphInstantiate(g, 0)
    cu.cudaStreamSynchronize(stream)
    ctx.set_input_shape("x", (1, 8))  # same context, other shape: its graph is no longer valid
    cu.cudaGraphLaunch(exe, stream)
    with pytest.raises(AssertionError, match="shapes changed"):
        cu.cudaStreamSynchronize(stream)
    with pytest.raises(AttributeError):
        ctx.device_memory  # write-only, as in the bindings  # noqa: B018


def test_fake_cudart_host_reads_wait_for_the_queuing_stream(fakes):
    cu = fakes.cudart
    _e, s1 = cu.cudaStreamCreate()
    _e, s2 = cu.cudaStreamCreate()
    _e, d = cu.cudaMalloc(16)
    _e, h_in = cu.cudaMallocHost(16)
    _e, h = cu.cudaMallocHost(16)
    src = np.arange(4, dtype=np.float32)
    np.ctypeslib.as_array((ctypes.c_uint8 * 16).from_address(h_in))[:] = src.view(np.uint8)
    pinned = np.ctypeslib.as_array((ctypes.c_uint8 * 16).from_address(h))
    K = cu.cudaMemcpyKind
    cu.cudaMemcpyAsync(d, h_in, 16, K.cudaMemcpyHostToDevice, s1)
    cu.cudaMemcpyAsync(h, d, 16, K.cudaMemcpyDeviceToHost, s1)
    assert np.isnan(pinned.view(np.float32)).all()  # nothing there before the sync
    cu.cudaStreamSynchronize(s2)  # another stream: still nothing
    assert np.isnan(pinned.view(np.float32)).all()
    cu.cudaStreamSynchronize(s1)
    np.testing.assert_array_equal(pinned.view(np.float32), src)
    with pytest.raises(AssertionError, match="page-locked"):
        cu.cudaMemcpyAsync(d, src.ctypes.data, 16, K.cudaMemcpyHostToDevice, s1)  # pageable numpy memory
    with pytest.raises(AssertionError, match="not live device memory"):
        cu.cudaMemcpyAsync(d, d, 32, K.cudaMemcpyDeviceToDevice, s1)  # past the allocation
    cu.cudaMemcpyAsync(h, d, 16, K.cudaMemcpyDeviceToHost, s1)
    cu.cudaFree(d)
    with pytest.raises(AssertionError, match="not live device memory"):
        cu.cudaStreamSynchronize(s1)  # the copy runs after its source was freed
    assert d % 256 == 0


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
    monkeypatch.setattr(BuildConfig, "input_shapes", lambda self, desc, dims, max_images=1: {"x": ((4, 8), (2, 8), (1, 8))})
    with pytest.raises(MonkeyError, match=r"inconsistent shape range \[4, 8\]\.\.\[1, 8\] .* of input 'x'") as ei:
        build_engine(onnx_path, tmp_path / "t.plan", TINY_DESC, ModelDims(), BuildConfig(profile=TINY_PROFILE), None)
    assert "\n" not in str(ei.value) and not (tmp_path / "t.plan").exists()


# -- issue 22: the UNet's IP-image axis (ip_tokens [B, N*T, D], ip_mask [B, N, H, W]): shape sets, buffers, graphs per N --
class _IpAxisDesc(NetworkDesc):
    """A descriptor whose profile has a second dynamic axis like the UNet's N (ranges as i22's descriptors give them)."""

    def profile_shapes(self, profile, dims, max_images=1):
        return {"tokens": ((1, 4, 2), (1, 4, 2), (2, 4 * max_images, 2)), "mask": ((1, 1, 3), (1, 1, 3), (2, max_images, 3))}


def _ip_axis_onnx(path: Path) -> Path:
    """tokens [B, N*4, 2], mask [B, N, 3] -> y = sum_k tokens + sum mask [B, 2]; m = 2 * tokens [B, N*4, 2] (the map)."""
    tok = helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["B", "K", 2])
    msk = helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["B", "N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 2])
    m = helper.make_tensor_value_info("m", TensorProto.FLOAT, ["B", "K", 2])
    nodes = [helper.make_node("ReduceSum", ["tokens", "ax1"], ["ts"], keepdims=0),  # [B, 2]
             helper.make_node("ReduceSum", ["mask", "ax12"], ["ms"], keepdims=0),  # [B]
             helper.make_node("Unsqueeze", ["ms", "ax1"], ["ms1"]),  # [B, 1]
             helper.make_node("Add", ["ts", "ms1"], ["y"]),
             helper.make_node("Mul", ["tokens", "two"], ["m"])]
    inits = [numpy_helper.from_array(np.array([1], np.int64), "ax1"), numpy_helper.from_array(np.array([1, 2], np.int64), "ax12"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    model = helper.make_model(helper.make_graph(nodes, "ip_axis", [tok, msk], [y, m], initializer=inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _ip_feeds(batch: int, n: int) -> dict[str, np.ndarray]:
    return {"tokens": RNG.standard_normal((batch, 4 * n, 2)).astype(np.float32), "mask": RNG.random((batch, n, 3)).astype(np.float32)}


@pytest.mark.parametrize("graph", [False, True])
def test_fake_ip_image_axis_has_its_own_shape_sets_and_graphs(fakes, tmp_path, graph):
    """N = 1, 2, 3 IP images (and batch 2): one context, buffer set and CUDA graph per (B, N), kept; outputs right."""
    import onnxruntime as ort

    desc = _IpAxisDesc("ip_axis", inputs=(TensorDesc("tokens", "float32", ("B", "K", 2)), TensorDesc("mask", "float32", ("B", "N", 3))),
                       outputs=(TensorDesc("y", "float32", ("B", 2)), TensorDesc("m", "float32", ("B", "K", 2))))
    onnx_path = _ip_axis_onnx(tmp_path / "ip_axis.onnx")
    plan = build_engine(onnx_path, tmp_path / "ip_axis.plan", desc, ModelDims(),
                        BuildConfig(profile=TINY_PROFILE, workspace_gib=1, builder_optimization_level=1), None, max_images=3).plan
    (prof,) = dict(fakes.polygraphy_calls)["CreateConfig"]["profiles"]
    assert (prof["tokens"].min, prof["tokens"].max, prof["mask"].max) == ((1, 4, 2), (2, 12, 2), (2, 3, 3))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    order = [(1, 1), (1, 2), (1, 1), (1, 2), (2, 2), (1, 3), (1, 2)]
    cu = fakes.cudart
    with TrtEngine(plan, use_cuda_graph=graph) as eng:
        for batch, n in order:
            f = _ip_feeds(batch, n)
            got = eng.infer(f)
            want_y, want_m = sess.run(["y", "m"], f)
            assert got["m"].shape == (batch, 4 * n, 2)
            np.testing.assert_allclose(got["y"], want_y, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(got["m"], want_m, rtol=1e-6, atol=1e-6)
        sets = {(s["tokens"], s["mask"]) for s in eng.shape_sets}
        assert sets == {((b, 4 * n, 2), (b, n, 3)) for b, n in set(order)} and eng.engine.contexts == 4
        fixed = eng.bind_static({"tokens": _ip_feeds(1, 2)["tokens"]})  # a session's IP tokens of two images
        for n_mask in (2, 2):
            f = {"mask": _ip_feeds(1, n_mask)["mask"]}
            np.testing.assert_allclose(eng.infer(f, static=fixed)["y"], sess.run(["y"], {**fixed.host, **f})[0], rtol=1e-5, atol=1e-5)
        with pytest.raises(MonkeyError, match="outside the engine profile"):
            eng.infer(_ip_feeds(1, 4))  # N = 4 > the profile's 3
        fixed.release()
    assert cu.captures == (4 if graph else 0)  # one per (B, N), replayed after
    assert cu.dev == {} and cu.host == {} and cu.graphs_alive == 0


def test_fake_plans_are_built_and_keyed_for_the_manifests_image_count(fakes, tmp_path, monkeypatch):
    """build passes the manifest's max_ip_images to every network's profile (the UNets' image axis), and plans built
    for another image count live under another key; a directory without the axis keeps its old key."""
    seen = []

    def shapes(onnx_path, desc, dims, cfg, max_images=1):
        seen.append(max_images)
        return {"x": ((1, 8), (2, 8), (4, 8)), "s": ((4,),) * 3}

    monkeypatch.setattr(trt_build, "_profile_shapes", shapes)
    old = _networks_manifest(tmp_path)
    old_key = cache_key(manifest_onnx_digest(old), BuildConfig(profile=TINY_PROFILE), "11.4.0.106", "Fake GPU 80GB", "9.0")
    five = _networks_manifest(tmp_path)
    five.max_ip_images = 5
    assert build_engine_dir(tmp_path, old, BuildConfig(profile=TINY_PROFILE)).name == old_key and set(seen) == {1}
    seen.clear()
    out = build_engine_dir(tmp_path, five, BuildConfig(profile=TINY_PROFILE))
    assert set(seen) == {5} and out.name != old_key
    assert trt_engine_dir.find_plan_dir(tmp_path, five, "fp32") == out and trt_engine_dir.find_plan_dir(tmp_path, old, "fp32").name == old_key
