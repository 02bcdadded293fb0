"""Pass 1's attention maps -> MONKEY's binary subject mask (docs/method.md, "Pass 1: the mask").

numpy only; shared by the PyTorch reference and the lean runtime so both threshold identically.

    map   [Q, n_tokens]  head-mean of softmax(q @ k_ip^T) at the mask layer, one per mask step
    grid  (gh, gw)       the layer's query grid, gh * gw == Q
    mask  [H, W]         float32 in {0, 1}, image resolution
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MaskResult:
    mask: np.ndarray  # [H, W] float32 {0,1}
    grid: tuple[int, int]  # query grid of the mask layer
    degenerate_steps: tuple[int, ...]  # mask steps whose map was constant (max == min)

    @property
    def degenerate(self) -> bool:
        return bool(self.degenerate_steps)

    @property
    def coverage(self) -> float:
        return float(self.mask.mean())

    @classmethod
    def full(cls, height: int, width: int) -> "MaskResult":
        """Plain IP-Adapter's "mask": ones everywhere (no map, no grid)."""
        return cls(np.ones((height, width), np.float32), (0, 0), ())


def query_grid(num_queries: int, height: int, width: int, vae_factor: int = 8) -> tuple[int, int]:
    """The (rows, cols) grid of a layer with `num_queries` tokens for an image of height x width.

    UNet down-sampling convs (stride 2, pad 1) map a side s to ceil(s / 2), so a layer's grid is the
    latent grid halved k times. If no k fits (unknown topology), fall back to the factorisation of
    `num_queries` whose aspect ratio is closest to the image's. Never assumes a square.
    """
    gh, gw = height // vae_factor, width // vae_factor
    for _ in range(8):
        if gh * gw == num_queries:
            return gh, gw
        gh, gw = -(-gh // 2), -(-gw // 2)
    target = math.log(width / height)
    best = min(
        ((r, num_queries // r) for r in range(1, num_queries + 1) if num_queries % r == 0),
        key=lambda rc: abs(math.log(rc[1] / rc[0]) - target),
    )
    return best


def normalized_step_map(attn_map: np.ndarray, grid: tuple[int, int], token: int, threshold: float) -> tuple[np.ndarray, bool]:
    """One step: column `token`, min-max to [0,1], values < threshold -> 0. Returns (map [gh,gw], degenerate).

    A constant map (max == min) carries no location: it contributes nothing (zeros) and is reported
    as degenerate; `extract_mask` falls back to a full mask only when every mask step is degenerate.
    """
    col = np.asarray(attn_map, dtype=np.float32)[:, token].reshape(grid)  # [gh, gw], row-major
    if not np.isfinite(col).all():
        raise FloatingPointError("the IP attention map holds NaN/inf: the backend's numerics failed (try fp32)")
    lo, hi = col.min(), col.max()
    if hi == lo:
        return np.zeros(grid, dtype=np.float32), True
    norm = (col - lo) / (hi - lo)
    norm[norm < np.float32(threshold)] = 0.0
    return norm, False


def upsample_nearest(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """[h, w] -> [height, width] like torch.nn.functional.interpolate(mode="nearest")."""
    h, w = x.shape

    def src(n_out: int, n_in: int) -> np.ndarray:
        scale = np.float32(n_in / n_out)
        idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
        return np.minimum(idx, n_in - 1)

    return x[src(height, h)[:, None], src(width, w)[None, :]]


def extract_mask(
    maps: dict[int, np.ndarray], height: int, width: int, token: int, threshold: float
) -> MaskResult:
    """maps: mask step -> [Q, n_tokens] map (batch item 0). Sum thresholded maps, upsample, binarise."""
    if not maps:
        raise ValueError("extract_mask needs at least one step map")
    steps = sorted(maps)
    grid = query_grid(int(np.asarray(maps[steps[0]]).shape[0]), height, width)
    total = np.zeros(grid, dtype=np.float32)
    degenerate = []
    for step in steps:
        norm, is_constant = normalized_step_map(maps[step], grid, token, threshold)
        total += norm
        if is_constant:
            degenerate.append(step)
    if len(degenerate) == len(steps):  # no step located anything: plain IP-Adapter at the masked steps
        total[:] = 1.0
    mask = (upsample_nearest(total, height, width) > 0).astype(np.float32)
    return MaskResult(mask=mask, grid=grid, degenerate_steps=tuple(degenerate))
