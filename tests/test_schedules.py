"""The schedule knobs (adapter_steps, final_step_scales, step_rule): the torch reference, ONNX Runtime and
the published baseline run them identically (mask identical, image within each pair's usual tolerance)."""

from __future__ import annotations

import numpy as np
import pytest

from monkey_trt.core.config import MonkeyConfig, Request, knobs
from monkey_trt.core.errors import MonkeyError
from monkey_trt.runtime.method import pairable_steps

ORT_ATOL = 2e-3  # tests/test_export_ort.py's IMAGE_ATOL
PUBLISHED_ATOL = 1e-4  # tests/test_published.py's

SCHEDULES = {
    # IP-Adapter on without the mask at steps 0-1, masked at 2-5 (the authors' final_adapter_steps beside final_mask_steps)
    "adapter-0-1": MonkeyConfig(adapter_steps=(0, 1), masked_steps=(2, 3, 4, 5)),
    # the authors' "all steps" variant: the mask at all 8 steps, scale 1.0 at every step
    "all-steps": MonkeyConfig(masked_steps=tuple(range(8))),
    # the authors' step defaults at 12 final steps: range(12)[3:-3]
    "quarters-12": MonkeyConfig(step_rule="quarters", steps_final=12),
    # per-step scales beside unmasked steps
    "step-scales": MonkeyConfig(adapter_steps=(0, 1), final_step_scales=(0.5, 0.25, 1.0, 0.75, 1.0, 1.0, 0.0, 0.0)),
}


@pytest.fixture(scope="module")
def published(tiny_model_dir):
    from monkey_trt.baselines.published import PublishedPipeline

    return PublishedPipeline.from_pretrained(str(tiny_model_dir / "base"), str(tiny_model_dir / "ip-adapter"))


def test_the_schedules_resolve_as_the_authors_code():
    q = SCHEDULES["quarters-12"]
    assert q.mask_steps == (1, 2) and q.masked_steps == (3, 4, 5, 6, 7, 8)  # range(4)[1:-1], range(12)[3:-3]
    assert MonkeyConfig(step_rule="quarters") == MonkeyConfig(step_rule="quarters", masked_steps=(2, 3, 4, 5))
    assert MonkeyConfig(step_rule="quarters", steps_final=12, masked_steps=(4,)).masked_steps == (4,)  # a given list stays
    assert SCHEDULES["adapter-0-1"].final_mask_use() == ["open"] * 2 + ["masked"] * 4 + ["off"] * 2
    assert SCHEDULES["adapter-0-1"].final_scales() == [1.0] * 6 + [0.0] * 2
    assert SCHEDULES["step-scales"].final_scales() == [0.5, 0.25, 1.0, 0.75, 1.0, 1.0, 0.0, 0.0]
    assert MonkeyConfig().final_mask_use() == ["off"] * 2 + ["masked"] * 4 + ["off"] * 2  # the paper's: unchanged


@pytest.mark.parametrize("kw,message", [
    ({"adapter_steps": (2, 3), "masked_steps": (2, 3, 4)}, r"steps \[2, 3\] are in both masked_steps and adapter_steps"),
    ({"adapter_steps": (8,)}, r"adapter_steps \[8\] must lie in 0\.\.7"),
    ({"final_step_scales": (1.0,) * 5}, "final_step_scales has 5 entries; steps_final is 8"),
    ({"final_step_scales": (0, 0, 1, 1, 1, 1, 0.5, 0)}, r"gives steps \[6\] a scale, but they are in neither"),
    ({"final_step_scales": (0, 0, 1, 1, 1, 9, 0, 0)}, r"final_step_scales\[5\] must be in \[0, 4\], got 9"),
    ({"final_step_scales": (0, 0, 1, 1, 1, 1, 0, 0), "scale_final": 0.5}, "give scale_final or final_step_scales, not both"),
    ({"step_rule": "quarters", "steps_mask_pass": 3}, "step_rule quarters derives mask_steps from steps_mask_pass >= 4"),
    ({"step_rule": "authors"}, "step_rule must be one of fixed, quarters"),
])
def test_bad_combinations_are_one_message(kw, message):
    with pytest.raises(MonkeyError, match=message):
        MonkeyConfig(**kw)


