"""TensorRT backend. Without TensorRT/GPU: clean refusals, cache keys, build configs, profiles.
With both (marked gpu): build a tiny plan and run it through TrtEngine."""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from monkey_trt.engine import trt as trt_mod
from monkey_trt.engine.networks import (
    ModelDims,
    NetworkDesc,
    Profile,
    ShapeRange,
    TensorDesc,
    network_descs,
)
from monkey_trt.engine.trt import (
    BuildConfig,
    TrtEngine,
    build_engine,
    build_engine_dir,
    cache_key,
    manifest_onnx_digest,
    require_cuda_device,
    require_tensorrt,
    write_bytes_atomic,
)
from monkey_trt.errors import BackendUnavailable, EngineDirError, MonkeyError

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
    assert msg == trt_mod.TRT_MISSING
    assert "\n" not in msg and "pip install 'monkey-trt[gpu]'" in msg
    assert ei.value.__cause__ is None and ei.value.__suppress_context__  # no ImportError chained into the traceback
    assert trt_mod.tensorrt_version() is None


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
    assert k.startswith(f"v{trt_mod.KEY_VERSION}-trt10.8.0.43-sm90-")
    assert "/" not in k and " " not in k


@pytest.mark.parametrize(
    "change",
    [
        {"onnx_sha256": "b" * 64},
        {"trt_version": "10.9.0.34"},
        {"device_name": "NVIDIA L40S"},
        {"compute_capability": "8.9"},
        {"build_config": BuildConfig(profile=PROFILE, fp16=False)},
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
    monkeypatch.setattr(trt_mod, "KEY_VERSION", trt_mod.KEY_VERSION + 1)
    assert cache_key(**BASE) != k


@pytest.mark.parametrize("bad", [{"onnx_sha256": ""}, {"compute_capability": "sm90"}, {"compute_capability": (9,)},
                                 {"build_config": {"fp16": True}}])
def test_cache_key_rejects_bad_ingredients(bad):
    with pytest.raises(MonkeyError):
        cache_key(**{**BASE, **bad})


def test_manifest_digest_covers_every_file():
    e = lambda d: SimpleNamespace(sha256=d)
    m1 = SimpleNamespace(networks={"unet": e({"unet.onnx": "1", "unet.onnx.data": "2"}), "vae_decoder": e({"vae_decoder.onnx": "3"})})
    m2 = SimpleNamespace(networks={"unet": e({"unet.onnx": "1", "unet.onnx.data": "X"}), "vae_decoder": e({"vae_decoder.onnx": "3"})})
    assert manifest_onnx_digest(m1) == manifest_onnx_digest(m1)
    assert manifest_onnx_digest(m1) != manifest_onnx_digest(m2)
    assert len(manifest_onnx_digest(m1)) == 64


# -- build config ---------------------------------------------------------------------------
def test_build_config_defaults_and_frozen():
    cfg = BuildConfig(profile=PROFILE)
    assert cfg.fp16 is True and cfg.static_shapes is False and cfg.tf32 is False
    assert 0 <= cfg.builder_optimization_level <= 5 and cfg.workspace_gib > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.fp16 = False  # type: ignore[misc]
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
        {"fp16": 1},
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


def test_write_bytes_atomic(tmp_path):
    p = write_bytes_atomic(tmp_path / "sub" / "x.plan", b"abc")
    assert p.read_bytes() == b"abc"
    write_bytes_atomic(p, memoryview(b"defg"))
    assert p.read_bytes() == b"defg"
    assert [f.name for f in p.parent.iterdir()] == ["x.plan"]  # no temp files left


# -- on a GPU with TensorRT -----------------------------------------------------------------
RNG = np.random.default_rng(0)
W = RNG.standard_normal((8, 4)).astype(np.float32)
BIAS = RNG.standard_normal((4,)).astype(np.float32)
TINY_DESC = NetworkDesc("tiny", inputs=(TensorDesc("x", "float32", ("B", 8)),), outputs=(TensorDesc("y", "float32", ("B", 4)),))
TINY_PROFILE = Profile(ShapeRange(1, 2, 4), ShapeRange(64, 64, 64), ShapeRange(64, 64, 64))


def _tiny_onnx(path: Path) -> Path:
    """y = (x @ W + b) * s: x [B, 8] dynamic (in the descriptor), s [4] static (not in it)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8])
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "bias"], ["z"]),
             helper.make_node("Mul", ["z", "s"], ["y"])]
    graph = helper.make_graph(nodes, "tiny", [x, s], [y], initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(BIAS, "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _feeds(batch: int) -> dict[str, np.ndarray]:
    return {"x": RNG.standard_normal((batch, 8)).astype(np.float32), "s": RNG.standard_normal((4,)).astype(np.float32)}


def _ref(f):
    return (f["x"] @ W + BIAS) * f["s"]


@pytest.fixture(scope="module")
def tiny_plan(tmp_path_factory):
    d = tmp_path_factory.mktemp("trt")
    onnx_path = _tiny_onnx(d / "tiny.onnx")
    cfg = BuildConfig(profile=TINY_PROFILE, fp16=False, workspace_gib=1, builder_optimization_level=0)
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
            np.testing.assert_allclose(out["y"], _ref(f), rtol=1e-5, atol=1e-5)
        # results belong to the caller
        f = _feeds(4)
        a = eng.infer(f)["y"]
        eng.infer(_feeds(4))
        np.testing.assert_allclose(a, _ref(f), rtol=1e-5, atol=1e-5)


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
                np.testing.assert_allclose(eng.infer({"s": s})["y"], _ref({"x": x, "s": s}), rtol=1e-5, atol=1e-5)


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
        np.testing.assert_allclose(eng.infer(f)["y"], _ref(f), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@needs_gpu
def test_damaged_plan_advises_rebuild(tmp_path):
    bad = tmp_path / "bad.plan"
    bad.write_bytes(b"\0" * 1024)
    with pytest.raises(EngineDirError, match="--force") as ei:
        TrtEngine(bad).load()
    assert "\n" not in str(ei.value)


def _tiny_manifest(tmp_path):
    """A manifest stand-in with one network, the tiny ONNX graph written into tmp_path."""
    _tiny_onnx(tmp_path / "tiny.onnx")
    sha = hashlib.sha256((tmp_path / "tiny.onnx").read_bytes()).hexdigest()
    return SimpleNamespace(
        networks={"tiny": SimpleNamespace(desc=TINY_DESC, sha256={"tiny.onnx": sha}, file="tiny.onnx")},
        dims=ModelDims(),
        path=lambda root, net: Path(root) / f"{net}.onnx",
    )


@pytest.mark.gpu
@needs_gpu
def test_build_engine_dir_skips_and_forces(tmp_path):
    manifest = _tiny_manifest(tmp_path)
    cfg = BuildConfig(profile=TINY_PROFILE, fp16=False, workspace_gib=1, builder_optimization_level=0)
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
        np.testing.assert_allclose(eng.infer(f)["y"], _ref(f), rtol=1e-5, atol=1e-5)
    with pytest.raises(MonkeyError, match="unknown network"):
        build_engine_dir(tmp_path, manifest, cfg, networks=["unet"])


# -- the same control flow against in-process fakes of tensorrt + cuda-python (runs everywhere) --
# The fakes follow the TensorRT 10 / cuda-python call conventions used by trt.py: (err, value)
# tuples, name-based tensor I/O, graphs that bake in the device addresses seen at capture time.
class _Err(enum.Enum):
    cudaSuccess = 0
    cudaErrorNoDevice = 100
    cudaErrorStreamCaptureInvalidated = 901


OK = _Err.cudaSuccess


class FakeCudart:
    cudaError_t = _Err

    class cudaMemcpyKind(enum.Enum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStreamCaptureMode(enum.Enum):
        cudaStreamCaptureModeGlobal = 0

    def __init__(self, devices: int = 1) -> None:
        self.devices, self.dev, self.host = devices, {}, {}
        self.capturing: list | None = None
        self.captures = self.launches = self.graphs_alive = 0
        self.streams = 0
        self.copies: list[tuple[str, int, int]] = []  # (kind name, device pointer, bytes) of every copy
        self.instantiate_error: _Err | None = None  # make cudaGraphInstantiate fail with this error

    def cudaGetDeviceCount(self):
        return (OK, self.devices) if self.devices else (_Err.cudaErrorNoDevice, 0)

    def cudaGetDeviceProperties(self, i):
        return OK, SimpleNamespace(name=b"Fake GPU 80GB\0\0\0", major=9, minor=0, totalGlobalMem=80 << 30)

    def cudaSetDevice(self, i):
        return (OK,)

    def _alloc(self, table, n):
        buf = np.zeros(n, np.uint8)
        table[buf.ctypes.data] = buf
        return OK, buf.ctypes.data

    def cudaMalloc(self, n):
        return self._alloc(self.dev, n)

    def cudaMallocHost(self, n):
        return self._alloc(self.host, n)

    def cudaFree(self, p):
        del self.dev[p]
        return (OK,)

    def cudaFreeHost(self, p):
        del self.host[p]
        return (OK,)

    def cudaStreamCreate(self):
        self.streams += 1
        return OK, 0xBEEF

    def cudaStreamDestroy(self, s):
        self.streams -= 1
        return (OK,)

    def cudaStreamSynchronize(self, s):
        return (OK,)

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        assert self.capturing is None, "copies are not part of the captured graph"
        assert isinstance(kind, self.cudaMemcpyKind)
        h2d = kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice
        dev_ptr = int(dst) if h2d else int(src)
        assert dev_ptr in self.dev and int(src if h2d else dst) not in self.dev  # pinned host <-> device
        self.copies.append((kind.name, dev_ptr, int(n)))
        ctypes.memmove(int(dst), int(src), n)
        return (OK,)

    def h2d_counts(self, eng) -> dict[str, int]:
        """H2D copies per tensor name since the last `copies.clear()` (by the engine's current buffers)."""
        names = {ptr: name for name, (ptr, _cap) in eng._dev.items()}
        counts: dict[str, int] = {}
        for kind, ptr, _n in self.copies:
            if kind == "cudaMemcpyHostToDevice":
                counts[names.get(ptr, "?")] = counts.get(names.get(ptr, "?"), 0) + 1
        return counts

    def cudaStreamBeginCapture(self, stream, mode):
        self.capturing = []
        return (OK,)

    def cudaStreamEndCapture(self, stream):
        ops, self.capturing = self.capturing, None
        self.captures += 1
        self.graphs_alive += 1
        return OK, SimpleNamespace(ops=ops)

    def cudaGraphInstantiate(self, graph, flags):  # cuda-python 12+: (graph, flags) -> (err, graphExec)
        assert isinstance(flags, int)
        if self.instantiate_error is not None:
            return self.instantiate_error, None
        self.graphs_alive += 1
        return OK, SimpleNamespace(ops=list(graph.ops))

    def cudaGraphLaunch(self, exe, stream):
        self.launches += 1
        for op in exe.ops:
            op()
        return (OK,)

    def cudaGraphExecDestroy(self, e):
        self.graphs_alive -= 1
        return (OK,)

    def cudaGraphDestroy(self, g):
        self.graphs_alive -= 1
        return (OK,)

    def cudaGetLastError(self):
        return (OK,)


def _fake_trt(cudart: FakeCudart):
    """A TensorRT look-alike for the tiny network y = (x @ W + b) * s."""

    class DataType(enum.Enum):
        FLOAT, HALF, INT32, INT8, BOOL, INT64, UINT8 = range(7)

    class TensorIOMode(enum.Enum):
        INPUT, OUTPUT = range(2)

    class BuilderFlag(enum.Enum):
        FP16, TF32 = range(2)

    class MemoryPoolType(enum.Enum):
        WORKSPACE = 0

    class Logger:
        ERROR, WARNING = 1, 2

        def __init__(self, sev):
            self.sev = sev

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape, self.is_shape_tensor = name, shape, False

    class Network:
        def __init__(self):
            self.inputs = []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse_from_file(self, path):
            g = onnx.load(path).graph
            for i in g.input:
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim)
                self.network.inputs.append(Tensor(i.name, dims))
            return True

    class TimingCache:
        def __init__(self, blob):
            self.blob = bytes(blob)

        def serialize(self):
            return self.blob + b"+"

    class Config:
        def __init__(self):
            self.flags, self.profiles, self.pool, self.cache = {BuilderFlag.TF32}, [], {}, None
            self.builder_optimization_level = 3

        def set_memory_pool_limit(self, pool, n):
            self.pool[pool] = n

        def set_flag(self, f):
            self.flags.add(f)

        def clear_flag(self, f):
            self.flags.discard(f)

        def add_optimization_profile(self, p):
            self.profiles.append(p)
            return len(self.profiles) - 1

        def create_timing_cache(self, blob):
            return TimingCache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class OptProfile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, mn, opt, mx):  # the binding raises RuntimeError unless min <= opt <= max
            if not (len(mn) == len(opt) == len(mx) and all(a <= b <= c for a, b, c in zip(mn, opt, mx))):
                raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
            self.shapes[name] = (tuple(mn), tuple(opt), tuple(mx))

    class Builder:
        last_config = None

        def __init__(self, logger):
            pass

        def create_network(self, flags):
            assert flags == 0
            return Network()

        def create_builder_config(self):
            Builder.last_config = Config()
            return Builder.last_config

        def create_optimization_profile(self):
            return OptProfile()

        def build_serialized_network(self, network, config):
            (p,) = config.profiles
            return memoryview(b"FAKEPLAN" + json.dumps(p.shapes).encode())

    class Context:
        def __init__(self, engine):
            self.engine, self.in_shapes, self.addr = engine, {}, {}

        def set_input_shape(self, name, shape):
            mn, _, mx = self.engine.get_tensor_profile_shape(name, 0)
            if not all(a <= d <= b for d, a, b in zip(shape, mn, mx)):
                return False
            self.in_shapes[name] = tuple(shape)
            return True

        def infer_shapes(self):  # the binding: names of unresolved tensors; RuntimeError on an error code
            if self.engine.infer_shapes_error:
                raise RuntimeError("infer_shapes error code: -1")
            return [n for n in ("x", "s") if n not in self.in_shapes]

        def get_tensor_shape(self, name):
            if name == "y":
                return (self.in_shapes["x"][0], 4)
            return self.in_shapes.get(name, self.engine.get_tensor_shape(name))

        def set_tensor_address(self, name, ptr):
            self.addr[name] = int(ptr)
            return True

        def execute_async_v3(self, stream):
            b = self.in_shapes["x"][0]
            ax, as_, ay = self.addr["x"], self.addr["s"], self.addr["y"]  # baked in, like a CUDA graph

            def run():
                x = np.ctypeslib.as_array((ctypes.c_float * (b * 8)).from_address(ax)).reshape(b, 8)
                s = np.ctypeslib.as_array((ctypes.c_float * 4).from_address(as_))
                y = np.ctypeslib.as_array((ctypes.c_float * (b * 4)).from_address(ay)).reshape(b, 4)
                y[...] = (x @ W + BIAS) * s

            if cudart.capturing is not None:
                cudart.capturing.append(run)
            else:
                run()
            return True

    class Engine:
        names = ("x", "s", "y")
        num_io_tensors = 3
        infer_shapes_error = False

        def __init__(self, shapes):
            self.shapes = shapes

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return TensorIOMode.OUTPUT if name == "y" else TensorIOMode.INPUT

        def get_tensor_dtype(self, name):
            return DataType.FLOAT

        def get_tensor_shape(self, name):
            return {"x": (-1, 8), "s": (4,), "y": (-1, 4)}[name]

        def get_tensor_profile_shape(self, name, i):
            return [tuple(s) for s in self.shapes[name]]

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            if not bytes(data).startswith(b"FAKEPLAN"):
                return None
            return Engine(json.loads(bytes(data)[8:]))

    return SimpleNamespace(
        __version__="10.99.0", DataType=DataType, TensorIOMode=TensorIOMode, BuilderFlag=BuilderFlag,
        MemoryPoolType=MemoryPoolType, Logger=Logger, OnnxParser=OnnxParser, Builder=Builder, Runtime=Runtime,
        nptype=lambda dt: np.float32,
    )


@pytest.fixture
def fakes(monkeypatch):
    cudart = FakeCudart()
    fake_trt = _fake_trt(cudart)
    monkeypatch.setattr(trt_mod, "require_tensorrt", lambda: fake_trt)
    monkeypatch.setattr(trt_mod, "require_cudart", lambda: cudart)
    monkeypatch.setattr(trt_mod, "_LOGGERS", {})
    return SimpleNamespace(trt=fake_trt, cudart=cudart)


@pytest.fixture
def fake_plan(fakes, tmp_path):
    onnx_path = _tiny_onnx(tmp_path / "tiny.onnx")
    cfg = BuildConfig(profile=TINY_PROFILE, fp16=False, workspace_gib=1, builder_optimization_level=1)
    info = build_engine(onnx_path, tmp_path / "tiny.plan", TINY_DESC, ModelDims(), cfg, tmp_path / "timing.cache")
    return info.plan


def test_fake_device_query(fakes):
    dev = require_cuda_device()
    assert (dev.name, dev.compute_capability, dev.index) == ("Fake GPU 80GB", "9.0", 0)
    with pytest.raises(BackendUnavailable, match="does not exist"):
        require_cuda_device(1)
    fakes.cudart.devices = 0
    with pytest.raises(BackendUnavailable, match="no NVIDIA GPU"):
        require_cuda_device()


def test_fake_build_engine_profile_flags_and_timing_cache(fakes, tmp_path):
    onnx_path = _tiny_onnx(tmp_path / "tiny.onnx")
    tc = tmp_path / "timing.cache"
    cfg = BuildConfig(profile=TINY_PROFILE, fp16=True, workspace_gib=2, builder_optimization_level=4)
    info = build_engine(onnx_path, tmp_path / "tiny.plan", TINY_DESC, ModelDims(), cfg, tc)
    conf = fakes.trt.Builder.last_config
    assert fakes.trt.BuilderFlag.FP16 in conf.flags and fakes.trt.BuilderFlag.TF32 not in conf.flags
    assert conf.pool[fakes.trt.MemoryPoolType.WORKSPACE] == 2 << 30 and conf.builder_optimization_level == 4
    (prof,) = conf.profiles
    assert prof.shapes["x"] == ((1, 8), (2, 8), (4, 8))  # from the descriptor
    assert prof.shapes["s"] == ((4,), (4,), (4,))  # not in the descriptor: its fixed shape
    assert info.plan.read_bytes().startswith(b"FAKEPLAN") and tc.read_bytes() == b"+"
    build_engine(onnx_path, tmp_path / "tiny.plan", TINY_DESC, ModelDims(), cfg, tc)
    assert fakes.trt.Builder.last_config.cache.blob == b"+" and tc.read_bytes() == b"++"  # loaded, then saved back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["timing.cache", "tiny.onnx", "tiny.plan"]
    static = BuildConfig(profile=TINY_PROFILE, static_shapes=True)
    build_engine(onnx_path, tmp_path / "s.plan", TINY_DESC, ModelDims(), static, None)
    assert fakes.trt.Builder.last_config.profiles[0].shapes["x"] == ((2, 8), (2, 8), (2, 8))


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


@pytest.mark.parametrize("graph", [False, True])
def test_fake_engine_runs_and_reuses_buffers(fakes, fake_plan, graph):
    cu = fakes.cudart
    with TrtEngine(fake_plan, use_cuda_graph=graph) as eng:
        assert [s.name for s in eng.input_specs] == ["x", "s"] and eng.output_specs[0].shape == (-1, 4)
        for batch in (2, 2, 2, 3, 3, 1):
            f = _feeds(batch)
            np.testing.assert_allclose(eng.infer(f)["y"], _ref(f), rtol=1e-5, atol=1e-5)
        n_dev = len(cu.dev)
        assert n_dev == 3 and len(cu.host) == 3  # one device + one pinned buffer per tensor
        f = _feeds(2)  # smaller again: buffers reused, not re-allocated
        np.testing.assert_allclose(eng.infer(f)["y"], _ref(f), rtol=1e-5, atol=1e-5)
        assert len(cu.dev) == n_dev
    if graph:
        assert cu.captures == 4  # batch 2, 3, 1, 2: one capture per shape change
        assert cu.launches == 3  # replays of batch 2 (x2) and batch 3 (x1)
    else:
        assert cu.captures == 0 and cu.launches == 0
    assert cu.dev == {} and cu.host == {} and cu.graphs_alive == 0 and cu.streams == 0  # everything freed


def test_fake_engine_rejects_out_of_profile_and_bad_feeds(fakes, fake_plan):
    with TrtEngine(fake_plan) as eng:
        with pytest.raises(MonkeyError, match=r"outside the engine profile \[1, 8\]\.\.\[4, 8\]"):
            eng.infer(_feeds(5))
        with pytest.raises(MonkeyError, match="missing input"):
            eng.infer({"x": _feeds(2)["x"]})
        with pytest.raises(MonkeyError, match=r"shape \(3,\)"):
            eng.infer({"x": _feeds(2)["x"], "s": np.zeros(3, np.float32)})
        f = _feeds(4)
        np.testing.assert_allclose(eng.infer(f)["y"], _ref(f), rtol=1e-5, atol=1e-5)
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
    cfg = BuildConfig(profile=TINY_PROFILE, fp16=False)
    events: list[tuple[str, str]] = []
    out = build_engine_dir(tmp_path, manifest, cfg, networks=["tiny"], progress=lambda n, m: events.append((n, m)))
    assert out == tmp_path / "trt" / cache_key(manifest_onnx_digest(manifest), cfg, "10.99.0", "Fake GPU 80GB", "9.0")
    assert sorted(p.name for p in out.iterdir()) == ["build.json", "timing.cache", "tiny.plan"]
    meta = json.loads((out / "build.json").read_text())
    assert meta["key"] == out.name and meta["inputs"]["onnx_files"] == {"tiny": dict(manifest.networks["tiny"].sha256)}
    assert meta["inputs"]["device_name"] == "Fake GPU 80GB" and meta["versions"]["tensorrt"] == "10.99.0"
    first = meta["networks"]["tiny"]
    assert events[0] == ("tiny", "building") and "built in" in events[-1][1]
    events.clear()
    build_engine_dir(tmp_path, manifest, cfg, networks=["tiny"], progress=lambda n, m: events.append((n, m)))
    assert len(events) == 1 and "up to date" in events[0][1]
    assert json.loads((out / "build.json").read_text())["networks"]["tiny"] == first  # kept
    build_engine_dir(tmp_path, manifest, cfg, networks=["tiny"], force=True)
    assert json.loads((out / "build.json").read_text())["networks"]["tiny"]["built_at"] >= first["built_at"]
    other = build_engine_dir(tmp_path, manifest, BuildConfig(profile=TINY_PROFILE, fp16=True), networks=["tiny"])
    assert other != out and (other / "tiny.plan").is_file()  # other flags: other folder
    with TrtEngine(out / "tiny.plan") as eng:
        f = _feeds(3)
        np.testing.assert_allclose(eng.infer(f)["y"], _ref(f), rtol=1e-5, atol=1e-5)
    with pytest.raises(MonkeyError, match="unknown network"):
        build_engine_dir(tmp_path, manifest, cfg, networks=["unet"])


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
            np.testing.assert_allclose(out, _ref({"x": x, "s": s}), rtol=1e-5, atol=1e-5)
        assert cu.h2d_counts(eng) == {"x": 1, "s": 5}  # the static input once, the other one per call
        assert (cu.captures, cu.launches) == ((1, 4) if graph else (0, 0))

        # new values, same shape: uploaded right away, the captured graph stays valid
        cu.copies.clear()
        x2 = _feeds(2)["x"]
        eng.set_static_inputs({"x": x2})
        assert cu.h2d_counts(eng) == {"x": 1}
        for _ in range(3):
            s = _feeds(1)["s"]
            np.testing.assert_allclose(eng.infer({"s": s})["y"], _ref({"x": x2, "s": s}), rtol=1e-5, atol=1e-5)
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
                np.testing.assert_allclose(eng.infer({"s": s})["y"], _ref({"x": xb, "s": s}), rtol=1e-5, atol=1e-5)
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
        np.testing.assert_allclose(eng.infer({"x": x})["y"], _ref({"x": x, "s": s1}), rtol=1e-5, atol=1e-5)
        # a feed overrides the static value for that call; the static one is uploaded again afterwards
        cu.copies.clear()
        np.testing.assert_allclose(eng.infer({"x": x, "s": s2})["y"], _ref({"x": x, "s": s2}), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(eng.infer({"x": x})["y"], _ref({"x": x, "s": s1}), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(eng.infer({"x": x})["y"], _ref({"x": x, "s": s1}), rtol=1e-5, atol=1e-5)
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
                np.testing.assert_allclose(eng.infer({"x": x})["y"], _ref({"x": x, "s": s2}), rtol=1e-5, atol=1e-5)
            assert cu.h2d_counts(eng) == {"x": 3, "s": 1}
    assert cu.dev == {} and cu.host == {}


# -- TensorRT / cuda-python error paths as the bindings report them ------------------------------
def test_fake_graph_instantiate_failure_falls_back(fakes, fake_plan):
    cu = fakes.cudart
    cu.instantiate_error = _Err.cudaErrorStreamCaptureInvalidated
    with TrtEngine(fake_plan, use_cuda_graph=True) as eng:
        f = _feeds(2)
        with pytest.warns(UserWarning, match="does not instantiate"):
            np.testing.assert_allclose(eng.infer(f)["y"], _ref(f), rtol=1e-5, atol=1e-5)
        assert cu.graphs_alive == 0  # the captured graph was destroyed, nothing half-kept
        for batch in (2, 3):
            f = _feeds(batch)
            np.testing.assert_allclose(eng.infer(f)["y"], _ref(f), rtol=1e-5, atol=1e-5)
        assert cu.captures == 1 and cu.launches == 0  # no capture retried: plain execution


def test_fake_infer_shapes_error_is_one_line(fakes, fake_plan):
    with TrtEngine(fake_plan) as eng:
        eng.engine.infer_shapes_error = True
        with pytest.raises(MonkeyError, match=r"cannot infer the output shapes for inputs x \[2, 8\], s \[4\]") as ei:
            eng.infer(_feeds(2))
        assert "\n" not in str(ei.value)
        eng.engine.infer_shapes_error = False
        f = _feeds(2)
        np.testing.assert_allclose(eng.infer(f)["y"], _ref(f), rtol=1e-5, atol=1e-5)


def test_fake_build_rejects_inconsistent_profile(fakes, tmp_path, monkeypatch):
    onnx_path = _tiny_onnx(tmp_path / "tiny.onnx")
    monkeypatch.setattr(BuildConfig, "input_shapes", lambda self, desc, dims: {"x": ((4, 8), (2, 8), (1, 8))})
    with pytest.raises(MonkeyError, match=r"rejected the shape range \[4, 8\]\.\.\[1, 8\] of input 'x'") as ei:
        build_engine(onnx_path, tmp_path / "t.plan", TINY_DESC, ModelDims(), BuildConfig(profile=TINY_PROFILE), None)
    assert "\n" not in str(ei.value) and not (tmp_path / "t.plan").exists()
