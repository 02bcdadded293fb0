"""TensorRT backend: build plans from the engine directory's ONNX files and run them.

    ENGINE_DIR/trt/<cache key>/
        text_encoder.plan  image_encoder.plan  unet.plan  vae_decoder.plan
        timing.cache       TensorRT tactic timing cache, shared by the four builds
        build.json         what the key was made of, versions, build time per network

The cache key covers the ONNX files (sha256), the build flags and profile, the TensorRT
version and the GPU (name + compute capability), so a plan is never reused across any of
them. TensorRT and cuda-python are imported lazily: on a machine without them every entry
point raises `BackendUnavailable` with one line, never an ImportError.

One code path for TensorRT 10.x and 11.x: plans are built by Polygraphy from strongly typed
networks (the ONNX graph's types decide fp32/fp16), run with name-based tensor I/O and
`execute_async_v3`; cuda-python 12.x and 13.x runtime bindings. Every TensorRT, Polygraphy and
cuda-python name used here is listed in `engine/trt_api.py` and checked by tests/test_trt_api.py.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import math
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from monkey_trt.core import __version__ as monkey_version
from monkey_trt.core.errors import (
    BackendUnavailable,
    EngineDirError,
    MonkeyError,
    first_line,
)
from monkey_trt.core.files import write_json_atomic
from monkey_trt.engine.ort import validate_feeds
from monkey_trt.engine.runner import Runner, TensorSpec
from monkey_trt.enginedir.digests import sha256_file
from monkey_trt.enginedir.manifest import check_precision
from monkey_trt.enginedir.networks import NETWORKS, ModelDims, NetworkDesc, Profile

KEY_VERSION = 2  # bump when the key material or the plan layout changes (2: precision = which ONNX graphs)
TRT_SUBDIR = "trt"
TIMING_CACHE = "timing.cache"
BUILD_JSON = "build.json"
BUILD_SCHEMA = "monkey-trt/trt-build"
TRT_MISSING = "TensorRT is not installed: pip install 'monkey-trt[gpu]' on a machine with an NVIDIA GPU"
CUDA_PYTHON_MISSING = "cuda-python is not installed: pip install 'monkey-trt[gpu]' on a machine with an NVIDIA GPU"
REBUILD_HINT = "run `monkey-trt build --force`"


# -- lazy imports / environment ----------------------------------------------------------
def require_tensorrt():
    """The `tensorrt` module, or BackendUnavailable (one line)."""
    try:
        import tensorrt as trt
    except ImportError as e:
        if importlib.util.find_spec("tensorrt") is None:
            raise BackendUnavailable(TRT_MISSING) from None
        raise BackendUnavailable(f"TensorRT is installed but does not load ({type(e).__name__}: {first_line(e)})") from None
    except Exception as e:  # broken install: missing libnvinfer, wrong CUDA, ...
        raise BackendUnavailable(f"TensorRT is installed but does not load ({type(e).__name__}: {first_line(e)})") from None
    return trt


def require_cudart():
    """cuda-python's runtime bindings (`cuda.bindings.runtime` >= 12.6, `cuda.cudart` before)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise BackendUnavailable(CUDA_PYTHON_MISSING) from None
        except Exception as e:
            raise BackendUnavailable(f"cuda-python does not load ({type(e).__name__}: {first_line(e)})") from None
    except Exception as e:
        raise BackendUnavailable(f"cuda-python does not load ({type(e).__name__}: {first_line(e)})") from None
    return cudart


def native_handle(obj) -> int:
    """The raw CUDA handle (an address) held by a cuda-python object such as a `cudaStream_t`.

    cuda-python 13 deprecates `int(obj)` for this; `cuda.bindings.utils.get_cuda_native_handle`
    (cuda-python >= 12.9) is the documented accessor. Older 12.x releases only have `int(obj)`.
    """
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(obj)
    try:
        return int(get_cuda_native_handle(obj))
    except TypeError:  # not a cuda-python handle type (plain ints, test doubles)
        return int(obj)


def tensorrt_version() -> str | None:
    """The importable TensorRT's version, or None."""
    try:
        return str(require_tensorrt().__version__)
    except BackendUnavailable:
        return None


@dataclass(frozen=True)
class CudaDevice:
    index: int
    name: str
    compute_capability: str  # "9.0"
    total_memory: int  # bytes


