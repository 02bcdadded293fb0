"""One source for every knob: the Knobs of core.config drive the checks, `generate`'s options and the HTTP schema."""

from __future__ import annotations

import re

import pytest

from monkey_trt.core.config import MonkeyConfig, Request, knobs
from monkey_trt.core.errors import MonkeyError
from monkey_trt.enginedir.networks import ModelDims


def test_ranges_come_from_the_knobs():
    for k in knobs(MonkeyConfig).values():
        if k.hi is None:
            continue
        above = k.hi + (1 if k.kind is int else 0.5)
        with pytest.raises(MonkeyError, match="^" + re.escape(f"{k.name} must be in {k.range_text()}, got {above}") + "$"):
            MonkeyConfig(**{k.name: above})
    assert knobs(MonkeyConfig)["threshold"].range_text() == "[0, 1)" and knobs(Request)["seed"].range_text() == "0..2**63-1"
    with pytest.raises(MonkeyError, match=r"^height must be in 64\.\.2048, got 8$"):
        Request("x", height=8)


def test_the_model_bounds_mask_token():
    """The IP token count is the model's: checked where the model is known, with the message of old."""
    for token in (4, -1):
        cfg = MonkeyConfig(mask_token=token)  # no model yet: accepted
        with pytest.raises(MonkeyError, match=rf"^mask_token must be in 0\.\.3, got {token}$"):
            cfg.check_model(ModelDims())
    MonkeyConfig(mask_token=15).check_model(ModelDims(n_ip_tokens=16))  # an IP-Adapter plus has 16


def test_latent_shape_follows_the_model():
    req = Request("x", height=64, width=96)
    assert req.latent_shape(ModelDims()) == (1, 4, 8, 12)
    assert req.latent_shape(ModelDims(latent_channels=16, vae_factor=16)) == (1, 16, 4, 6)


def test_generate_options_are_the_knobs():
    import typer.main

    from monkey_trt.cli import app

    params = {p.name: p for p in typer.main.get_command(app).commands["generate"].params}
    names = list(params)
    config = knobs(MonkeyConfig)
    assert names[-len(config):] == list(config), "the knob options close generate's options, in field order"
    for k in [*config.values(), *(knobs(Request)[n] for n in ("prompt", "seed", "height", "width"))]:
        p = params[k.name]
        assert p.opts == [k.flag] and p.help.startswith(k.help)
        if k.name in config:
            assert p.default == (",".join(map(str, k.default)) if k.kind is tuple else k.default)
    assert params["prompt"].required and params["height"].default is None  # the engine's opt size, else 512


def test_http_fields_and_openapi_come_from_the_knobs():
    from fastapi.testclient import TestClient

    from monkey_trt.serve.app import create_app
    from monkey_trt.serve.schema import FIELDS, KNOBS

    assert list(KNOBS) == list(knobs(MonkeyConfig))
    assert list(FIELDS) == ["prompt", "seed", "height", "width", "baseline", "baseline_scale", *knobs(MonkeyConfig)]
    spec = TestClient(create_app()).get("/openapi.json").json()
    content = spec["paths"]["/v1/generate"]["post"]["requestBody"]["content"]
    for media in ("multipart/form-data", "application/json"):
        schema = content[media]["schema"]
        assert list(schema["properties"]) == ["image", "background_image", *FIELDS] and schema["required"] == ["image", "prompt"]
    props = content["multipart/form-data"]["schema"]["properties"]
    assert props["threshold"] == {"type": "number", "minimum": 0.0, "exclusiveMaximum": 1.0,
                                  "description": knobs(MonkeyConfig)["threshold"].help, "default": 0.5}
    assert props["mask_steps"]["default"] == "1,2" and props["steps_final"]["maximum"] == 50
    json_props = content["application/json"]["schema"]["properties"]
    assert json_props["mask_steps"]["default"] == [1, 2] and json_props["baseline"]["type"] == "boolean"


def test_mask_token_against_the_manifest_before_any_work(engine_dir, tiny_model_dir, tmp_path, capsys, monkeypatch):
    from monkey_trt import cli
    from monkey_trt.commands import generate as job

    monkeypatch.setattr(job, "run_generate", lambda *a, **k: pytest.fail("the engine's limits are checked first"))
    argv = ["generate", "--engine-dir", str(engine_dir), "--image", str(tiny_model_dir / "subject.png"), "--prompt", "a toy",
            "--out", str(tmp_path / "o"), "--mask-token", "4"]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip() == "error: mask_token must be in 0..3, got 4"
    assert not (tmp_path / "o").exists()
