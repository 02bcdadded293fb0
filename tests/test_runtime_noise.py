"""Seed -> noise parity with torch's CPU generator.

Measured on torch 2.13.0+cpu (x86-64, AVX512 capability; AVX2 and AVX512 run the same avx_mathfun kernel):
the uniform stream is identical and every normal is bit-identical (max abs diff 0.0) for the "avx2"
variant; the "scalar" variant (libm via ctypes) is bit-identical to torch run with
ATEN_CPU_CAPABILITY=default. Without libm the scalar fallback is within 1 ulp (<= 4.8e-7).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from monkey_trt.core.errors import MonkeyError
from monkey_trt.runtime import noise as N
from monkey_trt.runtime.noise import (
    NoisePlan,
    TorchCPURandn,
    load_noise_file,
    save_noise_file,
)

torch = pytest.importorskip("torch")

SHAPES = [(16,), (1, 4, 8, 8), (1, 4, 8, 12), (1000,), (17,), (1, 4, 64, 64), (3, 5), (1,), (2, 7)]


def torch_draws(seed, shapes):
    g = torch.Generator("cpu").manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float32).numpy() for s in shapes]


def test_uniform_stream_is_torch_rand():
    for seed in (0, 1, 42, 2**32 + 5, 2**63 - 1, 2**64 - 1):
        want = torch.rand(4096, generator=torch.Generator("cpu").manual_seed(seed)).numpy()
        np.testing.assert_array_equal(TorchCPURandn(seed)._uniform(4096), want)


@pytest.mark.skipif(N.torch_cpu_variant() != "avx2", reason="torch here uses the scalar kernel")
@pytest.mark.parametrize("seed", [0, 1, 7, 1234, 2**40 + 3])
def test_randn_sequence_matches_torch_bit_exactly(seed):
    want = torch_draws(seed, SHAPES)
    rng = TorchCPURandn(seed, "avx2")
    for shape, w in zip(SHAPES, want):
        got = rng.randn(shape)
        assert got.dtype == np.float32 and got.shape == w.shape
        np.testing.assert_array_equal(got, w, err_msg=f"seed {seed} shape {shape}")


def test_small_numel_path_caches_second_sample():
    # numel < 16 runs torch's double Box-Muller, whose sine half is served by the next call.
    want = torch_draws(3, [(1,), (3,), (2, 2), (1,)])
    rng = TorchCPURandn(3)
    for w in want:
        np.testing.assert_array_equal(rng.randn(w.shape), w)


def test_scalar_variant_matches_torch_default_capability():
    code = (
        "import json,torch;g=torch.Generator('cpu').manual_seed(11);"
        "print(json.dumps([torch.randn(s,generator=g).flatten().tolist() for s in [(1,4,8,8),(1000,),(17,)]]))"
    )
    env = {"ATEN_CPU_CAPABILITY": "default", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    want = [np.array(v, np.float32) for v in json.loads(out.stdout)]
    rng = TorchCPURandn(11, "scalar")
    got = [rng.randn(s).ravel() for s in [(1, 4, 8, 8), (1000,), (17,)]]
    diff = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
    if N._libm_funcs() is not None:
        assert diff == 0.0
    assert diff <= 4.8e-7


def test_variants_agree_within_float_rounding():
    a, b = TorchCPURandn(5, "avx2").randn((1, 4, 32, 32)), TorchCPURandn(5, "scalar").randn((1, 4, 32, 32))
    assert np.abs(a - b).max() <= 2e-6


@pytest.mark.parametrize("shape", [(1, 4, 8, 8), (1, 4, 8, 12)])
def test_noise_plan_is_lcm_pipeline_order(shape):
    from diffusers.utils.torch_utils import randn_tensor

    seed = 2024
    g = torch.Generator("cpu").manual_seed(seed)
    latents = randn_tensor(shape, generator=g, device=torch.device("cpu"), dtype=torch.float32).numpy()
    steps = [randn_tensor(shape, generator=g, device=torch.device("cpu"), dtype=torch.float32).numpy() for _ in range(7)]
    plan = NoisePlan.from_seed(seed, shape, 8)
    assert plan.latents.shape == shape and plan.step_noise.shape == (7, *shape)
    tol = 0.0 if N.torch_cpu_variant() == "avx2" else 4.8e-7
    assert np.abs(plan.latents - latents).max() <= tol
    assert np.abs(plan.step_noise - np.stack(steps)).max() <= tol
    # A pass re-seeds: the 4-step plan is a prefix of the 8-step one.
    short = NoisePlan.from_seed(seed, shape, 4)
    np.testing.assert_array_equal(short.step_noise, plan.step_noise[:3])
    np.testing.assert_array_equal(plan.for_steps(4).step_noise, short.step_noise)
    assert NoisePlan.from_seed(seed, shape, 1).step_noise.shape == (0, *shape)


def test_noise_file_round_trip(tmp_path):
    plan = NoisePlan.from_seed(9, (1, 4, 8, 8), 8)
    save_noise_file(tmp_path / "n.npz", plan)
    back = load_noise_file(tmp_path / "n.npz", (1, 4, 8, 8), 8)
    np.testing.assert_array_equal(back.latents, plan.latents)
    np.testing.assert_array_equal(back.step_noise, plan.step_noise)
    # float64 is accepted and cast; extra step noises are fine.
    np.savez(tmp_path / "d.npz", latents=plan.latents.astype(np.float64), step_noise=plan.step_noise.astype(np.float64))
    back = load_noise_file(tmp_path / "d.npz", (1, 4, 8, 8), 4)
    assert back.latents.dtype == np.float32 and back.step_noise.dtype == np.float32


def _bad(tmp_path, **arrays):
    p = tmp_path / f"bad{len(list(tmp_path.glob('bad*.npz')))}.npz"
    np.savez(p, **arrays)
    return p


def test_noise_file_faults_are_one_line_monkey_errors(tmp_path):
    shape = (1, 4, 8, 8)
    lat, sn = np.zeros(shape, np.float32), np.zeros((7, *shape), np.float32)
    nan = sn.copy()
    nan[3, 0, 0, 0, 0] = np.nan
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    cases = {
        "missing": tmp_path / "nope.npz",
        "directory": tmp_path,
        "junk": tmp_path / "junk.npz",
        "no step_noise": _bad(tmp_path, latents=lat),
    }
    for name, path in cases.items():
        with pytest.raises(MonkeyError) as e:
            load_noise_file(path, shape, 8)
        assert "\n" not in str(e.value), name
    for kwargs, needle in [
        (dict(latents=lat.astype(np.int32), step_noise=sn), "dtype"),
        (dict(latents=np.zeros((1, 4, 8, 9), np.float32), step_noise=sn), "shape"),
        (dict(latents=lat, step_noise=sn[:, 0]), "shape"),
        (dict(latents=lat, step_noise=sn[:3]), "needs 7"),
        (dict(latents=lat, step_noise=nan), "NaN"),
    ]:
        with pytest.raises(MonkeyError, match=needle) as e:
            load_noise_file(_bad(tmp_path, **kwargs), shape, 8)
        assert "\n" not in str(e.value)


def test_bad_arguments():
    with pytest.raises(MonkeyError):
        TorchCPURandn(-1)
    with pytest.raises(MonkeyError):
        TorchCPURandn(0, "neon")
    with pytest.raises(MonkeyError):
        NoisePlan.from_seed(0, (1, 3, 8, 8), 4)
    with pytest.raises(MonkeyError):
        NoisePlan.from_seed(0, (1, 4, 8, 8), 8).for_steps(10)


def test_runtime_modules_stay_lean():
    code = (
        "import sys\n"
        "import monkey_trt.runtime.noise, monkey_trt.runtime.scheduler, monkey_trt.runtime.images, monkey_trt.runtime.tokenizer\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'diffusers', 'transformers', 'safetensors'})\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""
