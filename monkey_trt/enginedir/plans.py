"""The TensorRT plan store of an engine directory: which folder holds the plans for a build, and its record.

    ENGINE_DIR/trt/<cache key>/
        text_encoder.plan  image_encoder.plan  unet.plan  vae_decoder.plan  (+ unet_map.plan: the map-only UNet)
        timing.cache       TensorRT tactic timing cache, shared by the four builds
        build.json         what the key was made of, versions, build time per network

The cache key covers the ONNX files (sha256), the build flags and profile, the TensorRT
version and the GPU (name + compute capability), so a plan is never reused across any of
them. Everything here is pure: the TensorRT version and the GPU come in as arguments (the
TensorRT backend, engine/trt/, passes the live ones). Lean: stdlib only, no TensorRT.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from monkey_trt.core import __version__ as monkey_version
from monkey_trt.core.errors import EngineDirError, MonkeyError
from monkey_trt.core.output_folders import inside
from monkey_trt.enginedir.digests import sha256_file
from monkey_trt.enginedir.manifest import GPU_BASE, QUANTIZED_PRECISIONS, check_precision, graph_precision
from monkey_trt.enginedir.networks import NETWORKS, OPTIONAL_NETWORKS, ModelDims, NetworkDesc, Profile
from monkey_trt.enginedir.remembered import sha256_matches

KEY_VERSION = 2  # bump when the key material or the plan layout changes (2: precision = which ONNX graphs)
TRT_SUBDIR = "trt"
TIMING_CACHE = "timing.cache"
BUILD_JSON = "build.json"
BUILD_SCHEMA = "monkey-trt/trt-build"


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

    def input_shapes(self, desc: NetworkDesc, dims: ModelDims, max_images: int = 1) -> dict[str, tuple[tuple[int, ...], ...]]:
        """Input name -> (min, opt, max) shapes for `desc`'s optimisation profile (`max_images`: Manifest.max_ip_images;
        static shapes: one image)."""
        return desc.profile_shapes(self.effective_profile, dims, 1 if self.static_shapes else max_images)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["profile"] = self.profile.to_dict()
        d["workspace_gib"] = float(self.workspace_gib)
        return d

    def build_command(self, engine_dir) -> str:
        """The `monkey-trt build` command line that makes plans for this config."""
        parts = [f"monkey-trt build --engine-dir {shlex.quote(str(engine_dir))} --precision {self.precision}"]
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
    """One sha256 over the ONNX (+ external data) hashes of one precision (all networks by default). 8-bit: the
    GPU-shaped graphs (fp16 base, export/gpu_quant.py), the ones TensorRT builds (check_gpu_graphs first). With the
    UNet's IP-image axis, the most images per call too (Manifest.max_ip_images: the plans' profile), so plans built
    for another `--max-subjects` are never taken for these."""
    names = sorted(networks) if networks is not None else sorted(manifest.networks)
    material = {n: dict(sorted(manifest.networks[n].files(graph_precision(manifest, n, precision, GPU_BASE))[1].items()))
                for n in names}
    if precision != "fp32":  # fp32 keeps the v1 material, so the digest of an fp32 engine directory is unchanged
        material = {"precision": precision, "files": material}
    images = getattr(manifest, "max_ip_images", 1)  # the UNet plans' profile runs its image axis 1..images
    if images != 1:  # directories without the image axis keep their digest (and their plans' keys)
        material = {"max_ip_images": images, "graphs": material}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def check_gpu_graphs(engine_dir, manifest, precision: str) -> None:
    """Every network has the graph TensorRT builds for `precision` (8-bit: fp16-based); else Manifest.path's one line."""
    for n in manifest.networks:
        gpu_graph_path(engine_dir, manifest, n, precision)


def gpu_graph_path(engine_dir, manifest, network: str, precision: str) -> Path:
    """The ONNX file TensorRT builds for `network` in `precision`: 8-bit graphs of the fp16 base (the GPU graph)."""
    if precision in QUANTIZED_PRECISIONS:
        return manifest.path(Path(engine_dir), network, precision, GPU_BASE)
    return manifest.path(Path(engine_dir), network, precision)


