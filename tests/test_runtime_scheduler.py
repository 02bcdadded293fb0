"""numpy LCM scheduler vs diffusers' LCMScheduler (configured like LCM_Dreamshaper_v7).

Measured (torch 2.13.0+cpu, x86-64 AVX512, MKL): alphas_cumprod identical; timesteps identical for 1..50;
4- and 8-step trajectories bit-identical (max abs diff 0.0); guidance embedding max abs diff 6e-8 with
torch's frequency table, ~4e-4 (gs 8.5) with our correctly rounded one (MKL's exp is 1 ulp off at one index).
"""

from __future__ import annotations

import numpy as np
import pytest

from monkey_trt.core.errors import MonkeyError
from monkey_trt.runtime.scheduler import LCMSchedule, guidance_embedding, guidance_freqs

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

DREAMSHAPER_V7 = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    original_inference_steps=50,
    prediction_type="epsilon",
    set_alpha_to_one=True,
    steps_offset=1,
    timestep_spacing="leading",
    clip_sample=False,
    timestep_scaling=10.0,
)


@pytest.fixture(scope="module")
def ref():
    return diffusers.LCMScheduler(**DREAMSHAPER_V7)


@pytest.fixture(scope="module")
def ours():
    return LCMSchedule.from_betas(0.00085, 0.012, 1000, "scaled_linear", set_alpha_to_one=True)


def test_alphas_cumprod_identical(ref, ours):
    assert ours.alphas_cumprod.dtype == np.float32
    np.testing.assert_array_equal(ours.alphas_cumprod, ref.alphas_cumprod.numpy())
    linear = LCMSchedule.from_betas(0.0001, 0.02, 1000, "linear")
    np.testing.assert_array_equal(
        linear.alphas_cumprod, diffusers.LCMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02).alphas_cumprod.numpy()
    )


def test_timesteps_all_step_counts(ref, ours):
    for n in range(1, 51):
        ref.set_timesteps(n)
        got = ours.timesteps(n)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, ref.timesteps.numpy(), err_msg=f"{n} steps")
    assert ours.timesteps(4).tolist() == [999, 759, 499, 259]
    assert ours.timesteps(8).tolist() == [999, 879, 759, 639, 499, 379, 259, 139]
    for bad in (0, 51):
        with pytest.raises(MonkeyError):
            ours.timesteps(bad)


def torch_coefficients(sched) -> np.ndarray:
    """What the exporter stores: the reference's own per-timestep step scalars, [T, 4]."""
    from monkey_trt.reference.pipeline import lcm_schedule

    return lcm_schedule(sched).coeffs


def run_trajectory(ref, sched, num_steps):
    rs = np.random.RandomState(num_steps)
    shape = (1, 4, 8, 12)
    eps_list = [rs.randn(*shape).astype(np.float32) for _ in range(num_steps)]
    x0 = rs.randn(*shape).astype(np.float32)
    ref.set_timesteps(num_steps)
    g = torch.Generator("cpu").manual_seed(77)
    # The same noise the scheduler draws: one randn per non-final step from the generator.
    g2 = torch.Generator("cpu").manual_seed(77)
    noises = [torch.randn(shape, generator=g2).numpy() for _ in range(num_steps - 1)] + [None]
    ts = sched.timesteps(num_steps)
    x_ref, x_ours = torch.from_numpy(x0.copy()), x0.copy()
    worst = 0.0
    for i, t in enumerate(ref.timesteps):  # t: a 0-d tensor, as in the pipeline
        x_ref, d_ref = ref.step(torch.from_numpy(eps_list[i]), t, x_ref, generator=g, return_dict=False)
        x_ours, d_ours = sched.step(eps_list[i], i, ts, x_ours, noises[i])
        assert x_ours.dtype == np.float32 and d_ours.shape == shape
        worst = max(worst, np.abs(x_ours - x_ref.numpy()).max(), np.abs(d_ours - d_ref.numpy()).max())
    return float(worst)


@pytest.mark.parametrize("num_steps", [4, 8])
def test_step_trajectory_matches_with_reference_coefficients(ref, ours, num_steps):
    exact = LCMSchedule(ours.alphas_cumprod, coeffs=torch_coefficients(ref))
    assert run_trajectory(ref, exact, num_steps) == 0.0  # float32 op order mirrored: bit-identical


@pytest.mark.parametrize("num_steps", [4, 8])
def test_step_trajectory_own_coefficients(ref, ours, num_steps):
    # Correctly rounded sqrt vs torch's MKL sqrt (1 ulp off at some inputs): measured 1.1e-5 (4 steps),
    # 2.3e-5 (8 steps) on unit-variance data; the x0 division by sqrt(ac[999]) = 0.068 amplifies it.
    table = torch_coefficients(ref)
    assert np.abs(ours.coeffs - table).max() <= 1.2e-7  # at most 1 ulp of values <= 1
    assert run_trajectory(ref, ours, num_steps) <= 5e-5


def test_step_needs_noise_except_last(ours):
    ts = ours.timesteps(4)
    x = np.zeros((1, 4, 8, 8), np.float32)
    with pytest.raises(MonkeyError):
        ours.step(x, 0, ts, x, None)
    prev, den = ours.step(x, 3, ts, x, None)
    assert prev is den


@pytest.mark.parametrize("gs", [1.0, 1.5, 8.5, 30.0])
def test_guidance_embedding(gs):
    from diffusers import LatentConsistencyModelPipeline

    from monkey_trt.reference.pipeline import torch_guidance_freqs

    w = torch.tensor(gs - 1).repeat(2)
    want = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=256).numpy()
    torch_freqs = torch_guidance_freqs(256)  # what the exporter stores
    got = guidance_embedding(np.full(2, gs - 1, np.float32), 256, freqs=torch_freqs)
    assert got.shape == (2, 256) and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-6
    # Own table: at most 1 ulp per frequency from torch's, so the embedding drifts by <= ~1000*w*ulp.
    assert np.abs(guidance_freqs(256) - torch_freqs).max() <= 6e-8
    own = guidance_embedding(np.full(2, gs - 1, np.float32), 256)
    # 1 ulp of a frequency (~6e-8) times 1000*w, plus 1 ulp of the rounded float32 argument.
    assert np.abs(own - want).max() <= 1e-6 + 2 * 1000 * (gs - 1) * 6e-8


def test_guidance_embedding_odd_dim():
    from diffusers import LatentConsistencyModelPipeline

    want = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, torch.tensor([0.5]), embedding_dim=9).numpy()
    assert np.abs(guidance_embedding(np.array([0.5]), 9) - want).max() <= 1e-6
