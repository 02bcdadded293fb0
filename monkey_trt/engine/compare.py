"""Compare one backend's outputs with another's (Polygraphy-comparator style, numpy only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OutputComparison:
    name: str
    shape: tuple[int, ...]
    max_abs: float
    mean_abs: float
    cosine: float
    atol: float

    @property
    def ok(self) -> bool:
        return self.max_abs <= self.atol

    def __str__(self) -> str:
        flag = "ok" if self.ok else "MISMATCH"
        return (f"{self.name:<16} {str(list(self.shape)):<18} max|d| {self.max_abs:.3e}  mean|d| {self.mean_abs:.3e}  "
                f"cos {self.cosine:.7f}  (atol {self.atol:.0e}) {flag}")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


def compare_outputs(reference: dict[str, np.ndarray], test: dict[str, np.ndarray], atol: float | dict[str, float] = 1e-4) -> list[OutputComparison]:
    """Per output present in `reference`: max/mean abs difference and cosine similarity."""
    rows = []
    for name, ref in reference.items():
        if name not in test:
            raise KeyError(f"output {name!r} missing from the compared backend")
        got = np.asarray(test[name])
        ref = np.asarray(ref)
        if got.shape != ref.shape:
            raise ValueError(f"output {name!r}: shape {list(got.shape)} != reference {list(ref.shape)}")
        d = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        tol = atol[name] if isinstance(atol, dict) else atol
        rows.append(OutputComparison(name, ref.shape, float(d.max(initial=0.0)), float(d.mean()) if d.size else 0.0, cosine(ref, got), tol))
    return rows


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    """PSNR in dB of two images in [0, peak] (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak * peak / mse)


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-noise ratio in dB of `test` against `reference` (any range: the reference's power over the error's;
    inf when identical)."""
    ref = reference.astype(np.float64)
    err = float(np.mean((test.astype(np.float64) - ref) ** 2))
    return float("inf") if err == 0 else float(10 * np.log10(float(np.mean(ref ** 2)) / err))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two binary masks ({0,1} or {0,255}: > 0 is in); 1.0 when both are empty."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {list(a.shape)} vs {list(b.shape)}")
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
