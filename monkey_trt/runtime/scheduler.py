"""LCM scheduler in numpy (diffusers' `LCMScheduler`, epsilon prediction, leading LCM timesteps).

All arithmetic is float32 in the same order as diffusers' torch code: with the reference's per-timestep
coefficient table (`LCMSchedule.coeffs`) a trajectory matches it bit for bit; with our own correctly
rounded table it is within ~2e-5 (torch's CPU sqrt is not correctly rounded, see `LCMSchedule`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from monkey_trt.core.errors import MonkeyError

f32 = np.float32


@dataclass(frozen=True, eq=False)
class LCMSchedule:
    """The constants of one LCM scheduler; `timesteps` and `step` are pure functions of them.

    `coeffs` holds, per train timestep t, the float32 scalars a step uses: (sqrt(ac[t]), sqrt(1 - ac[t]),
    c_skip(t), c_out(t)). By default they are computed here, correctly rounded. torch's CPU `sqrt` (MKL)
    is not correctly rounded (~20% of float32 inputs are 1 ulp off on an AMD EPYC), which moves a 4-step
    trajectory by ~1e-5; pass the reference's own table (`reference.pipeline.lcm_schedule`, the one the exporter
    stores; see `coefficient_table`) for a bit-exact match.
    """

    alphas_cumprod: np.ndarray  # [T] float32
    original_inference_steps: int = 50
    timestep_scaling: float = 10.0
    sigma_data: float = 0.5
    final_alpha_cumprod: float = 1.0
    num_train_timesteps: int = 1000
    coeffs: np.ndarray | None = None  # [T, 4] float32: sqrt(ac), sqrt(1 - ac), c_skip, c_out

    def __post_init__(self) -> None:
        n = self.num_train_timesteps
        a = np.array(self.alphas_cumprod, dtype=np.float32).reshape(-1)
        if a.shape != (n,) or not np.isfinite(a).all() or not ((a > 0) & (a <= 1)).all():
            raise MonkeyError(f"alphas_cumprod must be {n} values in (0, 1], got shape {list(a.shape)}")
        c = self.coefficient_table(a) if self.coeffs is None else np.array(self.coeffs, dtype=np.float32)
        if c.shape != (n, 4) or not np.isfinite(c).all():
            raise MonkeyError(f"scheduler coefficient table must be [{n}, 4] finite values, got {list(c.shape)}")
        for name, arr in (("alphas_cumprod", a), ("coeffs", c)):
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    @classmethod
    def from_betas(
        cls,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "scaled_linear",
        set_alpha_to_one: bool = True,
        **kw,
    ) -> "LCMSchedule":
        """alphas_cumprod as diffusers computes it (float32 linspace and betas, cumprod accumulated in double)."""
        n = num_train_timesteps
        if beta_schedule == "scaled_linear":
            betas = _torch_linspace_f32(beta_start**0.5, beta_end**0.5, n) ** 2
        elif beta_schedule == "linear":
            betas = _torch_linspace_f32(beta_start, beta_end, n)
        else:
            raise MonkeyError(f"beta_schedule {beta_schedule!r} is not supported (scaled_linear, linear)")
        ac = np.cumprod(np.float64(f32(1) - betas)).astype(np.float32)  # [n]; torch's CPU cumprod accumulates in double
        final = 1.0 if set_alpha_to_one else float(ac[0])
        return cls(ac, final_alpha_cumprod=final, num_train_timesteps=n, **kw)

    def coefficient_table(self, alphas_cumprod: np.ndarray) -> np.ndarray:
        """[T, 4] float32 (sqrt(ac), sqrt(1 - ac), c_skip, c_out), in diffusers' float32 op order.

        The reference's table is, in torch: `t = torch.arange(T); c_skip, c_out =
        sched.get_scalings_for_boundary_condition_discrete(t); torch.stack([ac.sqrt(), (1 - ac).sqrt(),
        c_skip, c_out], 1)` (c_skip/c_out on the device that holds the pipeline's timesteps)."""
        ac = np.asarray(alphas_cumprod, np.float32)
        s = np.arange(len(ac), dtype=np.float32) * f32(self.timestep_scaling)  # t * timestep_scaling
        d = s * s + f32(self.sigma_data**2)
        c_skip = (f32(1) / d) * f32(self.sigma_data**2)  # torch's `x / d` is `reciprocal(d) * x`
        c_out = s / np.sqrt(d)
        return np.stack([np.sqrt(ac), np.sqrt(f32(1) - ac), c_skip, c_out], axis=1).astype(np.float32)

    def timesteps(self, num_steps: int) -> np.ndarray:
        """[num_steps] int64, descending: `LCMScheduler.set_timesteps(num_steps)` (strength 1)."""
        orig = self.original_inference_steps
        if not 1 <= num_steps <= orig:
            raise MonkeyError(f"LCM steps must be in 1..{orig}, got {num_steps}")
        k = self.num_train_timesteps // orig
        origin = (np.arange(1, orig + 1) * k - 1)[::-1]  # [orig] the distillation schedule, descending
        idx = np.floor(np.linspace(0, orig, num=num_steps, endpoint=False)).astype(np.int64)
        return origin[idx].astype(np.int64)

    def step(
        self, eps: np.ndarray, step_index: int, timesteps: np.ndarray, sample: np.ndarray, noise: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One LCM step: (prev_sample, denoised), both shaped like `sample` [B,4,h,w] float32.

        `noise` (shaped like sample) is injected at every step but the last, where it may be None.
        """
        t = int(timesteps[step_index])
        last = step_index == len(timesteps) - 1
        prev_t = t if last else int(timesteps[step_index + 1])
        sqrt_a, sqrt_b, c_skip, c_out = self.coeffs[t]
        sample, eps = np.asarray(sample, np.float32), np.asarray(eps, np.float32)
        x0 = (sample - sqrt_b * eps) / sqrt_a  # epsilon prediction
        denoised = c_out * x0 + c_skip * sample
        if last:
            return denoised, denoised
        if noise is None:
            raise MonkeyError(f"LCM step {step_index} of {len(timesteps)} needs noise")
        if prev_t >= 0:
            sqrt_a_prev, sqrt_b_prev = self.coeffs[prev_t, :2]
        else:
            a = f32(self.final_alpha_cumprod)
            sqrt_a_prev, sqrt_b_prev = np.sqrt(a), np.sqrt(f32(1) - a)
        prev = sqrt_a_prev * denoised + sqrt_b_prev * np.asarray(noise, np.float32)
        return prev, denoised


def _torch_linspace_f32(start: float, end: float, n: int) -> np.ndarray:
    """`torch.linspace(start, end, n, dtype=float32)` on CPU: float32 step, first half `start + step*i`,
    second half `end - step*(n-1-i)`, each one fused multiply-add (torch's AVX2/AVX512 builds contract it;
    its no-AVX2 build rounds the product separately, which moves ~15% of the betas by 1 ulp)."""
    if n == 1:
        return np.array([start], np.float32)
    a, b = f32(start), f32(end)
    step = np.float64((b - a) / f32(n - 1))
    i = np.arange(n)
    k = np.where(i < n // 2, i, n - 1 - i).astype(np.float32).astype(np.float64)
    return np.where(i < n // 2, step * k + np.float64(a), np.float64(b) - step * k).astype(np.float32)


def guidance_freqs(dim: int = 256) -> np.ndarray:
    """[dim//2] float32 `exp(-i * log(10000) / (dim//2 - 1))`, correctly rounded.

    torch on x86 evaluates this exp with MKL's vsExp, which is 1 ulp off at a few indices (i = 4 of 128
    for dim 256); the argument is multiplied by 1000 * w, so that ulp moves the embedding by up to ~4e-4.
    Pass torch's table (stored by the exporter) to `guidance_embedding` for a ~6e-8 match.
    """
    half = dim // 2
    scale = f32(math.log(10000.0)) / f32(half - 1)  # torch.log(tensor(10000.)) / (half - 1), float32
    x = np.arange(half, dtype=np.float32) * -scale  # [half] float32 like torch.arange(...) * -emb
    return np.exp(np.float64(x)).astype(np.float32)


def guidance_embedding(w: np.ndarray, dim: int = 256, freqs: np.ndarray | None = None) -> np.ndarray:
    """[B] (w = guidance_scale - 1) -> [B, dim] float32, diffusers' `get_guidance_scale_embedding`."""
    if dim < 4:
        raise MonkeyError(f"guidance embedding dim must be >= 4, got {dim}")
    w = np.asarray(w, np.float32).reshape(-1) * f32(1000.0)  # [B]
    freqs = guidance_freqs(dim) if freqs is None else np.asarray(freqs, np.float32).reshape(-1)  # [dim//2]
    if freqs.shape != (dim // 2,):
        raise MonkeyError(f"guidance freqs must have {dim // 2} values, got {freqs.shape[0]}")
    arg = np.float64(w[:, None] * freqs[None, :])  # [B, dim//2], product rounded to float32 like torch
    emb = np.concatenate([np.sin(arg), np.cos(arg)], axis=1).astype(np.float32)  # [B, 2*(dim//2)]
    if dim % 2:
        emb = np.pad(emb, ((0, 0), (0, 1)))
    return emb  # [B, dim]
