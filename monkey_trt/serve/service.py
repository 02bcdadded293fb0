"""The engine behind the HTTP app: load once, warm up, run one generation at a time.

Framework-free (no FastAPI here): `app.py` maps HTTP onto it, `ray_app.py` puts one per Ray replica.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from monkey_trt.core.errors import MonkeyError, NonFiniteOutput
from monkey_trt.runtime.backend import BackendSpec, backend_names
from monkey_trt.runtime.images import check_image_options, check_subject_count, to_uint8
from monkey_trt.runtime.result import MonkeyOutput
from monkey_trt.serve.encoder_cache import EncoderCaches, with_encoder_caches
from monkey_trt.serve.metrics import ServeMetrics
from monkey_trt.serve.progress import Watcher
from monkey_trt.serve.schema import ApiError, GenerateParams
from monkey_trt.serve.worker import DeadlineExceeded, InferenceWorker, QueueFull, Slot

log = logging.getLogger("monkey_trt.serve")
MIB = 1024 * 1024


@dataclass(frozen=True)
class ServeConfig:
    """How to serve one engine directory: how to run it (`spec`, the one BackendSpec) and the service's own limits."""

    engine_dir: Path
    spec: BackendSpec = field(default_factory=BackendSpec)  # backend, precision, providers, ... (runtime.backend)
    max_queue: int = 8  # requests waiting behind the running one; more -> 429
    timeout_s: float = 120.0  # per request, queue wait included -> 504
    max_body_mb: float = 20.0  # larger bodies -> 413, refused while reading
    subject_cache: int = 64  # LRU entries of subject IP tokens (0 = off)
    prompt_cache: int = 256  # LRU entries of prompt embeddings (0 = off)
    warmup: bool = True  # one generation at the profile's smallest size before /readyz says ready

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise MonkeyError(msg)

        need(isinstance(self.spec, BackendSpec), f"ServeConfig.spec must be a BackendSpec, got {type(self.spec).__name__}")
        served = backend_names("serve")
        need(self.spec.backend in served, f"--backend must be {' or '.join(served)}, got {self.spec.backend!r}")
        need(0 <= self.max_queue <= 10_000, f"--max-queue must be in 0..10000, got {self.max_queue}")
        need(0 < self.timeout_s <= 86_400, f"--timeout must be in (0, 86400] seconds, got {self.timeout_s}")
        need(0 < self.max_body_mb <= 1024, f"--max-body-mb must be in (0, 1024], got {self.max_body_mb}")
        need(0 <= self.subject_cache <= 100_000 and 0 <= self.prompt_cache <= 100_000, "cache sizes must be in 0..100000")

    @classmethod
    def from_fields(cls, args: Mapping[str, Any]) -> "ServeConfig":
        """From flat fields (a Ray Serve config's `args`): ServeConfig's own and BackendSpec's, by name."""
        args = dict(args)
        spec_fields = {k: args.pop(k) for k in list(args) if k in BackendSpec.__dataclass_fields__}
        if isinstance(spec_fields.get("providers"), list):
            spec_fields["providers"] = tuple(spec_fields["providers"])  # a string ("cuda,cpu") is split by the spec
        unknown = sorted(set(args) - set(cls.__dataclass_fields__) - {"spec"})
        if unknown:
            raise MonkeyError(f"unknown serve setting(s) {', '.join(unknown)}")
        return cls(spec=BackendSpec(**spec_fields), **args)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * MIB)


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="png")
    return buf.getvalue()


def mask_png(mask: np.ndarray) -> bytes:
    """A mask [H, W] in {0, 1} as the 0/255 greyscale PNG `monkey-trt generate` writes."""
    return png_bytes((mask > 0).astype(np.uint8) * 255, mode="L")