def test_pairing_only_takes_mask_independent_steps():
    assert pairable_steps(SCHEDULES["adapter-0-1"]) == 2  # unmasked at pass 1's scale: pairable (no mask)
    assert pairable_steps(SCHEDULES["all-steps"]) == 0
    assert pairable_steps(SCHEDULES["quarters-12"]) == 3  # pass 1 needs 3 steps; pass 2's first masked step is 3
    assert pairable_steps(SCHEDULES["step-scales"]) == 0  # scale 0.5 differs from pass 1's shared 1.0
    assert pairable_steps(MonkeyConfig(adapter_steps=(0,), scale_mask_pass=0.5)) == 0


def test_batched_equals_sequential(reference, subject):
    """Pass 2's unmasked steps 0-1 ride in pass 1's batch with no mask (test_method.py covers the zeros-mask pairing)."""
    req = Request("a toy in the jungle", 64, 64, seed=4, config=SCHEDULES["adapter-0-1"])
    seq, bat = reference(req, subject, batch_passes=False), reference(req, subject, batch_passes=True)
    assert np.array_equal(seq.mask.mask, bat.mask.mask) and np.abs(seq.image - bat.image).max() <= 1e-5
    assert [(c.passes, c.step) for c in bat.unet_calls[:3]] == [("p1+p2", 0), ("p1+p2", 1), ("p1", 2)]


@pytest.fixture(scope="module")
def paper_image(reference, subject) -> np.ndarray:
    """The paper schedule's image of the case below: every schedule must change it."""
    return reference(Request("a toy in the jungle", 64, 64, seed=123), subject).image


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_reference_ort_and_published_agree(reference, runtime, published, subject, paper_image, name):
    cfg = SCHEDULES[name]
    req = Request("a toy in the jungle", 64, 64, seed=123, config=cfg)
    ref, ort, pub = reference(req, subject), runtime(req, subject), published(req, subject)
    assert 0 < ref.mask.coverage < 1
    assert np.array_equal(ref.mask.mask, ort.mask.mask) and np.array_equal(ref.mask.mask, pub.mask.mask)
    assert np.abs(ref.image - ort.image).max() <= ORT_ATOL
    assert np.abs(ref.image - pub.image).max() <= PUBLISHED_ATOL
    assert [c.passes for c in ref.unet_calls].count("p2") == cfg.steps_final
    assert np.abs(ref.image - paper_image).max() > 1e-3, "the schedule must change the image"


def test_http_fields_take_the_schedule_knobs():
    """Form text like the CLI's, JSON arrays; a bad list or combination is a 400 with one line (serve/schema.py)."""
    from monkey_trt.serve.schema import ApiError, field_schema, parse_fields

    form = parse_fields({"prompt": "x", "adapter_steps": "0,1", "final_step_scales": "0.5,0.25,1,0.75,1,1,0,0"}, (64, 64))
    assert form.request.config == SCHEDULES["step-scales"]
    doc = parse_fields({"prompt": "x", "adapter_steps": [0, 1], "final_step_scales": [0.5, 0.25, 1, 0.75, 1, 1, 0, 0],
                        "step_rule": "fixed"}, (64, 64))
    assert doc.request.config == SCHEDULES["step-scales"]
    for fields, needle in (({"final_step_scales": "1,x"}, "'final_step_scales' must be a number"),
                           ({"final_step_scales": 3}, "must be a list of numbers"),
                           ({"adapter_steps": "3"}, "in both masked_steps and adapter_steps"),
                           ({"step_rule": "quarters", "steps_final": "2"}, "step_rule quarters derives")):
        with pytest.raises(ApiError, match=needle) as e:
            parse_fields({"prompt": "x", **fields}, (64, 64))
        assert e.value.status == 400
    k = knobs(MonkeyConfig)
    assert field_schema(k["final_step_scales"], form=False)["oneOf"][0] == {"type": "array", "items": {"type": "number"}}
    assert field_schema(k["adapter_steps"], form=True)["default"] == "" and field_schema(k["step_rule"], form=True)["default"] == "fixed"
