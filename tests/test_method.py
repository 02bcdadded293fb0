"""The method loop (runtime/method.py): exact pass batching equals the sequential passes on every backend."""

from __future__ import annotations

import numpy as np
import pytest

from monkey_trt.core.config import MonkeyConfig, Request
from monkey_trt.runtime.method import pairable_steps

CASES = [("a toy on the beach", 64, 64, 0), ("a toy in the jungle", 64, 96, 1), ("a toy on a wooden floor", 128, 128, 2)]


def test_pairable_steps_follow_the_schedule():
    assert pairable_steps(MonkeyConfig()) == 2  # pass 2's first masked step is 2; pass 1 needs 3 steps
    assert pairable_steps(MonkeyConfig(masked_steps=(0, 1, 2))) == 0
    assert pairable_steps(MonkeyConfig(mask_steps=(0,), masked_steps=(4,))) == 1  # pass 1 stops after step 0
    assert pairable_steps(MonkeyConfig(steps_mask_pass=6, mask_steps=(5,), masked_steps=(7,))) == 6


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_batched_passes_equal_sequential(backend, reference, runtime, subject):
    """Mask identical, image within 1e-5 (measured: ORT 0.0, torch 9.8e-7 from batch-2 GEMM blocking)."""
    pipe = reference if backend == "torch" else runtime
    for prompt, h, w, seed in CASES:
        req = Request(prompt, h, w, seed=seed)
        seq = pipe(req, subject, batch_passes=False)
        bat = pipe(req, subject, batch_passes=True)
        assert np.array_equal(seq.mask.mask, bat.mask.mask) and 0 < seq.mask.coverage < 1
        assert np.abs(seq.image - bat.image).max() <= 1e-5
        assert [(c.passes, c.step, c.batch) for c in bat.unet_calls[:3]] == [("p1+p2", 0, 2), ("p1+p2", 1, 2), ("p1", 2, 1)]
        assert len(bat.unet_calls) == 9 and len(seq.unet_calls) == 11 and bat.batched_steps == 2
        assert all(c.batch == 1 for c in seq.unet_calls) and "batched_passes" in bat.timings


def test_batching_with_other_knobs(reference, subject):
    """A later first masked step pairs every pass-1 step; pass 1 then needs no call of its own."""
    cfg = MonkeyConfig(masked_steps=(3, 4, 5))
    req = Request("a toy on the beach", 64, 64, seed=3, config=cfg)
    seq, bat = reference(req, subject, batch_passes=False), reference(req, subject, batch_passes=True)
    assert np.array_equal(seq.mask.mask, bat.mask.mask) and np.abs(seq.image - bat.image).max() <= 1e-5
    assert [c.passes for c in bat.unet_calls] == ["p1+p2"] * 3 + ["p2"] * 5


def test_cpu_defaults_to_sequential(reference, runtime, subject):
    assert not reference.batch_passes_default and not runtime.batch_passes_default
    out = runtime(Request("a toy", 64, 64), subject)
    assert out.batched_steps == 0 and len(out.unet_calls) == 11
