"""Time whole MONKEY generations per backend, in one process, on identical noise.

Speed is measured here and in `benchmarks/`, never asserted in tests. Results are medians over
`runs` after `warmup` runs, per stage (runtime.method's stage names) and end to end.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from PIL import Image

from monkey_trt.config import Request
from monkey_trt.runtime.noise import NoisePlan


@dataclass(frozen=True)
class BenchResult:
    backend: str
    runs: int
    total_s: float  # median end-to-end seconds
    stages_s: dict[str, float]  # median seconds per stage
    unet_steps: int  # UNet evaluations per generation (both passes)

    def to_dict(self) -> dict:
        return {"backend": self.backend, "runs": self.runs, "total_s": self.total_s, "stages_s": self.stages_s, "unet_steps": self.unet_steps}


def bench_pipeline(pipe, request: Request, subject: Image.Image, runs: int = 5, warmup: int = 1) -> BenchResult:
    """`pipe` is any backend's pipeline (ReferencePipeline or MonkeyPipeline)."""
    c = request.config
    noise = NoisePlan.from_seed(request.seed, request.latent_shape, c.noise_steps)
    for _ in range(warmup):
        pipe(request, subject, noise=noise)
    totals, stages = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = pipe(request, subject, noise=noise)
        totals.append(time.perf_counter() - t0)
        stages.append(out.timings)
    median = {k: statistics.median(s[k] for s in stages) for k in stages[0]}
    return BenchResult(pipe.backend, runs, statistics.median(totals), median, c.mask_pass_steps_needed + c.steps_final)