def encode_output(out: MonkeyOutput) -> dict[str, bytes]:
    """PNG files exactly as `monkey-trt generate` writes monkey.png / mask.png / ipadapter.png, and (several subjects,
    a background) each subject's mask_N.png (`mask_1_png`, ...) and background_mask.png (`background_mask_png`)."""
    files = {
        "image_png": png_bytes(to_uint8(out.image)),
        "mask_png": mask_png(out.mask.mask),  # [H, W] 0/255; several subjects: their union
    }
    if out.baseline_image is not None:
        files["baseline_png"] = png_bytes(to_uint8(out.baseline_image))
    for i, m in enumerate(out.masks, 1):
        files[f"mask_{i}_png"] = files["mask_png"] if len(out.masks) == 1 else mask_png(m.mask)
    if out.background_mask is not None:
        files["background_mask_png"] = mask_png(out.background_mask)
    return files


class MonkeyService:
    """One loaded engine, its encoder caches, its inference thread and its metrics.

    The engine is opened, run and closed on the inference thread only (CUDA contexts and ORT/TensorRT
    sessions see one thread).
    """

    def __init__(self, config: ServeConfig, replica: str | None = None):
        self.config = config
        self.replica = replica or f"{socket.gethostname()}:{os.getpid()}"
        self.metrics = ServeMetrics()
        self.worker = InferenceWorker(config.max_queue)
        self.metrics.queue_depth.set_function(lambda: self.worker.depth)
        self.pipe = None
        self.caches: EncoderCaches | None = None
        self.ready = threading.Event()
        self.warm_error: str | None = None
        self._warm_started = False

    # -- lifecycle ---------------------------------------------------------------------------
    def load(self) -> MonkeyService:
        """Open the engine directory (MonkeyError on a bad one) behind the encoder caches (a wrapper of its networks)."""
        from monkey_trt.runtime.pipeline import open_engine

        c = self.config
        spec = c.spec
        self.pipe = with_encoder_caches(self.worker.call(lambda: open_engine(spec, c.engine_dir)), c.subject_cache, c.prompt_cache)
        self.caches = self.pipe.caches
        return self

    @property
    def max_subjects(self) -> int:
        """Subject images one request may hold: the engine's manifest (`max_subjects`; 1 for a directory exported before)."""
        return self.pipe.manifest.max_subjects

    @property
    def default_size(self) -> tuple[int, int]:
        """(height, width) when a request names none: the engine's optimal size."""
        p = self.pipe.manifest.profile
        return p.height.opt, p.width.opt

    def _warm(self) -> None:
        from monkey_trt.core.config import Request

        try:
            t0 = time.perf_counter()
            if self.config.warmup:
                p = self.pipe.manifest.profile
                self.pipe(Request("warm-up", p.height.min, p.width.min, 0), Image.new("RGB", (64, 64), (128, 128, 128)))
            log.info("ready: %s (/readyz answers 200)", f"warmed up in {time.perf_counter() - t0:.1f} s" if self.config.warmup
                     else "no warm-up (--no-warmup)")  # before /readyz turns green: who sees 200 can find the line
            self.ready.set()
        except Exception as e:  # a warm-up failure leaves /readyz at 503 with the reason
            self.warm_error = f"{type(e).__name__}: {e}"
            log.exception("warm-up failed")

    def start_warmup(self, wait: bool = False) -> None:
        """Warm up on the inference thread (the first job); `ready` is set when done."""
        if self._warm_started:
            return
        self._warm_started = True
        fut = self.worker.submit_sync(self._warm)
        if wait:
            fut.result()

    def close(self) -> None:
        """Finish the accepted jobs, then release the engine (on the inference thread, like every engine call)."""
        def release() -> None:  # runs after every accepted job: they still need self.pipe
            if self.pipe is not None:
                self.pipe.close()
                self.pipe = None

        self.worker.close(wait=True, last=release)

    # -- one request -------------------------------------------------------------------------
    def check(self, params: GenerateParams, subjects: int = 1, background: bool = False) -> None:
        """Engine-specific limits, before queueing: 400 for knobs outside the model's range (like any bad knob) and
        subject_scales not one per subject or a background_scale without a background, 422 for sizes outside the
        profile / another mask layer / more subject images than the engine takes / a background it has no slot for."""
        r = params.request
        try:
            r.config.check_model(self.pipe.manifest.dims)
            check_image_options(r.config, subjects, background)
        except MonkeyError as e:
            raise ApiError(400, str(e)) from None
        try:
            check_subject_count(subjects, background, self.max_subjects, self.pipe.manifest.background_slot)
        except MonkeyError as e:
            raise ApiError(422, str(e)) from None
        why = self.pipe.manifest.profile.check(1, r.height, r.width)
        if why:
            raise ApiError(422, f"this engine cannot serve {r.height}x{r.width}: {why}")
        if r.config.mask_layer != self.pipe.manifest.mask_layer:
            raise ApiError(422, f"this engine exports the attention map of {self.pipe.manifest.mask_layer}, not {r.config.mask_layer}")

    def _generate(self, params: GenerateParams, images: Image.Image | tuple[list[Image.Image], Image.Image | None],
                  watch: Watcher | None = None) -> tuple[MonkeyOutput, dict[str, bool]]:
        """On the inference thread: MONKEY + which encoder caches hit; `watch` hears its stages and UNet steps.
        `images`: one subject, or (the subjects in order, the background image or None)."""
        before = self.caches.counters()
        hooks = {} if watch is None else {"progress": watch.stage, "steps": watch.step}  # none: the pipeline as before
        subjects, background = ([images], None) if isinstance(images, Image.Image) else images
        if background is not None:
            hooks["background"] = background
        out = self.pipe(params.request, subjects[0] if len(subjects) == 1 else list(subjects),
                        baseline_scale=params.baseline_scale, **hooks)
        after = self.caches.counters()
        return out, {name: after[name][0] > before[name][0] for name in after}

    async def generate(self, params: GenerateParams, subject: Image.Image | Callable[[], tuple[list[Image.Image], Image.Image | None]],
                       slot: Slot | None = None, watch: Watcher | None = None) -> tuple[MonkeyOutput, dict[str, bool], float]:
        """Queue one (already `check`ed) generation -> (output, cache hits, seconds waited in the queue).

        `subject`: an image, or a function that makes (the subjects, the background or None) (the uploads' decoder: it
        runs on the inference thread, so one image is decoded at a time). `slot`: the request's admission, taken before its
        body was read (`worker.admit`); without one the job takes its own. `watch`: a streamed request's
        listener (its ticket in line, the start of its job, every stage and UNet step; called on the inference thread).
        QueueFull -> 429, DeadlineExceeded -> 504, NonFiniteOutput -> 500 (with its stage), MonkeyError from the engine -> 422.
        """
        if not self.ready.is_set():
            raise ApiError(503, "the engine is still warming up; retry shortly", {"Retry-After": "1"})
        queued = time.perf_counter()
        started: list[float] = []

        def job():
            started.append(time.perf_counter())
            if watch is not None:
                watch.started()
            return self._generate(params, subject() if callable(subject) else subject, watch)

        try:
            out, hits = await self.worker.run(job, self.config.timeout_s, slot, watch.queued if watch is not None else None)
        except QueueFull as e:
            raise ApiError(429, f"server busy: {self.worker.max_queue} requests already queued; retry later",
                           {"Retry-After": str(e.retry_after_s)}) from None
        except DeadlineExceeded:
            raise ApiError(504, f"request did not finish within the {self.config.timeout_s:g}s timeout") from None
        except NonFiniteOutput as e:  # the request was fine, the engine is broken: a server error naming the stage
            raise ApiError(500, str(e)) from None
        except MonkeyError as e:
            raise ApiError(422, str(e)) from None
        self.metrics.observe_stages(out.timings)
        for name, hit in hits.items():
            self.metrics.count_cache(name, hit)
        return out, hits, started[0] - queued
