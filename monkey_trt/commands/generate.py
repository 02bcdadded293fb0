"""`generate` as a job: validate everything cheap first, then load a backend, run, write outputs.

Several subjects: `images` in order (1..the engine's max_subjects) and an optional background image; every image is
decoded and the count checked against the engine before any model loads.

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
from monkey_trt.runtime.images import check_image_options, check_subject_count, load_subject, load_subjects
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
    images: tuple[Path, ...]  # the subject images, in order (1..max_subjects)
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
    background: Path | None = None  # the background image (its mask: everywhere no subject is)
    max_subjects: int = 1  # the engine's limit (Defaults.max_subjects)
    background_slot: bool = True  # the engine has the background slot (Defaults.background_slot)

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
    max_subjects: int = 1  # subject images one request may hold: the manifest's max_subjects, the reference's default
    background_slot: bool = True  # a background image is possible (not on a directory exported before several subjects)


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
    from monkey_trt.enginedir.networks import MAX_SUBJECTS_DEFAULT

    if engine_dir is None:
        return Defaults(512 if height is None else height, 512 if width is None else width, base or DEFAULT_BASE,
                        ip_adapter or DEFAULT_IP_ADAPTER, max_subjects=MAX_SUBJECTS_DEFAULT)
    from monkey_trt.enginedir.load import read_manifest

    m = read_manifest(engine_dir)
    src = lambda key, default: m.source[key] if isinstance(m.source.get(key), str) else default  # noqa: E731
    runs_it = backend_row(backend).needs_engine_dir
    return Defaults(m.profile.height.opt if height is None else height, m.profile.width.opt if width is None else width,
                    base or src("base", DEFAULT_BASE), ip_adapter or src("ip_adapter", DEFAULT_IP_ADAPTER),
                    m.dims if runs_it else None, max_subjects=m.max_subjects if runs_it else MAX_SUBJECTS_DEFAULT,
                    background_slot=m.background_slot if runs_it else True)


def run_generate(job: GenerateJob, console: Console) -> Generated:
    row = backend_row(job.backend, "generate")
    if row.needs_engine_dir and job.engine_dir is None:
        raise MonkeyError(f"--backend {job.backend} needs --engine-dir (make one with `monkey-trt export`)")
    if job.baseline_scale is not None and not 0.0 <= job.baseline_scale <= 4.0:
        raise MonkeyError(f"baseline scale must be in [0, 4], got {job.baseline_scale}")
    req, c = job.request, job.request.config
    check_subject_count(len(job.images), job.background is not None, job.max_subjects, job.background_slot)
    check_image_options(c, len(job.images), job.background is not None)
    check_out_dir(job.out, baseline=job.baseline_scale is not None, save_arrays=job.save_arrays,
                  subjects=len(job.images), background=job.background is not None)
    if len(job.images) == 1 and job.background is None:
        subjects, background = [load_subject(job.images[0])], None
    else:
        subjects, background = load_subjects(job.images, job.background)
    noise_file = read_noise_file(job.noise) if job.noise is not None else None
    noise = None
    if noise_file is not None and job.dims is not None:  # the model's sizes are known: check before loading
        noise = noise_file.plan(req.latent_shape(job.dims), c.noise_steps)

    with status(console, f"loading the {job.backend} backend"):
        pipe = load_backend(job)
    if noise_file is not None and noise is None:  # the torch reference: its sizes are known once loaded
        noise = noise_file.plan(req.latent_shape(pipe.dims), c.noise_steps)
    with steps(console, f"{job.backend} {req.width}x{req.height}") as step:
        images = {"background": background} if background is not None else {}
        result = pipe(req, subjects[0] if len(subjects) == 1 else subjects, **images, noise=noise, baseline_scale=job.baseline_scale,
                      decode_mask_pass=True, batch_passes=job.spec.batch_passes,
                      progress=lambda stage, i, n: step(stage.replace("_", " "), i, n))

    record = request_record(req, seed=None if noise is not None else req.seed, baseline_scale=job.baseline_scale,
                            batched_steps=result.batched_steps, models=pipe.info(),
                            subject=str(job.images[0]) if len(job.images) == 1 else [str(p) for p in job.images],
                            noise_file=None if noise_file is None else {"path": str(job.noise), "sha256": noise_file.sha256})
    if job.background is not None:
        record["background_image"] = str(job.background)  # result.json: `background.image`
    pictures = subjects[0] if len(subjects) == 1 else subjects
    out = write_outputs(job.out, result, pictures, record, save_arrays=job.save_arrays)
    return Generated(out, output_files(result, pictures, job.save_arrays), result)


def load_backend(job: GenerateJob):
    """The pipeline of `job.spec` (torch reference or the lean runtime): commands.backends.open_backend."""
    from monkey_trt.commands.backends import ModelSource, open_backend

    return open_backend(job.spec, job.engine_dir, ModelSource(job.base, job.ip_adapter, job.ip_weight), face="generate")


def summary(done: Generated, seconds: float) -> str:
    """The one line `generate` ends with."""
    o = done.output
    h, w = o.image.shape[:2]
    names = sorted(done.files, key=lambda n: (n == MARKER, n))
    if len(o.masks) == 1:
        covers = f"mask covers {100 * o.mask.coverage:.0f}% of the image"
    else:
        each = ", ".join(f"{100 * m.coverage:.0f}%" for m in o.masks)
        covers = f"{len(o.masks)} subject masks cover {each} of the image (overlap {100 * o.overlap:.0f}%)"
    return f"{o.backend} {w}x{h}: {covers}, {seconds:.2f}s in all; wrote {done.out}/ ({', '.join(names)})"
