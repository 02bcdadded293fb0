"""`generate` as a job: validate everything cheap first, then load a backend, run, write outputs.

Backends: `torch` (the PyTorch reference), `ort` / `trt` (the lean runtime on an engine dir).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from monkey_trt.core.config import (
    DEFAULT_BASE,
    DEFAULT_IP_ADAPTER,
    DEFAULT_IP_WEIGHT,
    Request,
    check_threads,
)
from monkey_trt.core.errors import MonkeyError
from monkey_trt.enginedir.manifest import check_precision
from monkey_trt.jobs.progress import status, steps
from monkey_trt.runtime.images import load_subject
from monkey_trt.runtime.noise import load_noise_file
from monkey_trt.runtime.outputs import check_out_dir, write_outputs
from monkey_trt.runtime.result import MonkeyOutput

BACKENDS = ("torch", "ort", "trt")


@dataclass(frozen=True)
class GenerateJob:
    request: Request
    image: Path
    out: Path
    base: str
    ip_adapter: str
    ip_weight: str = DEFAULT_IP_WEIGHT
    backend: str = "torch"
    engine_dir: Path | None = None
    device: str = "cpu"
    noise: Path | None = None
    save_arrays: bool = False
    baseline_scale: float | None = None
    providers: tuple[str, ...] = ()  # ort backend: execution providers (default: best installed)
    fp16: bool = False  # ort TensorRT EP: fp16 kernels (changes the math)
    cuda_graph: bool = False  # ort CUDA/TensorRT EP and trt: replay UNet steps as CUDA graphs
    precision: str = "fp32"  # ort/trt: fp32 or fp16 graphs of the engine directory (fp16 changes the math: opt-in)
    threads: int = 0  # CPU threads (torch intra-op / ORT intra-op per session); 0 = library default
    verify: str = "sha256"  # engine-dir file check: sha256 | size
    batch_passes: bool | None = None  # exact pass batching; None: the backend's measured default
    dtype: str = "fp32"  # torch backend: fp32 | fp16 (fp16 changes the math: PSNR floor vs fp32)


@dataclass(frozen=True)
class Defaults:
    """What `generate` uses for the options the user left out."""

    backend: str
    height: int
    width: int
    base: str
    ip_adapter: str


def resolve_defaults(engine_dir: Path | None, backend: str | None = None, height: int | None = None, width: int | None = None,
                     base: str | None = None, ip_adapter: str | None = None) -> Defaults:
    """Options left as None: from the engine directory's manifest when there is one (backend ort,
    its profile's opt size, its source models), else torch at 512x512 from the hub defaults."""
    if engine_dir is None:
        return Defaults(backend or "torch", height or 512, width or 512, base or DEFAULT_BASE, ip_adapter or DEFAULT_IP_ADAPTER)
    from monkey_trt.enginedir.manifest import read_manifest

    m = read_manifest(engine_dir)
    src = lambda key, default: m.source[key] if isinstance(m.source.get(key), str) else default  # noqa: E731
    return Defaults(backend or "ort", height or m.profile.height.opt, width or m.profile.width.opt,
                    base or src("base", DEFAULT_BASE), ip_adapter or src("ip_adapter", DEFAULT_IP_ADAPTER))


def run_generate(job: GenerateJob, console: Console) -> tuple[Path, MonkeyOutput]:
    if job.backend not in BACKENDS:
        raise MonkeyError(f"--backend must be one of {', '.join(BACKENDS)}, got {job.backend!r}")
    if job.baseline_scale is not None and not 0.0 <= job.baseline_scale <= 4.0:
        raise MonkeyError(f"baseline scale must be in [0, 4], got {job.baseline_scale}")
    check_out_dir(job.out, baseline=job.baseline_scale is not None, save_arrays=job.save_arrays)
    check_threads(job.threads)
    subject = load_subject(job.image)
    req, c = job.request, job.request.config
    noise = None
    if job.noise is not None:
        noise = load_noise_file(job.noise, req.latent_shape, c.noise_steps)

    with status(console, f"loading the {job.backend} backend"):
        pipe = load_backend(job)
    with steps(console, f"{job.backend} {req.width}x{req.height}") as step:
        result = pipe(req, subject, noise=noise, baseline_scale=job.baseline_scale, decode_mask_pass=True,
                      batch_passes=job.batch_passes, progress=lambda stage, i, n: step(stage.replace("_", " "), i, n))

    record = {
        "prompt": req.prompt,
        "seed": None if noise is not None else req.seed,
        "noise_file": None if job.noise is None else {"path": str(job.noise), "sha256": _sha256(job.noise)},
        "height": req.height,
        "width": req.width,
        "config": c.to_dict(),
        "batched_steps": result.batched_steps,
        "baseline_scale": job.baseline_scale,
        "subject": str(job.image),
        "models": pipe.info(),
    }
    return write_outputs(job.out, result, subject, record, save_arrays=job.save_arrays), result


def load_backend(job: GenerateJob):
    """The pipeline object of `job.backend` (torch reference or the lean runtime)."""
    if job.backend == "torch":
        if job.precision != "fp32":
            raise MonkeyError("--precision picks the engine directory's graphs (ort, trt); the torch backend takes --dtype fp32|fp16")
        from monkey_trt.core.extras import require_extra

        require_extra("export", "the torch backend")
        import torch

        from monkey_trt.reference.device import check_torch_device, set_torch_threads
        from monkey_trt.reference.pipeline import ReferencePipeline

        check_torch_device(job.device)
        set_torch_threads(job.threads)
        if job.dtype not in ("fp32", "fp16"):
            raise MonkeyError(f"--dtype must be fp32 or fp16, got {job.dtype!r}")
        pipe = ReferencePipeline.from_pretrained(job.base, job.ip_adapter, job.ip_weight, device=job.device,
                                                 dtype=torch.float16 if job.dtype == "fp16" else torch.float32)
        if job.cuda_graph:
            pipe.enable_cuda_graphs()
        return pipe
    if job.engine_dir is None:
        raise MonkeyError(f"--backend {job.backend} needs --engine-dir (make one with `monkey-trt export`)")
    from monkey_trt.runtime.pipeline import MonkeyPipeline

    if job.backend == "trt" and job.providers:
        raise MonkeyError("--providers applies to --backend ort only")
    opts = {"providers": job.providers} if job.backend == "ort" else {}
    check_precision(job.precision)
    return MonkeyPipeline.from_engine_dir(job.engine_dir, backend=job.backend, fp16=job.fp16, cuda_graph=job.cuda_graph,
                                          precision=job.precision, threads=job.threads, verify=job.verify, **opts)


def summary(result: MonkeyOutput, out: Path, seconds: float) -> str:
    """The one line `generate` ends with."""
    from monkey_trt.core.files import record_files
    from monkey_trt.runtime.outputs import MARKER

    h, w = result.image.shape[:2]
    names = sorted(record_files()(Path(out) / MARKER), key=lambda n: (n == MARKER, n))
    return (f"{result.backend} {w}x{h}: mask covers {100 * result.mask.coverage:.0f}% of the image, "
            f"{seconds:.2f}s in all; wrote {out}/ ({', '.join(names)})")


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
