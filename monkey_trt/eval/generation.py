"""One backend at one precision, loaded once: MONKEY or plain IP-Adapter images from a given noise plan.

The backend comes from commands.backends.open_backend (the torch reference, or the lean runtime on an
engine directory) with the same runtime.backend.BackendSpec, so eval runs exactly what `generate` runs. The torch backend's precisions are
its dtypes (fp32, fp16); ort/trt run the engine directory's graphs of that precision.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from monkey_trt.core.config import Request
from monkey_trt.eval.options import MONKEY, Method
from monkey_trt.commands.backends import ModelSource, open_backend
from monkey_trt.runtime.backend import BackendSpec
from monkey_trt.runtime.images import to_uint8
from monkey_trt.runtime.method import run_ip_adapter
from monkey_trt.runtime.noise import NoisePlan


@dataclass(frozen=True)
class EvalBackend:
    """What to load: the shared BackendSpec (its precision is set per evaluated precision), the engine directory
    (ort/trt) and the torch backend's models."""

    spec: BackendSpec
    engine_dir: Path | None
    models: ModelSource

    @classmethod
    def make(cls, backend: str, engine_dir: Path | None, base: str, ip_adapter: str, ip_weight: str, **spec_fields) -> "EvalBackend":
        return cls(BackendSpec(backend=backend, **spec_fields), engine_dir, ModelSource(base, ip_adapter, ip_weight))

    @property
    def backend(self) -> str:
        return self.spec.backend

    @property
    def base(self) -> str:
        return self.models.base

    @property
    def ip_adapter(self) -> str:
        return self.models.ip_adapter

    @property
    def ip_weight(self) -> str:
        return self.models.ip_weight


@dataclass(frozen=True)
class Generated:
    image: np.ndarray  # [H, W, 3] uint8, exactly what is written and scored
    mask: np.ndarray | None  # [H, W] uint8 {0, 255} (MONKEY only)
    coverage: float | None
    seconds: float
    warnings: tuple[str, ...] = ()


class Generator:
    def __init__(self, pipe, precision: str):
        self.pipe, self.precision = pipe, precision
        self.dims = pipe.dims  # the model's sizes: the noise plan's latent shape

    def __call__(self, method: Method, request: Request, subject: Image.Image, noise: NoisePlan) -> Generated:
        t0 = time.perf_counter()
        if method.kind == MONKEY:
            out = self.pipe(request, subject, noise=noise)
            mask = (out.mask.mask > 0).astype(np.uint8) * 255
            coverage = out.mask.coverage
        else:
            out = run_ip_adapter(self.pipe, request, subject, method.scale, noise=noise)
            mask, coverage = None, None
        image = to_uint8(out.image)
        return Generated(image, mask, coverage, time.perf_counter() - t0, tuple(out.warnings))

    def close(self) -> None:
        close = getattr(self.pipe, "close", None)
        if close is not None:
            close()


def open_generator(backend: EvalBackend, precision: str, request: Request) -> Generator:
    """Load the backend once for `precision` (torch: dtype fp32|fp16; ort/trt: the engine's graphs)."""
    spec = replace(backend.spec, precision=precision)
    return Generator(open_backend(spec, backend.engine_dir, backend.models, face="eval"), precision)