def require_cuda_device(index: int = 0) -> CudaDevice:
    """The visible NVIDIA GPU `index`, or BackendUnavailable when there is no GPU/driver."""
    cudart = require_cudart()
    try:
        err, count = cudart.cudaGetDeviceCount()
    except Exception as e:  # driver library missing entirely
        raise BackendUnavailable(f"no NVIDIA GPU is visible (CUDA: {first_line(e)})") from None
    if _is_error(cudart, err) or count == 0:
        why = _err_name(cudart, err) if _is_error(cudart, err) else "0 devices"
        raise BackendUnavailable(f"no NVIDIA GPU is visible ({why}): TensorRT needs an NVIDIA GPU and its driver")
    if not 0 <= index < count:
        raise BackendUnavailable(f"CUDA device {index} does not exist ({count} visible)")
    prop = _cu(cudart, cudart.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    name = prop.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\0", 1)[0].decode("utf-8", "replace")
    return CudaDevice(index, str(name).strip(), f"{prop.major}.{prop.minor}", int(prop.totalGlobalMem))


def _is_error(cudart, err) -> bool:
    return err != cudart.cudaError_t.cudaSuccess


def _err_name(cudart, err) -> str:
    return getattr(err, "name", None) or str(err)


def _cu(cudart, ret, what: str):
    """Unpack a cuda-python (err, *values) tuple; MonkeyError on a CUDA error."""
    err = ret[0]
    if _is_error(cudart, err):
        raise MonkeyError(f"CUDA error in {what}: {_err_name(cudart, err)}")
    if len(ret) == 1:
        return None
    return ret[1] if len(ret) == 2 else ret[1:]


_LOGGERS: dict = {}


def _logger(trt, severity=None):
    sev = severity if severity is not None else trt.Logger.WARNING
    if sev not in _LOGGERS:
        _LOGGERS[sev] = trt.Logger(sev)  # must outlive every builder/runtime made with it
    return _LOGGERS[sev]


# -- build configuration and cache key ---------------------------------------------------
@dataclass(frozen=True)
class BuildConfig:
    """How plans are built. Part of the cache key: any change gives a new plan folder.

    profile: the request shapes the plans accept (batch, height, width ranges).
    precision: which ONNX graphs to build ("fp32" or "fp16", see export/fp16.py). The network is
        always strongly typed: the types in the ONNX decide the kernels' precision (TensorRT 10.12
        deprecated and 11 removed the FP16 builder flag).
    tf32: allow TF32 for fp32 matmuls/convs (changes the math: off by default, fp32 stays near-exact).
    workspace_gib: builder workspace memory pool limit.
    builder_optimization_level: 0..5 (TensorRT default 3; higher = longer builds, maybe faster plans).
    static_shapes: build for the profile's opt shapes only (min = opt = max): best kernels, CUDA graphs.
    """

    profile: Profile
    precision: str = "fp32"
    workspace_gib: float = 8.0
    builder_optimization_level: int = 3
    static_shapes: bool = False
    tf32: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.profile, Profile):
            raise MonkeyError(f"BuildConfig.profile must be a Profile, got {type(self.profile).__name__}")
        check_precision(self.precision)
        for f in ("static_shapes", "tf32"):
            if not isinstance(getattr(self, f), bool):
                raise MonkeyError(f"BuildConfig.{f} must be a bool, got {getattr(self, f)!r}")
        ws = self.workspace_gib
        if isinstance(ws, bool) or not isinstance(ws, (int, float)) or not math.isfinite(ws) or not 0 < ws <= 1024:
            raise MonkeyError(f"workspace_gib must be in (0, 1024], got {ws!r}")
        lvl = self.builder_optimization_level
        if isinstance(lvl, bool) or not isinstance(lvl, int) or not 0 <= lvl <= 5:
            raise MonkeyError(f"builder_optimization_level must be an int in 0..5, got {lvl!r}")

    @property
    def effective_profile(self) -> Profile:
        """The profile the plans are built for (opt shapes only when static_shapes)."""
        if not self.static_shapes:
            return self.profile
        p = self.profile
        return Profile.static(p.batch.opt, p.height.opt, p.width.opt)

    def input_shapes(self, desc: NetworkDesc, dims: ModelDims) -> dict[str, tuple[tuple[int, ...], ...]]:
        """Input name -> (min, opt, max) shapes for `desc`'s optimisation profile."""
        return desc.profile_shapes(self.effective_profile, dims)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["profile"] = self.profile.to_dict()
        d["workspace_gib"] = float(self.workspace_gib)
        return d

    def build_command(self, engine_dir) -> str:
        """The `monkey-trt build` command line that makes plans for this config."""
        parts = [f"monkey-trt build --engine-dir {engine_dir} --precision {self.precision}"]
        default = BuildConfig(self.profile)
        if self.static_shapes:
            parts.append("--static")
        if self.tf32:
            parts.append("--tf32")
        if self.builder_optimization_level != default.builder_optimization_level:
            parts.append(f"--opt-level {self.builder_optimization_level}")
        if self.workspace_gib != default.workspace_gib:
            parts.append(f"--workspace-gib {self.workspace_gib:g}")
        return " ".join(parts)


def _norm_cc(cc) -> str:
    if isinstance(cc, (tuple, list)):
        if len(cc) != 2:
            raise MonkeyError(f"compute capability must be (major, minor), got {cc!r}")
        return f"{int(cc[0])}.{int(cc[1])}"
    s = str(cc).strip()
    if not re.fullmatch(r"\d+\.\d+", s):
        raise MonkeyError(f"compute capability must look like '8.9', got {cc!r}")
    return s


