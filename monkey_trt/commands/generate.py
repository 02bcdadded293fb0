"""`generate` as a job: validate everything cheap first, then load a backend, run, write outputs.

Backends: the backend table's rows offered by `generate` (runtime.backend: torch, ort, trt).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from monkey_trt.core.config import (
    DEFAULT_BASE,
    DEFAULT_IP_ADAPTER,
    DEFAULT_IP_WEIGHT,
    Request,
)
from monkey_trt.core.errors import MonkeyError
from monkey_trt.runtime.backend import BackendSpec, backend_row
from monkey_trt.enginedir.networks import ModelDims
from monkey_trt.commands.progress import status, steps
from monkey_trt.runtime.images import load_subject
from monkey_trt.runtime.noise import read_noise_file
from monkey_trt.runtime.outputs import (
    MARKER,
    check_out_dir,
    output_files,
    request_record,
    write_outputs,
)
from monkey_trt.runtime.result import MonkeyOutput

@dataclass(frozen=True)
class GenerateJob:
    request: Request
    image: Path
    out: Path
    base: str
    ip_adapter: str
    ip_weight: str = DEFAULT_IP_WEIGHT
    spec: BackendSpec = field(default_factory=lambda: BackendSpec(backend="torch"))  # how to run (runtime.backend)
    engine_dir: Path | None = None
    noise: Path | None = None
    save_arrays: bool = False
    baseline_scale: float | None = None
    dims: ModelDims | None = None  # the model's sizes when known before loading (the engine directory's manifest)

    @property
    def backend(self) -> str:
        return self.spec.backend


@dataclass(frozen=True)
class Defaults:
    """What `generate` uses for the options the user left out (the backend: `default_backend`)."""

    height: int
    width: int
    base: str
    ip_adapter: str
    dims: ModelDims | None = None  # the engine directory's model sizes, when the backend runs it (ort, trt)


@dataclass(frozen=True)
class Generated:
    """A finished `generate`: its output folder, the files written there, and the output."""

    out: Path
    files: list[str]
    output: MonkeyOutput


def default_backend(engine_dir: Path | None, backend: str | None = None) -> str:
    """--backend left out: ort with an engine directory, else torch (the PyTorch reference)."""
    return backend or ("ort" if engine_dir is not None else "torch")


def resolve_defaults(engine_dir: Path | None, backend: str, height: int | None = None, width: int | None = None,
                     base: str | None = None, ip_adapter: str | None = None) -> Defaults:
    """Options left as None: from the engine directory's manifest when there is one (its profile's opt size, its
    source models, and its model sizes when `backend` runs it), else 512x512 and the hub models."""
    if engine_dir is None:
        return Defaults(512 if height is None else height, 512 if width is None else width, base or DEFAULT_BASE,
                        ip_adapter or DEFAULT_IP_ADAPTER)
    from monkey_trt.enginedir.load import read_manifest

    m = read_manifest(engine_dir)
    src = lambda key, default: m.source[key] if isinstance(m.source.get(key), str) else default  # noqa: E731
    return Defaults(m.profile.height.opt if height is None else height, m.profile.width.opt if width is None else width,
                    base or src("base", DEFAULT_BASE), ip_adapter or src("ip_adapter", DEFAULT_IP_ADAPTER),
                    m.dims if backend_row(backend).needs_engine_dir else None)


def run_generate(job: GenerateJob, console: Console) -> Generated:
    row = backend_row(job.backend, "generate")
    if row.needs_engine_dir and job.engine_dir is None:
        raise MonkeyError(f"--backend {job.backend} needs --engine-dir (make one with `monkey-trt export`)")
    if job.baseline_scale is not None and not 0.0 <= job.baseline_scale <= 4.0:
        raise MonkeyError(f"baseline scale must be in [0, 4], got {job.baseline_scale}")
    check_out_dir(job.out, baseline=job.baseline_scale is not None, save_arrays=job.save_arrays)
    subject = load_subject(job.image)
    req, c = job.request, job.request.config
    noise_file = read_noise_file(job.noise) if job.noise is not None else None
    noise = None
    if noise_file is not None and job.dims is not None:  # the model's sizes are known: check before loading
        noise = noise_file.plan(req.latent_shape(job.dims), c.noise_steps)

    with status(console, f"loading the {job.backend} backend"):
        pipe = load_backend(job)
    if noise_file is not None and noise is None:  # the torch reference: its sizes are known once loaded
        noise = noise_file.plan(req.latent_shape(pipe.dims), c.noise_steps)
    with steps(console, f"{job.backend} {req.width}x{req.height}") as step:
        result = pipe(req, subject, noise=noise, baseline_scale=job.baseline_scale, decode_mask_pass=True,
                      batch_passes=job.spec.batch_passes, progress=lambda stage, i, n: step(stage.replace("_", " "), i, n))

    record = request_record(req, seed=None if noise is not None else req.seed, baseline_scale=job.baseline_scale,
                            batched_steps=result.batched_steps, models=pipe.info(), subject=str(job.image),
                            noise_file=None if noise_file is None else {"path": str(job.noise), "sha256": noise_file.sha256})
    out = write_outputs(job.out, result, subject, record, save_arrays=job.save_arrays)
    return Generated(out, output_files(result, subject, job.save_arrays), result)


def load_backend(job: GenerateJob):
    """The pipeline of `job.spec` (torch reference or the lean runtime): commands.backends.open_backend."""
    from monkey_trt.commands.backends import ModelSource, open_backend

    return open_backend(job.spec, job.engine_dir, ModelSource(job.base, job.ip_adapter, job.ip_weight), face="generate")


def summary(done: Generated, seconds: float) -> str:
    """The one line `generate` ends with."""
    h, w = done.output.image.shape[:2]
    names = sorted(done.files, key=lambda n: (n == MARKER, n))
    return (f"{done.output.backend} {w}x{h}: mask covers {100 * done.output.mask.coverage:.0f}% of the image, "
            f"{seconds:.2f}s in all; wrote {done.out}/ ({', '.join(names)})")
