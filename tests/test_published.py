"""The `published` baseline (diffusers' LCM pipeline, two full passes, kept attention weights) equals our torch backend."""

from __future__ import annotations

import numpy as np
import pytest

from monkey_trt.core.config import Request


@pytest.fixture(scope="module")
def published(tiny_model_dir):
    from monkey_trt.baselines.published import PublishedPipeline

    return PublishedPipeline.from_pretrained(str(tiny_model_dir / "base"), str(tiny_model_dir / "ip-adapter"))


@pytest.mark.parametrize("prompt,height,width,seed", [("a toy on the beach", 64, 64, 0), ("a toy in the jungle", 64, 96, 1)])
def test_published_equals_torch_backend(published, reference, subject, prompt, height, width, seed):
    """Mask identical; image max abs diff <= 1e-4 (measured 0.0 at 64x64)."""
    req = Request(prompt, height, width, seed=seed)
    pub, ours = published(req, subject), reference(req, subject)
    assert np.array_equal(pub.mask.mask, ours.mask.mask) and 0 < ours.mask.coverage < 1
    assert np.abs(pub.image - ours.image).max() <= 1e-4
    assert [c.passes for c in pub.unet_calls] == ["p1"] * 4 + ["p2"] * 8  # two full passes
    assert {"encode_prompt", "encode_subject", "mask_pass", "mask", "final_pass", "decode", "decode_mask_pass"} <= set(pub.timings)