def plan_folder(engine_dir: str | os.PathLike, manifest, cfg: BuildConfig, trt_version: str, device_name: str,
                compute_capability) -> Path:
    """ENGINE_DIR/trt/<cache key> for this manifest, build config, TensorRT version and GPU."""
    key = cache_key(manifest_onnx_digest(manifest, precision=cfg.precision), cfg, trt_version, device_name, compute_capability)
    return Path(engine_dir) / TRT_SUBDIR / key


# -- finding the plans for a run ------------------------------------------------------------
def find_plan_dir(engine_dir: str | os.PathLike, manifest, precision: str, trt_version: str, device_name: str,
                  compute_capability) -> Path:
    """The plans for this engine directory's `precision` graphs, TensorRT `trt_version` and this GPU, chosen by full key.

    First the key of the default build of the manifest's profile (`monkey-trt build --precision P`);
    otherwise the one plan folder whose build.json records the same ONNX digest, precision, TensorRT
    version and GPU (e.g. a `--static` build). Never "the newest": fp16 and fp32 plans live side by side.
    """
    root = Path(engine_dir)
    cc = _norm_cc(compute_capability)
    check_precision(precision)
    default = BuildConfig(profile=manifest.profile, precision=precision)
    command = default.build_command(root)
    if precision not in manifest.precisions:
        raise EngineDirError(f"{root} has no {precision} ONNX: run `{manifest.export_command(root, precision)}` then `{command}`")
    check_gpu_graphs(root, manifest, precision)
    digest = manifest_onnx_digest(manifest, precision=precision)
    folder = root / TRT_SUBDIR / cache_key(digest, default, trt_version, device_name, cc)
    if _complete(folder, manifest):
        return folder
    matches = []
    for meta_path in sorted((root / TRT_SUBDIR).glob(f"*/{BUILD_JSON}")):
        try:
            inputs, cfg, key = _recorded_build(meta_path)
        except (OSError, ValueError, KeyError, TypeError, MonkeyError):
            continue
        if (key == meta_path.parent.name and inputs["onnx_sha256"] == digest and cfg.precision == precision
                and inputs["tensorrt"] == str(trt_version) and inputs["device_name"] == device_name
                and _norm_cc(inputs["compute_capability"]) == cc and _complete(meta_path.parent, manifest)):
            matches.append(meta_path.parent)
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise EngineDirError(f"{root} has {len(matches)} {precision} plan sets for TensorRT {trt_version} on {device_name} "
                             f"({', '.join(m.name for m in matches)}): keep one, or run `{command}`")
    raise EngineDirError(f"{root} has no {precision} TensorRT plans for TensorRT {trt_version} on {device_name} "
                         f"(sm {cc}): run `{command}`")


def rebuild_command(folder: Path) -> str:
    """`monkey-trt build ... --force` that rebuilds the plans of `folder` (ENGINE_DIR/trt/<key>) as they were
    built (its build.json), else the default build of the precision its key names."""
    folder = Path(folder)
    root = folder.parent.parent if folder.parent.name == TRT_SUBDIR else folder
    try:
        _inputs, cfg, _key = _recorded_build(folder / BUILD_JSON)
        return f"{cfg.build_command(root)} --force"
    except (OSError, ValueError, KeyError, TypeError, AttributeError, MonkeyError):
        parts = folder.name.split("-")
        precision = parts[1] if len(parts) > 2 and parts[0] == f"v{KEY_VERSION}" else "fp32"
        return f"monkey-trt build --engine-dir {shlex.quote(str(root))} --precision {precision} --force"


def _complete(folder: Path, manifest) -> bool:
    """build.json and a plan for every network of the manifest (the map-only UNet too, where it has one)."""
    return (folder / BUILD_JSON).is_file() and all((folder / f"{n}.plan").is_file() for n in plan_networks(manifest))


def plan_networks(manifest) -> tuple[str, ...]:
    """The networks `build` makes plans for: the four, and the optional ones the manifest holds (networks.py)."""
    return NETWORKS + tuple(n for n in OPTIONAL_NETWORKS if n in manifest.networks)


