"""Build TensorRT plans with Polygraphy from strongly typed networks, as NVIDIA's demo/Diffusion does:
one plan (`build_engine`), and every plan of an engine directory into its cache-key folder
(`build_engine_dir`; the folder, key and build.json come from enginedir/plans.py)."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from monkey_trt.core.errors import (
    BackendUnavailable,
    EngineDirError,
    MonkeyError,
    first_line,
)
from monkey_trt.core.atomic import write_json_atomic
from monkey_trt.engine.precision import check_gpu_precision
from monkey_trt.engine.trt import cuda, lib
from monkey_trt.enginedir.networks import ModelDims, NetworkDesc
from monkey_trt.enginedir.plans import (
    BUILD_JSON,
    TIMING_CACHE,
    BuildConfig,
    build_record,
    check_gpu_graphs,
    gpu_graph_path,
    network_record,
    plan_folder,
    plan_networks,
    recorded_networks,
)


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


def check_polygraphy_pair(trt_version: str, polygraphy_version: str | None) -> None:
    """A Polygraphy too old for this TensorRT major (engine/trt/api.POLYGRAPHY_FOR_TENSORRT) fails every build:
    BackendUnavailable, one line, before any work."""
    from packaging.version import InvalidVersion, Version

    from monkey_trt.engine.trt.api_names import POLYGRAPHY_FOR_TENSORRT

    try:
        need = POLYGRAPHY_FOR_TENSORRT.get(Version(trt_version).major)
        old = need is not None and polygraphy_version is not None and Version(polygraphy_version) < Version(need[0])
    except InvalidVersion:
        return
    if old:
        raise BackendUnavailable(f"polygraphy {polygraphy_version} cannot build with TensorRT {trt_version}: {need[1]} "
                                 f"(pip install 'polygraphy>={need[0]}')")


def build_engine(
    onnx_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    desc: NetworkDesc,
    dims: ModelDims,
    cfg: BuildConfig,
    timing_cache_path: str | os.PathLike | None = None,
    max_images: int = 1,
) -> BuildInfo:
    """Parse `onnx_path` strongly typed, build a plan for `cfg` and write it atomically to `plan_path`.

    network_from_onnx_path(strongly_typed=True) -> CreateConfig(profiles, timing cache, optimisation
    level, workspace, tf32) -> engine_from_network(save_timing_cache) -> save_engine, all Polygraphy.
    The optimisation profile comes from `desc.profile_shapes(cfg.effective_profile, dims, max_images)` (max_images:
    Manifest.max_ip_images, the UNet's image axis N runs 1..max_images, optimum 1). Plan and
    timing cache are written to temporary siblings and renamed into place, so an interrupted build
    never leaves a truncated file; the timing cache is read (if present) and saved back.
    """
    trt = lib.require_tensorrt()
    cuda.require_cuda_device()
    pg = require_polygraphy()
    check_polygraphy_pair(str(trt.__version__), _dist_version("polygraphy"))
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if not onnx_path.is_file():
        raise EngineDirError(f"{desc.name}: ONNX file {onnx_path} does not exist")
    profile = pg.Profile()
    for name, (mn, opt, mx) in _profile_shapes(onnx_path, desc, dims, cfg, max_images).items():
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


def _profile_shapes(onnx_path: Path, desc: NetworkDesc, dims: ModelDims, cfg: BuildConfig, max_images: int = 1) -> dict[str, tuple]:
    """Input name -> (min, opt, max): the descriptor's ranges, checked against the ONNX graph's inputs;
    an input the descriptor does not cover must be static and gets its fixed shape."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    ranges = cfg.input_shapes(desc, dims, max_images)
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


def plan_dir(engine_dir: str | os.PathLike, manifest, cfg: BuildConfig, device: cuda.CudaDevice | None = None) -> Path:
    """ENGINE_DIR/trt/<cache key> for this manifest, build config, the installed TensorRT and this GPU."""
    trt = lib.require_tensorrt()
    dev = device or cuda.require_cuda_device()
    return plan_folder(engine_dir, manifest, cfg, trt.__version__, dev.name, dev.compute_capability)


def build_engine_dir(
    engine_dir: str | os.PathLike,
    manifest,
    cfg: BuildConfig,
    networks: Iterable[str] | None = None,
    force: bool = False,
    progress: Callable[[str, str], None] | None = None,
) -> Path:
    """Build the plans of `networks` (default: all four, and the map-only UNet where the manifest has it) into
    ENGINE_DIR/trt/<cache key>/.

    A network whose plan already exists for the key is skipped unless `force`. `progress`
    is called as progress(network, message) before and after each network. Returns the folder.
    """
    trt = lib.require_tensorrt()
    dev = cuda.require_cuda_device()
    check_gpu_precision(cfg.precision, dev.compute_capability, dev.name)  # int8/fp8: tensor cores for it, before any build
    engine_dir = Path(engine_dir)
    nets = list(networks) if networks is not None else list(plan_networks(manifest))
    unknown = [n for n in nets if n not in manifest.networks]
    if unknown:
        raise MonkeyError(f"unknown network(s) {', '.join(unknown)} (the engine directory has {', '.join(manifest.networks)})")
    if cfg.precision not in manifest.precisions:
        raise EngineDirError(f"{engine_dir} has no {cfg.precision} ONNX: run `monkey-trt export --out {engine_dir} --precision {cfg.precision}`")
    check_gpu_graphs(engine_dir, manifest, cfg.precision)  # 8-bit: the fp16-based (GPU-shaped) graphs, or one line
    out = plan_folder(engine_dir, manifest, cfg, trt.__version__, dev.name, dev.compute_capability)
    out.mkdir(parents=True, exist_ok=True)

    built = recorded_networks(out)
    say = progress or (lambda net, msg: None)
    for net in nets:
        plan = out / f"{net}.plan"
        if plan.is_file() and not force:
            say(net, f"up to date ({plan})")
            continue
        say(net, f"building ({cfg.precision})")
        onnx_path = gpu_graph_path(engine_dir, manifest, net, cfg.precision)
        info = build_engine(onnx_path, plan, manifest.networks[net].desc, manifest.dims, cfg, out / TIMING_CACHE,
                            max_images=getattr(manifest, "max_ip_images", 1))  # the UNets' image axis: subjects + background
        built[net] = network_record(plan, onnx_path, info.seconds)
        say(net, f"built in {info.seconds:.1f}s ({info.bytes / 2**20:.1f} MiB)")

    meta = build_record(manifest, cfg, trt.__version__, dev.name, dev.compute_capability, built, _dist_version("polygraphy"))
    write_json_atomic(out / BUILD_JSON, meta)
    return out


def _dist_version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