def cache_key(onnx_sha256: str, build_config: BuildConfig, trt_version: str, device_name: str, compute_capability) -> str:
    """A folder name unique to (ONNX content, precision, build flags + profile, TensorRT version, GPU).

    Readable prefix (key version, precision, TensorRT version, SM) + a digest over everything, e.g.
    `v2-fp16-trt11.4.0.106-sm90-3f0c...`. Deterministic: same ingredients, same key.
    """
    if not isinstance(onnx_sha256, str) or not onnx_sha256:
        raise MonkeyError("cache_key needs the ONNX sha256")
    if not isinstance(build_config, BuildConfig):
        raise MonkeyError(f"cache_key needs a BuildConfig, got {type(build_config).__name__}")
    cc = _norm_cc(compute_capability)
    digest = hashlib.sha256(json.dumps(_key_material(onnx_sha256, build_config, trt_version, device_name, cc),
                                       sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:20]
    ver = re.sub(r"[^0-9A-Za-z.]+", "_", str(trt_version)) or "unknown"
    return f"v{KEY_VERSION}-{build_config.precision}-trt{ver}-sm{cc.replace('.', '')}-{digest}"


def _key_material(onnx_sha256: str, cfg: BuildConfig, trt_version: str, device_name: str, cc: str) -> dict:
    return {"key_version": KEY_VERSION, "onnx_sha256": onnx_sha256, "build": cfg.to_dict(), "tensorrt": str(trt_version),
            "device": str(device_name).strip(), "compute_capability": cc}


def manifest_onnx_digest(manifest, networks: Iterable[str] | None = None, precision: str = "fp32") -> str:
    """One sha256 over the ONNX (+ external data) hashes of one precision (all networks by default)."""
    names = sorted(networks) if networks is not None else sorted(manifest.networks)
    material = {n: dict(sorted(manifest.networks[n].files(precision)[1].items())) for n in names}
    if precision != "fp32":  # fp32 keeps the v1 material, so the digest of an fp32 engine directory is unchanged
        material = {"precision": precision, "files": material}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


# -- building (Polygraphy, as NVIDIA's demo/Diffusion does) -------------------------------
@dataclass(frozen=True)
class BuildInfo:
    network: str
    plan: Path
    seconds: float
    bytes: int


def require_polygraphy():
    """polygraphy.backend.trt (its TensorRT import is lazy), or BackendUnavailable (one line)."""
    try:
        from polygraphy.backend import trt as pg_trt
    except ImportError:
        raise BackendUnavailable("polygraphy is not installed: pip install 'monkey-trt[gpu]'") from None
    return pg_trt


def build_engine(
    onnx_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    desc: NetworkDesc,
    dims: ModelDims,
    cfg: BuildConfig,
    timing_cache_path: str | os.PathLike | None = None,
) -> BuildInfo:
    """Parse `onnx_path` strongly typed, build a plan for `cfg` and write it atomically to `plan_path`.

    network_from_onnx_path(strongly_typed=True) -> CreateConfig(profiles, timing cache, optimisation
    level, workspace, tf32) -> engine_from_network(save_timing_cache) -> save_engine, all Polygraphy.
    The optimisation profile comes from `desc.profile_shapes(cfg.effective_profile, dims)`. Plan and
    timing cache are written to temporary siblings and renamed into place, so an interrupted build
    never leaves a truncated file; the timing cache is read (if present) and saved back.
    """
    trt = require_tensorrt()
    require_cuda_device()
    pg = require_polygraphy()
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if not onnx_path.is_file():
        raise EngineDirError(f"{desc.name}: ONNX file {onnx_path} does not exist")
    profile = pg.Profile()
    for name, (mn, opt, mx) in _profile_shapes(onnx_path, desc, dims, cfg).items():
        profile.add(name, min=mn, opt=opt, max=mx)
    tc_final = Path(timing_cache_path) if timing_cache_path is not None else None
    tc_tmp = plan_tmp = None
    t0 = time.perf_counter()
    try:
        if tc_final is not None:  # Polygraphy rewrites the cache in place: give it a private copy
            tc_tmp = _temp_sibling(tc_final)
            if tc_final.is_file():
                tc_tmp.write_bytes(tc_final.read_bytes())
        config = pg.CreateConfig(
            tf32=cfg.tf32,
            profiles=[profile],
            load_timing_cache=str(tc_tmp) if tc_tmp is not None and tc_tmp.stat().st_size else None,
            builder_optimization_level=cfg.builder_optimization_level,
            memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(cfg.workspace_gib * (1 << 30))},
        )
        try:  # Polygraphy reports parse and build failures as PolygraphyException
            network = pg.network_from_onnx_path(str(onnx_path), strongly_typed=True)  # from a path: external data is found
            engine = pg.engine_from_network(network, config=config, save_timing_cache=str(tc_tmp) if tc_tmp is not None else None)
        except Exception as e:
            raise MonkeyError(f"{desc.name}: TensorRT cannot build {onnx_path.name}: {first_line(e)} (see the TensorRT log above)") from None
        plan_tmp = _temp_sibling(plan_path)
        pg.save_engine(engine, path=str(plan_tmp))
        del engine
        os.replace(plan_tmp, plan_path)
        plan_tmp = None
        if tc_tmp is not None and tc_tmp.stat().st_size:
            os.replace(tc_tmp, tc_final)
            tc_tmp = None
    finally:
        for tmp in (plan_tmp, tc_tmp):
            if tmp is not None:
                tmp.unlink(missing_ok=True)
    return BuildInfo(desc.name, plan_path, time.perf_counter() - t0, plan_path.stat().st_size)