def verify_plans(engine_dir: str | os.PathLike, folder: Path, verify: str = "sha256", networks=NETWORKS) -> None:
    """Every plan the runtime will open is a regular file inside the engine directory whose size (and,
    unless verify="size", digest: enginedir/remembered.py) is what `build` recorded in build.json; no digest is an error. `networks`: the
    plans to check (those the caller opens: each plan is hashed once per pipeline)."""
    try:
        recorded = json.loads((folder / BUILD_JSON).read_text())["networks"]
    except (OSError, ValueError, KeyError, TypeError):
        raise EngineDirError(f"{folder / BUILD_JSON} is unreadable: run `{rebuild_command(folder)}`") from None
    for n in networks:
        plan, entry = folder / f"{n}.plan", recorded.get(n) if isinstance(recorded, dict) else None
        if plan.is_symlink() or not plan.is_relative_to(engine_dir) or not inside(Path(engine_dir), str(plan.relative_to(engine_dir))):
            raise EngineDirError(f"{engine_dir}: TensorRT plan {plan} is not a plain file inside the engine directory")
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(digest, str) or not isinstance(entry.get("bytes"), int):
            raise EngineDirError(f"{folder}: no digest recorded for {n}.plan: run `{rebuild_command(folder)}`")
        if plan.stat().st_size != entry["bytes"] or (verify != "size" and not sha256_matches(plan, digest, remember=verify == "sha256")):
            raise EngineDirError(f"{folder}: {n}.plan fails its {'size' if verify == 'size' else 'sha256'} check (altered): "
                                 f"run `{rebuild_command(folder)}`")


# -- build.json: the record of one plan folder ----------------------------------------------
def _recorded_build(meta_path: Path) -> tuple[dict, BuildConfig, str]:
    """(inputs, build config, the cache key they make) as recorded in `meta_path`; raises when unreadable."""
    inputs = json.loads(meta_path.read_text())["inputs"]
    cfg = BuildConfig(profile=Profile.from_dict(inputs["build_config"]["profile"]),
                      **{k: v for k, v in inputs["build_config"].items() if k != "profile"})
    key = cache_key(inputs["onnx_sha256"], cfg, inputs["tensorrt"], inputs["device_name"], inputs["compute_capability"])
    return inputs, cfg, key


def recorded_networks(folder: Path) -> dict[str, dict]:
    """The per-network entries folder/build.json already holds (kept by a build that skips or adds networks)."""
    meta_path = folder / BUILD_JSON
    try:
        previous = json.loads(meta_path.read_text()).get("networks", {}) if meta_path.is_file() else {}
    except (OSError, ValueError, AttributeError):
        previous = {}
    return {k: v for k, v in previous.items() if isinstance(v, dict)}


def network_record(plan: Path, onnx_path: Path, seconds: float) -> dict:
    """build.json's entry for one freshly built plan: its ONNX, build time, size and sha256."""
    return {"plan": plan.name, "onnx": onnx_path.name, "seconds": round(seconds, 3), "bytes": plan.stat().st_size,
            "sha256": sha256_file(plan), "built_at": time.time()}


def build_record(manifest, cfg: BuildConfig, trt_version: str, device_name: str, compute_capability,
                 networks: dict[str, dict], polygraphy_version: str | None) -> dict:
    """The contents of build.json: the key and what it was made of, the versions used, one entry per built network."""
    onnx_digest = manifest_onnx_digest(manifest, precision=cfg.precision)
    return {
        "schema": BUILD_SCHEMA,
        "key_version": KEY_VERSION,
        "key": cache_key(onnx_digest, cfg, trt_version, device_name, compute_capability),
        "inputs": {
            "onnx_sha256": onnx_digest,
            "precision": cfg.precision,
            "onnx_files": {n: dict(e.files(graph_precision(manifest, n, cfg.precision, GPU_BASE))[1])
                           for n, e in sorted(manifest.networks.items())},
            "build_config": cfg.to_dict(),
            "tensorrt": str(trt_version),
            "device_name": device_name,
            "compute_capability": compute_capability,
        },
        "versions": {"tensorrt": str(trt_version), "polygraphy": polygraphy_version, "monkey_trt": monkey_version},
        "networks": networks,
    }
