"""Issue 25, class 3: numbers that are not numbers. A stage whose output holds NaN/inf is an error naming the
stage (CLI/API: MonkeyError, one line; HTTP: a JSON 500; the service's warm-up keeps /readyz red), and
every float knob refuses NaN/inf (API, CLI, HTTP). Normal runs are unchanged (checks only read the arrays)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monkey_trt.core.config import MonkeyConfig, Request
from monkey_trt.core.errors import MonkeyError, NonFiniteOutput
from monkey_trt.runtime.method import run_monkey

SHORT = MonkeyConfig(steps_mask_pass=2, mask_steps=(1,), steps_final=3, masked_steps=(1, 2))


class Poisoned:
    """The real ORT pipeline, with one stage's output turned to NaN (a broken engine: e.g. NaN 8-bit scales)."""

    def __init__(self, pipe, stage: str):
        self._pipe, self._stage, self._decodes = pipe, stage, 0

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def encode_prompt(self, prompt):
        text, truncated = self._pipe.encode_prompt(prompt)
        return (text * np.nan if self._stage == "encode_prompt" else text), truncated

    def encode_subject(self, subject):
        tokens = self._pipe.encode_subject(subject)
        return tokens * np.inf if self._stage == "encode_subject" else tokens

    def unet_session(self, text, ip_tokens, w_emb, masks):
        session = self._pipe.unet_session(text, ip_tokens, w_emb, masks)
        masked = any(m is not None for m in masks)  # pass 2's masked steps

        def call(latents, timesteps, scale, want_map):
            eps, maps = session(latents, timesteps, scale, want_map)
            if self._stage == "mask_pass" and not masked or self._stage == "final_pass" and masked:
                eps = np.full_like(eps, np.nan)
            if self._stage == "mask" and maps is not None:
                maps = np.full_like(maps, np.nan)
            return eps, maps

        return call

    def decode(self, latents):
        image = self._pipe.decode(latents)
        self._decodes += 1
        bad = {"decode": 1, "decode_mask_pass": 2, "decode_baseline": 3}.get(self._stage)
        return np.full_like(image, np.nan) if self._decodes == bad else image


@pytest.mark.parametrize("stage", ["encode_prompt", "encode_subject", "mask_pass", "mask", "final_pass", "decode",
                                   "decode_mask_pass", "decode_baseline"])
def test_a_non_finite_stage_is_an_error_naming_it(runtime, subject, stage):
    req = Request("a toy", 64, 64, seed=0, config=SHORT)
    with pytest.raises(NonFiniteOutput) as e:
        run_monkey(Poisoned(runtime, stage), req, subject, baseline_scale=1.0, decode_mask_pass=True, batch_passes=False)
    named = "mask_pass" if stage == "mask" else stage  # the map comes out of pass 1's UNet call
    assert f"the {named} stage produced non-finite values" in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, MonkeyError)  # the CLI's one line, exit 2


def test_checks_change_nothing_of_a_normal_run(runtime, subject):
    """The same request twice through the checked loop and once through an unchecked copy of the stages: equal bits."""
    req = Request("a toy", 64, 64, seed=3, config=SHORT)
    a = runtime(req, subject, baseline_scale=0.5)
    b = run_monkey(Poisoned(runtime, "none"), req, subject, baseline_scale=0.5, batch_passes=runtime.spec.batch_passes)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.baseline_image, b.baseline_image)
    assert np.isfinite(a.image).all()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "1", True, 5.0, -0.5])
def test_baseline_scale_is_checked_in_the_api(runtime, subject, bad):
    with pytest.raises(MonkeyError, match="baseline_scale"):
        runtime(Request("a toy", 64, 64, config=SHORT), subject, baseline_scale=bad)


@pytest.mark.parametrize("name", [n for n, k in __import__("monkey_trt.core.config", fromlist=["knobs"]).knobs(MonkeyConfig).items()
                                  if k.kind is float])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_float_knobs_refuse_non_finite(name, bad):
    with pytest.raises(MonkeyError, match="finite"):
        MonkeyConfig(**{name: bad})


def test_cli_refuses_nan_knobs_and_baseline_scale(engine_dir, tiny_model_dir, tmp_path, capsys):
    from monkey_trt.cli import main

    base = ["generate", "--engine-dir", str(engine_dir), "--image", str(tiny_model_dir / "subject.png"), "--prompt", "x"]
    for extra in (["--threshold", "nan"], ["--scale-final", "inf"], ["--baseline", "--baseline-scale", "nan"]):
        capsys.readouterr()
        assert main(base + ["--out", str(tmp_path / extra[-2].strip("-"))] + extra) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and len(err.splitlines()) == 1, err
        assert not (tmp_path / extra[-2].strip("-")).exists()


def test_ray_replica_resources_refuse_non_finite():
    ray_app = pytest.importorskip("monkey_trt.serve.ray_app")
    for bad in (math.nan, math.inf):
        with pytest.raises(MonkeyError, match="finite"):
            ray_app.RayOptions(gpus_per_replica=bad)


# -- the service: a 500 naming the stage, a red /readyz after a non-finite warm-up, 400 for NaN fields ---------------
def _nan_decode(pipe):
    original = pipe.decode
    pipe.decode = lambda latents: np.full_like(original(latents), np.nan)
    return original


def test_service_answers_500_naming_the_stage_and_warmup_stays_red(engine_dir, subject_png):
    pytest.importorskip("fastapi")
    from monkey_trt.serve.app import create_app
    from monkey_trt.serve.service import MonkeyService, ServeConfig
    from tests.test_serve import FAST, ThreadServer, post

    service = MonkeyService(ServeConfig(engine_dir, warmup=True)).load()
    original = _nan_decode(service.pipe)
    s = ThreadServer(create_app(service))
    try:
        service.worker.submit_sync(lambda: None).result(120)  # the app's warm-up (the worker's first job) is done
        r = s.client.get("/readyz")
        assert r.status_code == 503 and "decode stage produced non-finite" in r.json()["error"]
        service.warm_error = None  # as if the warm-up had passed: a request meets the broken decode
        service.ready.set()
        r = post(s.client, subject_png, prompt="x", **FAST)
        assert r.status_code == 500 and "decode stage produced non-finite" in r.json()["error"], r.text
        service.pipe.decode = original
        for fields in ({"baseline_scale": "nan"}, {"baseline_scale": "inf"}, {"threshold": "nan"}, {"scale_final": "-inf"}):
            r = post(s.client, subject_png, prompt="x", **FAST, **fields)
            assert r.status_code == 400 and "finite" in r.json()["error"], (fields, r.text)
        assert post(s.client, subject_png, prompt="x", **FAST).status_code == 200
    finally:
        s.stop()


@pytest.fixture(scope="module")
def subject_png(tiny_model_dir) -> bytes:
    return (tiny_model_dir / "subject.png").read_bytes()

