"""The numbers: per-image metrics (cosines, mask IoU, PSNR) and their summaries (mean, 95% CI).

CLIP-T, CLIP-I and DINO are cosines of judge embeddings (engine.compare.cosine); mask IoU is engine.compare.mask_iou; PSNR is
engine.compare.psnr on the 8-bit images as written (peak 255), so a resumed run scores exactly what
an uninterrupted one does. Numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from monkey_trt.engine.compare import cosine, mask_iou, psnr

__all__ = ["cosines", "mask_iou", "mean_ci", "psnr_u8", "t975"]

# Two-sided 95% Student t quantiles t(0.975, df), df = 1..30; beyond, a Cornish-Fisher expansion (error < 1e-4).
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788, 2.1604,
         2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555,
         2.0518, 2.0484, 2.0452, 2.0423)
_Z975 = 1.959963984540054


def cosines(a: np.ndarray, b: np.ndarray) -> list[float]:
    """Row-wise cosine of two [N, D] embedding batches."""
    return [cosine(x, y) for x, y in zip(a, b)]


def psnr_u8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two 8-bit images (inf when identical)."""
    return psnr(np.asarray(a, np.uint8), np.asarray(b, np.uint8), peak=255.0)


def t975(df: int) -> float:
    if df < 1:
        return math.nan
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


@dataclass(frozen=True)
class Stat:
    """Mean and two-sided 95% confidence interval (Student t) of n values; lo/hi are NaN for n < 2."""

    n: int
    mean: float
    lo: float
    hi: float
    min: float

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    def to_json(self) -> dict:
        clean = lambda x: None if x is None or not math.isfinite(x) else round(x, 6)  # noqa: E731
        return {"n": self.n, "mean": clean(self.mean), "ci95": [clean(self.lo), clean(self.hi)], "min": clean(self.min)}


def mean_ci(values) -> Stat:
    """Over the values that are not None/NaN; an infinite value makes the mean infinite and the CI NaN."""
    xs = np.asarray([v for v in values if v is not None and not math.isnan(v)], np.float64)
    n = len(xs)
    if n == 0:
        return Stat(0, math.nan, math.nan, math.nan, math.nan)
    mean, min_ = float(xs.mean()), float(xs.min())
    if n < 2 or not np.isfinite(xs).all():
        return Stat(n, mean, math.nan, math.nan, min_)
    half = t975(n - 1) * float(xs.std(ddof=1)) / math.sqrt(n)
    return Stat(n, mean, mean - half, mean + half, min_)


def psnr_stat(values) -> tuple[Stat, int]:
    """(mean/CI of the finite PSNRs, how many were identical images (inf))."""
    xs = [v for v in values if v is not None and not math.isnan(v)]
    identical = sum(1 for v in xs if math.isinf(v))
    finite = mean_ci([v for v in xs if not math.isinf(v)])
    if identical and finite.n == 0:
        return Stat(identical, math.inf, math.nan, math.nan, math.inf), identical
    return finite, identical
