"""Issue 25, class 7: strict types at every face. The Python API answers a bad argument with MonkeyError (never a
TypeError, AttributeError or OSError); HTTP refuses duplicate JSON keys, numbers spelt with `_` or non-ASCII digits,
mixed-type lists and non-boolean booleans with a 400 JSON error."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from monkey_trt.core.config import MonkeyConfig, Request
from monkey_trt.core.errors import MonkeyError

ONE = {"steps_mask_pass": 1, "mask_steps": (0,), "steps_final": 1, "masked_steps": (0,)}  # 2 UNet calls


@pytest.mark.parametrize("options", [{"ort_cache": 123}, {"ort_cache": ""}, {"threads": "2"}, {"providers": 123},
                                     {"cuda_graph": "yes"}, {"mask_pass": 3}, {"bogus": 1}])
def test_from_engine_dir_options(engine_dir, options):
    from monkey_trt.runtime.pipeline import MonkeyPipeline

    with pytest.raises(MonkeyError):
        MonkeyPipeline.from_engine_dir(engine_dir, backend="ort", **options)


@pytest.mark.parametrize("root", [123, None, b"engine", ""])
def test_engine_dir_path_type(root):
    from monkey_trt.runtime.pipeline import MonkeyPipeline

    with pytest.raises(MonkeyError, match="engine directory must be a folder path"):
        MonkeyPipeline.from_engine_dir(root)


def _calls(subject):
    req = Request("a toy", 64, 64, seed=0, config=MonkeyConfig(**ONE))
    return {
        "generate(image=123)": lambda p: p.generate("x", 123, **ONE),
        "generate(image=None)": lambda p: p.generate("x", None, **ONE),
        "generate(image=ndarray)": lambda p: p.generate("x", np.zeros((8, 8, 3), np.uint8), **ONE),
        "generate(prompt=1)": lambda p: p.generate(1, subject, **ONE),
        "generate(bogus=1)": lambda p: p.generate("x", subject, bogus=1, **ONE),
        "noise='x'": lambda p: p(req, subject, noise="x"),
        "noise=1": lambda p: p(req, subject, noise=1),
        "unknown option": lambda p: p(req, subject, bogus=1),
        "decode_mask_pass='x'": lambda p: p(req, subject, decode_mask_pass="x"),
        "batch_passes='x'": lambda p: p(req, subject, batch_passes="x"),
        "progress=1": lambda p: p(req, subject, progress=1),
        "baseline_scale='1'": lambda p: p(req, subject, baseline_scale="1"),
        "encode_subject(1)": lambda p: p.encode_subject(1),
        "encode_prompt(1)": lambda p: p.encode_prompt(1),
        "decode('x')": lambda p: p.decode("x"),
    }


@pytest.mark.parametrize("case", list(_calls(None)))
def test_pipeline_arguments(runtime, subject, case):
    with pytest.raises(MonkeyError):
        _calls(subject)[case](runtime)


@pytest.mark.parametrize("case", ["noise='x'", "unknown option", "decode_mask_pass='x'", "progress=1", "encode_subject(1)"])
def test_reference_arguments(reference, subject, case):
    with pytest.raises(MonkeyError):
        _calls(subject)[case](reference)


def test_prompt_of_another_type_says_so():
    with pytest.raises(MonkeyError, match="prompt must be a string, got int"):
        Request(1, 64, 64)


def test_save_refuses_bad_paths_in_one_line(runtime, subject, tmp_path):
    out = runtime(Request("a toy", 64, 64, seed=0, config=MonkeyConfig(**ONE)), subject)
    for bad in ("/proc/x", "/proc/self/x/y"):
        with pytest.raises(MonkeyError, match="cannot write") as e:
            out.save(bad)
        assert "staging" not in str(e.value)
    for bad in (123, None, ""):
        with pytest.raises(MonkeyError, match="folder path"):
            out.save(bad)
    with pytest.raises(MonkeyError):
        out.save(tmp_path / "o", subject=123)
    assert not (tmp_path / "o").exists()
    assert (out.save(tmp_path / "ok") / "monkey.png").is_file()


# -- HTTP --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(engine_dir):
    pytest.importorskip("fastapi")
    from starlette.testclient import TestClient

    from monkey_trt.serve.app import create_app
    from monkey_trt.serve.service import MonkeyService, ServeConfig

    service = MonkeyService(ServeConfig(engine_dir, warmup=False)).load()
    with TestClient(create_app(service)) as c:
        yield c


@pytest.fixture(scope="module")
def b64(tiny_model_dir) -> str:
    return base64.b64encode((tiny_model_dir / "subject.png").read_bytes()).decode()


def _raw(client, text: str):
    return client.post("/v1/generate", content=text.encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize("body, needle", [
    ('{{"prompt": "x", "image": "{b64}", "seed": 1, "seed": 2}}', "'seed' is given more than once"),
    ('{{"prompt": "x", "prompt": "y", "image": "{b64}"}}', "'prompt' is given more than once"),
    ('{{"prompt": "x", "image": "{b64}", "seed": "6_4"}}', "'seed' must be an integer"),
    ('{{"prompt": "x", "image": "{b64}", "seed": "\\uff16\\uff14"}}', "'seed' must be an integer"),
    ('{{"prompt": "x", "image": "{b64}", "threshold": "0_5"}}', "'threshold' must be a number"),
    ('{{"prompt": "x", "image": "{b64}", "threshold": "\\u0660.5"}}', "'threshold' must be a number"),
    ('{{"prompt": "x", "image": "{b64}", "mask_steps": [1, "2"]}}', "'mask_steps' must be a list of integers only"),
    ('{{"prompt": "x", "image": "{b64}", "mask_steps": [1, 2.0]}}', "'mask_steps' must be a list of integers only"),
    ('{{"prompt": "x", "image": "{b64}", "final_step_scales": [1, "0.5", 1, 1, 1, 1, 1, 1]}}', "list of numbers only"),
    ('{{"prompt": "x", "image": "{b64}", "mask_steps": [true]}}', "list of integers only"),
    ('{{"prompt": "x", "image": "{b64}", "baseline": "yes"}}', "'baseline' must be true or false"),
    ('{{"prompt": "x", "image": "{b64}", "baseline": 1}}', "'baseline' must be true or false"),
])
def test_http_json_types(client, b64, body, needle):
    r = _raw(client, body.format(b64=b64))
    assert r.status_code == 400 and needle in r.json()["error"], r.text


@pytest.mark.parametrize("fields, needle", [
    ({"seed": "6_4"}, "'seed' must be an integer"), ({"height": "\uff16\uff14"}, "'height' must be an integer"),
    ({"threshold": "0_5"}, "'threshold' must be a number"), ({"mask_steps": "1,\u0662"}, "'mask_steps' must be an integer"),
    ({"baseline": "maybe"}, "'baseline' must be true or false"),
])
def test_http_form_numbers_are_ascii(client, tiny_model_dir, fields, needle):
    files = {"image": ("s.png", (tiny_model_dir / "subject.png").read_bytes(), "image/png")}
    r = client.post("/v1/generate", data={"prompt": "x", **fields}, files=files)
    assert r.status_code == 400 and needle in r.json()["error"], r.text


@pytest.mark.parametrize("field, value, needle", [
    ("steps_final", "4", "'steps_final' must be an integer (a JSON number, not text)"), ("seed", "7", "'seed' must be an integer"),
    ("seed", 7.0, "'seed' must be an integer"), ("threshold", "0.5", "'threshold' must be a number (a JSON number, not text)"),
    ("height", "64", "'height' must be an integer"), ("baseline_scale", "1", "'baseline_scale' must be a number"),
])
def test_http_json_numbers_are_json_numbers(client, b64, field, value, needle):
    """The JSON body's schema says integer/number: text there is refused (a form's fields are text by nature)."""
    r = client.post("/v1/generate", content=json.dumps({"prompt": "x", "image": b64, field: value}),
                    headers={"content-type": "application/json"})
    assert r.status_code == 400 and needle in r.json()["error"], r.text


def test_http_plain_numbers_still_parse(client, b64):
    """The strict parser still takes what is valid: numbers as JSON numbers, lists of one type (or the documented "1,2")."""
    body = {"prompt": "x", "image": b64, "seed": 7, "threshold": 5e-1, "baseline": True, **{k: list(v) if isinstance(v, tuple) else v for k, v in ONE.items()}}
    body["mask_steps"] = ",".join(map(str, body["mask_steps"]))
    r = client.post("/v1/generate", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["seed"] == 7 and r.json()["config"]["threshold"] == 0.5 and r.json()["baseline_scale"] == 1.0
