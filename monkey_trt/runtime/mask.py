"""Pass 1's attention maps -> MONKEY's binary subject mask (docs/method.md, "Pass 1: the mask").

numpy only; shared by the PyTorch reference and the lean runtime so both threshold identically.

    map   [Q, n_tokens]  head-mean of softmax(q @ k_ip^T) at the mask layer, one per mask step
                         (several IP images: [Q, N*T], one softmax per image; extract_subject_masks)
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


def _step_maps(maps: dict[int, np.ndarray], height: int, width: int, token: int, threshold: float
               ) -> tuple[tuple[int, int], list[np.ndarray], list[int]]:
    """Every mask step's normalised, thresholded map: (grid, [map [gh, gw]] in step order, degenerate steps)."""
    if not maps:
        raise ValueError("extract_mask needs at least one step map")
    steps = sorted(maps)
    grid = query_grid(int(np.asarray(maps[steps[0]]).shape[0]), height, width)
    norms, degenerate = [], []
    for step in steps:
        norm, is_constant = normalized_step_map(maps[step], grid, token, threshold)
        norms.append(norm)
        if is_constant:
            degenerate.append(step)
    return grid, norms, degenerate


def _mask_of(grid: tuple[int, int], norms: list[np.ndarray], degenerate: list[int], height: int, width: int) -> MaskResult:
    total = np.zeros(grid, dtype=np.float32)
    for norm in norms:
        total += norm
    if len(degenerate) == len(norms):  # no step located anything: plain IP-Adapter at the masked steps
        total[:] = 1.0
    mask = (upsample_nearest(total, height, width) > 0).astype(np.float32)
    return MaskResult(mask=mask, grid=grid, degenerate_steps=tuple(degenerate))


def extract_mask(
    maps: dict[int, np.ndarray], height: int, width: int, token: int, threshold: float
) -> MaskResult:
    """maps: mask step -> [Q, n_tokens] map (batch item 0). Sum thresholded maps, upsample, binarise."""
    grid, norms, degenerate = _step_maps(maps, height, width, token, threshold)
    return _mask_of(grid, norms, degenerate, height, width)


# -- several subjects (docs/method.md "Several subjects and a background") -----------------------------
#   maps    [Q, N*T]  per mask step: image n's own softmax over its T tokens in columns n*T .. n*T+T-1
#   score_s [H, W]    mean of subject s's normalised thresholded maps over its non-degenerate steps, upsampled
#   raw R_s [H, W]    subject s's mask exactly as extract_mask makes it from its own T columns
#   final M_s         R_s where s has the highest score among the raw masks holding the pixel (ties: lower index)


@dataclass(frozen=True)
class SubjectMasks:
    """Every subject's final mask, and what the overlap rule moved."""

    masks: tuple[MaskResult, ...]  # final M_s per subject, in order
    overlap: float  # fraction of image pixels in two or more raw masks
    lost: tuple[float, ...]  # per subject: the fraction of its raw mask's pixels that went to another subject

    @property
    def union(self) -> np.ndarray:
        """[H, W] float32 {0,1}: pixels of any subject."""
        return np.maximum.reduce([m.mask for m in self.masks])


def subject_columns(attn_map: np.ndarray, subject: int, n_tokens: int) -> np.ndarray:
    """[Q, N*T] -> subject `subject`'s own [Q, T] columns (rows of image n are n*T .. n*T+T-1 in the IP tokens)."""
    return np.asarray(attn_map)[:, subject * n_tokens:(subject + 1) * n_tokens]


def extract_subject_masks(maps: dict[int, np.ndarray], height: int, width: int, token: int, threshold: float,
                          subjects: int, n_tokens: int) -> SubjectMasks:
    """maps: mask step -> [Q, N*T] (N >= subjects; images past the subjects, the background, are not read).
    One subject: exactly extract_mask's mask, no overlap."""
    total_cols = int(np.asarray(next(iter(maps.values()))).shape[1]) if maps else 0
    if subjects < 1 or subjects * n_tokens > total_cols:
        raise ValueError(f"maps with {total_cols} token columns cannot hold {subjects} subject(s) of {n_tokens} tokens")
    raw, scores = [], []
    for s in range(subjects):
        own = {step: subject_columns(m, s, n_tokens) for step, m in maps.items()}  # [Q, T] per step
        grid, norms, degenerate = _step_maps(own, height, width, token, threshold)
        raw.append(_mask_of(grid, norms, degenerate, height, width))
        if subjects > 1:
            located = [n for n, step in zip(norms, sorted(own)) if step not in degenerate]
            mean = np.mean(located, axis=0, dtype=np.float32) if located else np.zeros(grid, np.float32)  # [gh, gw]
            scores.append(upsample_nearest(mean, height, width))  # [H, W]
    if subjects == 1:
        return SubjectMasks((raw[0],), 0.0, (0.0,))
    held = np.stack([r.mask > 0 for r in raw])  # [S, H, W] bool
    contested = held.sum(axis=0) >= 2  # [H, W]
    ranked = np.where(held, np.stack(scores), -np.inf)  # [S, H, W]: only subjects whose raw mask holds the pixel
    winner = np.argmax(ranked, axis=0)  # [H, W]; argmax takes the first of equal scores: the lower index
    final, lost = [], []
    for s, r in enumerate(raw):
        keep = held[s] & (~contested | (winner == s))  # [H, W]
        final.append(MaskResult(keep.astype(np.float32), r.grid, r.degenerate_steps))
        raw_px = int(held[s].sum())
        lost.append(float((held[s] & ~keep).sum() / raw_px) if raw_px else 0.0)
    return SubjectMasks(tuple(final), float(contested.mean()), tuple(lost))


def union_mask(masks: SubjectMasks) -> MaskResult:
    """One MaskResult over every subject (MonkeyOutput.mask when S > 1): the union of the final masks; its
    degenerate steps are those where any subject's map was constant."""
    first = masks.masks[0]
    if len(masks.masks) == 1:
        return first
    steps = sorted({st for m in masks.masks for st in m.degenerate_steps})
    return MaskResult(masks.union.astype(np.float32), first.grid, tuple(steps))