def _profile_shapes(onnx_path: Path, desc: NetworkDesc, dims: ModelDims, cfg: BuildConfig) -> dict[str, tuple]:
    """Input name -> (min, opt, max): the descriptor's ranges, checked against the ONNX graph's inputs;
    an input the descriptor does not cover must be static and gets its fixed shape."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    ranges = cfg.input_shapes(desc, dims)
    out = {}
    for tensor in graph.input:
        name = tensor.name
        onnx_shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.type.tensor_type.shape.dim)
        if name in ranges:
            mn, opt, mx = ranges[name]
            if len(opt) != len(onnx_shape) or any(d >= 0 and d != o for d, o in zip(onnx_shape, opt)):
                raise MonkeyError(f"{desc.name}: input {name!r} is {list(onnx_shape)} in the ONNX file but the descriptor gives {list(opt)}: re-export")
            if not all(a <= b <= c for a, b, c in zip(mn, opt, mx)):
                raise MonkeyError(f"{desc.name}: inconsistent shape range {list(mn)}..{list(mx)} (opt {list(opt)}) of input {name!r}")
            out[name] = (tuple(mn), tuple(opt), tuple(mx))
        elif any(d < 0 for d in onnx_shape):
            raise MonkeyError(f"{desc.name}: dynamic input {name!r} {list(onnx_shape)} has no shape range in the network descriptor")
        else:
            out[name] = (onnx_shape, onnx_shape, onnx_shape)
    return out


def _temp_sibling(path: Path) -> Path:
    """An empty, unique file next to `path` (same filesystem, so os.replace is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def plan_dir(engine_dir: str | os.PathLike, manifest, cfg: BuildConfig, device: CudaDevice | None = None) -> Path:
    """ENGINE_DIR/trt/<cache key> for this manifest, build config, TensorRT and GPU."""
    trt = require_tensorrt()
    dev = device or require_cuda_device()
    key = cache_key(manifest_onnx_digest(manifest, precision=cfg.precision), cfg, trt.__version__, dev.name, dev.compute_capability)
    return Path(engine_dir) / TRT_SUBDIR / key


def build_engine_dir(
    engine_dir: str | os.PathLike,
    manifest,
    cfg: BuildConfig,
    networks: Iterable[str] | None = None,
    force: bool = False,
    progress: Callable[[str, str], None] | None = None,
) -> Path:
    """Build the plans of `networks` (default: all four) into ENGINE_DIR/trt/<cache key>/.

    A network whose plan already exists for the key is skipped unless `force`. `progress`
    is called as progress(network, message) before and after each network. Returns the folder.
    """
    trt = require_tensorrt()
    dev = require_cuda_device()
    engine_dir = Path(engine_dir)
    nets = list(networks) if networks is not None else list(NETWORKS)
    unknown = [n for n in nets if n not in manifest.networks]
    if unknown:
        raise MonkeyError(f"unknown network(s) {', '.join(unknown)} (the engine directory has {', '.join(manifest.networks)})")
    if cfg.precision not in manifest.precisions:
        raise EngineDirError(f"{engine_dir} has no {cfg.precision} ONNX: run `monkey-trt export --out {engine_dir} --precision {cfg.precision}`")
    onnx_digest = manifest_onnx_digest(manifest, precision=cfg.precision)
    key = cache_key(onnx_digest, cfg, trt.__version__, dev.name, dev.compute_capability)
    out = engine_dir / TRT_SUBDIR / key
    out.mkdir(parents=True, exist_ok=True)

    meta_path = out / BUILD_JSON
    try:
        previous = json.loads(meta_path.read_text()).get("networks", {}) if meta_path.is_file() else {}
    except (OSError, ValueError, AttributeError):
        previous = {}
    built: dict[str, dict] = {k: v for k, v in previous.items() if isinstance(v, dict)}
    say = progress or (lambda net, msg: None)
    for net in nets:
        plan = out / f"{net}.plan"
        if plan.is_file() and not force:
            say(net, f"up to date ({plan})")
            continue
        say(net, f"building ({cfg.precision})")
        onnx_path = manifest.path(engine_dir, net, cfg.precision)
        info = build_engine(onnx_path, plan, manifest.networks[net].desc, manifest.dims, cfg, out / TIMING_CACHE)
        built[net] = {"plan": plan.name, "onnx": onnx_path.name, "seconds": round(info.seconds, 3), "bytes": plan.stat().st_size,
                      "sha256": sha256_file(plan), "built_at": time.time()}
        say(net, f"built in {info.seconds:.1f}s ({info.bytes / 2**20:.1f} MiB)")

    meta = {
        "schema": BUILD_SCHEMA,
        "key_version": KEY_VERSION,
        "key": key,
        "inputs": {
            "onnx_sha256": onnx_digest,
            "precision": cfg.precision,
            "onnx_files": {n: dict(e.files(cfg.precision)[1]) for n, e in sorted(manifest.networks.items())},
            "build_config": cfg.to_dict(),
            "tensorrt": str(trt.__version__),
            "device_name": dev.name,
            "compute_capability": dev.compute_capability,
        },
        "versions": {"tensorrt": str(trt.__version__), "polygraphy": _dist_version("polygraphy"), "monkey_trt": monkey_version},
        "networks": built,
    }
    write_json_atomic(meta_path, meta)
    return out


def _dist_version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# -- running -----------------------------------------------------------------------------
def _np_dtype(trt, dt) -> np.dtype:
    table = {
        trt.DataType.FLOAT: np.float32,
        trt.DataType.HALF: np.float16,
        trt.DataType.INT32: np.int32,
        trt.DataType.INT8: np.int8,
        trt.DataType.BOOL: np.bool_,
    }
    for attr, np_t in (("INT64", np.int64), ("UINT8", np.uint8)):
        if hasattr(trt.DataType, attr):
            table[getattr(trt.DataType, attr)] = np_t
    if dt in table:
        return np.dtype(table[dt])
    try:
        return np.dtype(trt.nptype(dt))
    except Exception:
        raise MonkeyError(f"TensorRT dtype {dt} has no numpy equivalent") from None


class _Pinned:
    """Page-locked host memory with a numpy byte view (falls back to plain numpy memory)."""

    def __init__(self, cudart, nbytes: int) -> None:
        self.cudart, self.nbytes, self.ptr = cudart, max(int(nbytes), 1), None
        err, ptr = cudart.cudaMallocHost(self.nbytes)
        if _is_error(cudart, err):
            self.raw = np.empty(self.nbytes, np.uint8)  # pageable: copies still correct, just synchronous
        else:
            self.ptr = int(ptr)
            self.raw = np.ctypeslib.as_array((ctypes.c_uint8 * self.nbytes).from_address(self.ptr))

    @property
    def address(self) -> int:
        return int(self.raw.ctypes.data)

    def view(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        return self.raw[:n].view(dtype).reshape(shape)

    def free(self) -> None:
        if self.ptr is not None:
            self.raw = None
            self.cudart.cudaFreeHost(self.ptr)
            self.ptr = None


class TrtEngine(Runner):
    """One TensorRT plan on one GPU, in the style of TensorRT's demo/Diffusion `Engine`.

        eng = TrtEngine(plan_path, use_cuda_graph=True)
        eng.load(); eng.activate()          # or: with TrtEngine(...) as eng:
        out = eng.infer(feeds)              # allocates on the first call / when shapes change

    Device buffers (one per I/O tensor) and pinned host buffers are allocated for the current
    input shapes and reused; they grow when a larger shape arrives. Inputs are copied H2D on
    one stream, `execute_async_v3` runs, outputs are copied D2H, the stream is synchronised
    and caller-owned copies are returned. With `use_cuda_graph`, the enqueue is captured in a
    CUDA graph after a warm-up run and replayed while shapes stay the same (re-captured when
    they change; plain execution if the plan cannot be captured).

    `set_static_inputs` (e.g. one LCM pass's text embeddings, IP tokens, timestep_cond, ip_mask)
    puts those inputs in their device buffers once; each `infer` then copies only the remaining
    inputs. The copies are outside the captured graph, so a graph stays valid across new static
    values; it is re-captured only when a shape changes or a buffer is re-allocated.
    """

    backend = "tensorrt"

    def __init__(self, plan_path: str | os.PathLike, name: str | None = None, *, use_cuda_graph: bool = False, device: int = 0):
        self.plan_path = Path(plan_path)
        self.name = name or self.plan_path.stem
        self.use_cuda_graph = bool(use_cuda_graph)
        self.device = int(device)
        self.engine = None
        self.context = None
        self._runtime = None
        self._cudart = None
        self._stream = None
        self._stream_handle = 0
        self._inputs: list[TensorSpec] = []
        self._outputs: list[TensorSpec] = []
        self._dtypes: dict[str, np.dtype] = {}
        self._dev: dict[str, tuple[int, int]] = {}  # name -> (device ptr, capacity bytes)
        self._host: dict[str, _Pinned] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}  # current shapes of every I/O tensor
        self._input_shapes: dict[str, tuple[int, ...]] | None = None
        self._graph = None
        self._graph_exec = None
        self._graph_failed = False
        self._static: dict[str, np.ndarray] = {}
        self._static_on_device: set[str] = set()  # static inputs whose device buffer holds their current value

    # -- lifecycle -----------------------------------------------------------------------
    def load(self) -> None:
        """Deserialise the plan (needs TensorRT and a GPU)."""
        if self.engine is not None:
            return
        trt = require_tensorrt()
        dev = require_cuda_device(self.device)
        cudart = require_cudart()
        _cu(cudart, cudart.cudaSetDevice(self.device), "cudaSetDevice")
        if not self.plan_path.is_file():
            raise EngineDirError(f"{self.name}: TensorRT plan {self.plan_path} is missing: run `monkey-trt build`")
        data = self.plan_path.read_bytes()
        runtime = trt.Runtime(_logger(trt, trt.Logger.ERROR))
        try:
            engine = runtime.deserialize_cuda_engine(data)
        except Exception:
            engine = None
        if engine is None:
            raise EngineDirError(
                f"{self.name}: {self.plan_path} does not load with TensorRT {trt.__version__} on {dev.name} "
                f"(built by another TensorRT version, for another GPU, or damaged): {REBUILD_HINT}"
            )
        self._runtime, self.engine, self._cudart = runtime, engine, cudart
        self._inputs, self._outputs, self._dtypes = [], [], {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dt = _np_dtype(trt, engine.get_tensor_dtype(name))
            self._dtypes[name] = dt
            spec = TensorSpec(name, dt.name, tuple(int(d) for d in engine.get_tensor_shape(name)))
            (self._inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else self._outputs).append(spec)

    def activate(self) -> None:
        """Load (if needed), create the execution context and the stream."""
        if self.context is not None:
            return
        self.load()
        cudart = self._cudart
        context = self.engine.create_execution_context()
        if context is None:
            raise MonkeyError(f"{self.name}: TensorRT could not create an execution context (out of GPU memory?)")
        self.context = context
        self._stream = _cu(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._stream_handle = native_handle(self._stream)  # the cudaStream_t value TensorRT's enqueue takes

    def deactivate(self) -> None:
        """Free graphs, buffers, stream, context and engine (best effort; never raises)."""
        cudart = self._cudart
        if cudart is not None:
            if self._stream is not None:
                cudart.cudaStreamSynchronize(self._stream)
            self._drop_graph()
            for ptr, _cap in self._dev.values():
                cudart.cudaFree(ptr)
            for buf in self._host.values():
                buf.free()
            if self._stream is not None:
                cudart.cudaStreamDestroy(self._stream)
        self._dev.clear()
        self._host.clear()
        self._shapes.clear()
        self._static_on_device.clear()  # the host copies in self._static stay: uploaded again after activate()
        self._input_shapes = None
        self._stream = None
        self._stream_handle = 0
        self.context = None
        self.engine = None
        self._runtime = None
        self._graph_failed = False

    # -- specs ---------------------------------------------------------------------------
    @property
    def input_specs(self) -> list[TensorSpec]:
        self.load()
        return list(self._inputs)

    @property
    def output_specs(self) -> list[TensorSpec]:
        self.load()
        return list(self._outputs)

    def profile_range(self, name: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) shape of input `name` in optimisation profile 0."""
        self.load()
        mn, opt, mx = self.engine.get_tensor_profile_shape(name, 0)
        return tuple(int(d) for d in mn), tuple(int(d) for d in opt), tuple(int(d) for d in mx)

    # -- buffers -------------------------------------------------------------------------
    def _require_context(self):
        if self.context is None:
            raise MonkeyError(f"{self.name}: the engine is not active (use it as a context manager or call activate())")
        return self.context

    def allocate(self, shapes: Mapping[str, Iterable[int]]) -> dict[str, tuple[int, ...]]:
        """Set the input shapes, size device/host buffers for them (reused, grown when needed).

        Returns the shape of every I/O tensor. A shape outside the plan's profile raises MonkeyError.
        """
        ctx = self._require_context()
        cudart = self._cudart
        self._input_shapes = None  # until this allocation has fully succeeded
        missing = [s.name for s in self._inputs if s.name not in shapes]
        if missing:
            raise MonkeyError(f"{self.name}: allocate() needs shapes for input(s) {', '.join(missing)}")
        want: dict[str, tuple[int, ...]] = {}
        for spec in self._inputs:
            shape = want[spec.name] = tuple(int(d) for d in shapes[spec.name])
            if len(shape) != len(spec.shape):
                raise MonkeyError(f"{self.name}: input {spec.name!r} needs rank {len(spec.shape)}, got shape {shape}")
            mn, _opt, mx = self.profile_range(spec.name) if any(d < 0 for d in spec.shape) else (shape, shape, shape)
            if len(mn) == len(shape) == len(mx) and any(not lo <= d <= hi for d, lo, hi in zip(shape, mn, mx)):
                raise MonkeyError(
                    f"{self.name}: input {spec.name!r} shape {list(shape)} is outside the engine profile "
                    f"{list(mn)}..{list(mx)} (rebuild with a wider profile: monkey-trt build --min/--max)"
                )
            if not ctx.set_input_shape(spec.name, shape):
                raise MonkeyError(f"{self.name}: TensorRT rejected shape {list(shape)} for input {spec.name!r}")
        try:  # the binding raises RuntimeError when shape inference fails (e.g. inputs that disagree)
            unresolved = ctx.infer_shapes()
        except RuntimeError as e:
            given = ", ".join(f"{n} {list(s)}" for n, s in want.items())
            raise MonkeyError(f"{self.name}: TensorRT cannot infer the output shapes for inputs {given} ({first_line(e)})") from None
        if unresolved:
            raise MonkeyError(f"{self.name}: TensorRT cannot infer the shapes of {', '.join(map(str, unresolved))}")

        _cu(cudart, cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        self._drop_graph()  # addresses/shapes change: any captured graph is stale
        new_shapes: dict[str, tuple[int, ...]] = {}
        for spec in self._inputs + self._outputs:
            name = spec.name
            shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise MonkeyError(f"{self.name}: output {name!r} has a data-dependent shape {list(shape)} (not supported)")
            nbytes = max(int(np.prod(shape, dtype=np.int64)) * self._dtypes[name].itemsize, 1)
            ptr, cap = self._dev.get(name, (None, 0))
            if ptr is None or cap < nbytes:
                self._static_on_device.discard(name)  # a new buffer holds no uploaded value
                if ptr is not None:
                    cudart.cudaFree(ptr)
                    del self._dev[name]
                ptr = int(_cu(cudart, cudart.cudaMalloc(nbytes), f"cudaMalloc({nbytes}) for {name}"))
                self._dev[name] = (ptr, nbytes)
            host = self._host.get(name)
            if host is None or host.nbytes < nbytes:
                if host is not None:
                    host.free()
                self._host[name] = _Pinned(cudart, nbytes)
            if not ctx.set_tensor_address(name, ptr):
                raise MonkeyError(f"{self.name}: TensorRT rejected the address of {name!r}")
            new_shapes[name] = shape
        self._shapes = new_shapes
        self._input_shapes = {s.name: new_shapes[s.name] for s in self._inputs}
        return dict(new_shapes)

    # -- execution -----------------------------------------------------------------------
    def _execute(self) -> None:
        if not self.context.execute_async_v3(self._stream_handle):
            raise MonkeyError(f"{self.name}: TensorRT execute_async_v3 failed (see the TensorRT log above)")

    def _drop_graph(self) -> None:
        cudart = self._cudart
        if self._graph_exec is not None:
            cudart.cudaGraphExecDestroy(self._graph_exec)
            self._graph_exec = None
        if self._graph is not None:
            cudart.cudaGraphDestroy(self._graph)
            self._graph = None

    def _capture(self) -> None:
        """Warm-up enqueue (computes this call's outputs), then capture the enqueue in a CUDA graph."""
        cudart = self._cudart
        self._execute()  # TensorRT wants one enqueue after shape changes before a capture
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
        _cu(cudart, cudart.cudaStreamBeginCapture(self._stream, mode), "cudaStreamBeginCapture")
        ok = False
        try:
            ok = bool(self.context.execute_async_v3(self._stream_handle))
        finally:
            err, graph = cudart.cudaStreamEndCapture(self._stream)
        why = None
        if not ok or _is_error(cudart, err) or graph is None:
            if graph is not None and not _is_error(cudart, err):
                cudart.cudaGraphDestroy(graph)
            why = "this plan cannot be captured in a CUDA graph"
        else:
            err, graph_exec = cudart.cudaGraphInstantiate(graph, 0)  # cuda-python 12+: (graph, flags) -> (err, exec)
            if _is_error(cudart, err):
                cudart.cudaGraphDestroy(graph)
                why = f"its CUDA graph does not instantiate ({_err_name(cudart, err)})"
            else:
                self._graph, self._graph_exec = graph, graph_exec
        if why is not None:
            cudart.cudaGetLastError()  # clear the error state a failed capture/instantiation leaves, if any
            self._graph_failed = True
            warnings.warn(f"{self.name}: {why}; running without", stacklevel=3)

    def _upload(self, name: str, arr: np.ndarray) -> None:
        """Stage `arr` in the pinned buffer of input `name` and queue its H2D copy on the stream."""
        cudart = self._cudart
        host = self._host[name].view(self._dtypes[name], self._shapes[name])
        np.copyto(host, arr)
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        _cu(cudart, cudart.cudaMemcpyAsync(self._dev[name][0], self._host[name].address, host.nbytes, h2d, self._stream), f"H2D {name}")

    def set_static_inputs(self, feeds: dict[str, np.ndarray]) -> None:
        """Inputs fixed over the coming infer() calls: copied to their device buffers once.

        Uploaded here when the engine is active and the shapes match the current buffers; otherwise
        (first use, a shape change, before activate()) at the next infer(), which knows every input's
        shape and (re)allocates/re-captures as needed. Calling it again replaces the set.
        """
        if not isinstance(feeds, Mapping):
            raise MonkeyError(f"{self.name}: static inputs must be a dict of name -> numpy array, got {type(feeds).__name__}")
        if self.engine is not None:  # specs known: refuse bad names/dtypes/ranks now, not at the next infer
            known = {s.name for s in self._inputs}
            unknown = sorted(set(feeds) - known)
            if unknown:
                raise MonkeyError(f"{self.name}: unknown input(s) {', '.join(map(repr, unknown))} (inputs: {', '.join(sorted(known))})")
            validate_feeds(self.name, [s for s in self._inputs if s.name in feeds], feeds)
        super().set_static_inputs(feeds)
        self._static_on_device = set()
        if self.context is None or self._input_shapes is None or not self._static:
            return
        if any(tuple(a.shape) != self._input_shapes.get(n) for n, a in self._static.items()):
            return  # a shape changes: allocate at the next infer(), with every input's shape known
        _cu(self._cudart, self._cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")  # pinned staging is free
        for name, arr in self._static.items():
            self._upload(name, arr)
        _cu(self._cudart, self._cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        self._static_on_device = set(self._static)

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; `feeds` may leave out the inputs given to `set_static_inputs` (a feed overrides one)."""
        self._require_context()
        cudart, stream = self._cudart, self._stream
        if not isinstance(feeds, Mapping):
            validate_feeds(self.name, self._inputs, feeds)  # raises its one-line error
        merged = self._with_static(feeds)
        validate_feeds(self.name, self._inputs, merged)
        shapes = {s.name: tuple(merged[s.name].shape) for s in self._inputs}
        if shapes != self._input_shapes:
            self.allocate(shapes)
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for spec in self._inputs:
            name = spec.name
            static = name in self._static and name not in feeds
            if static and name in self._static_on_device:
                continue  # uploaded once, still in its buffer
            self._upload(name, merged[name])
            if static:
                self._static_on_device.add(name)
            else:
                self._static_on_device.discard(name)  # a feed replaced the static value on the device
        if self.use_cuda_graph and not self._graph_failed:
            if self._graph_exec is None:
                self._capture()  # its warm-up run already produced this call's outputs
            else:
                _cu(cudart, cudart.cudaGraphLaunch(self._graph_exec, stream), "cudaGraphLaunch")
        else:
            self._execute()
        views = {}
        for spec in self._outputs:
            name = spec.name
            host = self._host[name].view(self._dtypes[name], self._shapes[name])
            _cu(cudart, cudart.cudaMemcpyAsync(self._host[name].address, self._dev[name][0], host.nbytes, d2h, stream), f"D2H {name}")
            views[name] = host
        _cu(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return {name: v.copy() for name, v in views.items()}


# -- runtime entry -------------------------------------------------------------------------
def find_plan_dir(engine_dir: str | os.PathLike, manifest, precision: str = "fp32") -> Path:
    """The plans for this engine directory's `precision` graphs, this TensorRT and this GPU, chosen by full key.

    First the key of the default build of the manifest's profile (`monkey-trt build --precision P`);
    otherwise the one plan folder whose build.json records the same ONNX digest, precision, TensorRT
    version and GPU (e.g. a `--static` build). Never "the newest": fp16 and fp32 plans live side by side.
    """
    trt = require_tensorrt()
    dev = require_cuda_device()
    root = Path(engine_dir)
    check_precision(precision)
    default = BuildConfig(profile=manifest.profile, precision=precision)
    command = default.build_command(root)
    if precision not in manifest.precisions:
        raise EngineDirError(f"{root} has no {precision} ONNX: run `monkey-trt export --out {root} --precision {precision}` then `{command}`")
    digest = manifest_onnx_digest(manifest, precision=precision)
    folder = root / TRT_SUBDIR / cache_key(digest, default, trt.__version__, dev.name, dev.compute_capability)
    if _complete(folder):
        return folder
    matches = []
    for meta_path in sorted((root / TRT_SUBDIR).glob(f"*/{BUILD_JSON}")):
        try:
            inputs = json.loads(meta_path.read_text())["inputs"]
            cfg = BuildConfig(profile=Profile.from_dict(inputs["build_config"]["profile"]),
                              **{k: v for k, v in inputs["build_config"].items() if k != "profile"})
            key = cache_key(inputs["onnx_sha256"], cfg, inputs["tensorrt"], inputs["device_name"], inputs["compute_capability"])
        except (OSError, ValueError, KeyError, TypeError, MonkeyError):
            continue
        if (key == meta_path.parent.name and inputs["onnx_sha256"] == digest and cfg.precision == precision
                and inputs["tensorrt"] == str(trt.__version__) and inputs["device_name"] == dev.name
                and _norm_cc(inputs["compute_capability"]) == dev.compute_capability and _complete(meta_path.parent)):
            matches.append(meta_path.parent)
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise EngineDirError(f"{root} has {len(matches)} {precision} plan sets for TensorRT {trt.__version__} on {dev.name} "
                             f"({', '.join(m.name for m in matches)}): keep one, or run `{command}`")
    raise EngineDirError(f"{root} has no {precision} TensorRT plans for TensorRT {trt.__version__} on {dev.name} "
                         f"(sm {dev.compute_capability}): run `{command}`")


def _complete(folder: Path) -> bool:
    return (folder / BUILD_JSON).is_file() and all((folder / f"{n}.plan").is_file() for n in NETWORKS)


def verify_plans(engine_dir: str | os.PathLike, folder: Path, verify: str = "sha256") -> None:
    """Every plan the runtime will open is a regular file inside the engine directory whose size (and,
    for verify="sha256", digest) is what `build` recorded in build.json; no digest is an error."""
    from monkey_trt.core.files import inside

    try:
        networks = json.loads((folder / BUILD_JSON).read_text())["networks"]
    except (OSError, ValueError, KeyError, TypeError):
        raise EngineDirError(f"{folder / BUILD_JSON} is unreadable: run `monkey-trt build --force`") from None
    for n in NETWORKS:
        plan, entry = folder / f"{n}.plan", networks.get(n) if isinstance(networks, dict) else None
        if plan.is_symlink() or not plan.is_relative_to(engine_dir) or not inside(Path(engine_dir), str(plan.relative_to(engine_dir))):
            raise EngineDirError(f"{engine_dir}: TensorRT plan {plan} is not a plain file inside the engine directory")
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(digest, str) or not isinstance(entry.get("bytes"), int):
            raise EngineDirError(f"{folder}: no digest recorded for {n}.plan: run `monkey-trt build --force`")
        if plan.stat().st_size != entry["bytes"] or (verify == "sha256" and sha256_file(plan) != digest):
            raise EngineDirError(f"{folder}: {n}.plan fails its {'sha256' if verify == 'sha256' else 'size'} check (altered)")


def open_trt_runners(engine_dir: str | os.PathLike, manifest, cuda_graph: bool = False, precision: str = "fp32",
                     verify: str = "sha256") -> dict[str, "TrtEngine"]:
    """One (not yet activated) TrtEngine per network, plans verified; CUDA graphs only for the UNet's fixed-shape steps."""
    folder = find_plan_dir(engine_dir, manifest, precision)
    verify_plans(Path(engine_dir), folder, verify)
    return {n: TrtEngine(folder / f"{n}.plan", name=n, use_cuda_graph=cuda_graph and n == "unet") for n in NETWORKS}
