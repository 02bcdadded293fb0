"""Issue 16: /docs works offline (no CDN), and the OpenAPI schema types every field and documents every response.
No engine needed: the app without a service."""

from __future__ import annotations

import re

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from monkey_trt.serve.app import create_app, result_json  # noqa: E402


@pytest.fixture(scope="module")
def client():
    return TestClient(create_app(None))


@pytest.fixture(scope="module")
def openapi(client):
    return client.get("/openapi.json").json()


def test_docs_page_needs_nothing_outside_the_server(client):
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[a-z]{2,}", page) == [], "no URL outside the server"
    assert "<script" not in page.lower() or "src=" not in page.lower()
    assert "cdn" not in page.lower()
    for path in ("/v1/generate", "/healthz", "/readyz", "/metrics", "mask_steps", "413"):
        assert path in page, f"/docs does not mention {path}"


def _typed(schema: dict) -> bool:
    if "oneOf" in schema or "anyOf" in schema:
        return all(_typed(s) for s in schema.get("oneOf", schema.get("anyOf", [])))
    if "type" not in schema:
        return False
    if schema["type"] == "array":
        return _typed(schema.get("items", {}))
    if schema["type"] == "object":
        return all(_typed(s) for s in schema.get("properties", {}).values()) and \
            (not isinstance(schema.get("additionalProperties"), dict) or _typed(schema["additionalProperties"]))
    return True


def test_every_request_field_is_typed(openapi):
    body = openapi["paths"]["/v1/generate"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    for ctype, c in body.items():
        props = c["schema"]["properties"]
        assert {"image", "prompt", "seed", "height", "width", "mask_steps", "baseline"} <= set(props)
        for name, s in props.items():
            assert _typed(s), f"{ctype} field {name} is untyped: {s}"
            assert s.get("description"), f"{ctype} field {name} has no description"


def test_every_response_is_documented_and_typed(openapi):
    generate = openapi["paths"]["/v1/generate"]["post"]["responses"]
    assert {"200", "400", "408", "413", "415", "422", "429", "500", "503", "504"} <= set(generate)
    assert set(generate["200"]["content"]) == {"application/json", "image/png"}
    for path, ops in openapi["paths"].items():
        for method, op in ops.items():
            assert "200" in op["responses"], (path, method)
            for status, resp in op["responses"].items():
                assert resp.get("description"), (path, status)
                assert resp.get("content"), f"{method} {path} {status} has no body schema"
                for ctype, c in resp["content"].items():
                    assert _typed(c["schema"]), f"{method} {path} {status} {ctype}: untyped {c['schema']}"
                if status != "200":
                    assert c["schema"]["required"] == ["error", "request_id"]
    assert list(openapi["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]


def test_generate_json_schema_matches_what_the_service_answers(openapi):
    """A real `result_json` answer validates against the documented schema (so the two cannot drift apart)."""
    import jsonschema

    from monkey_trt.core.config import Request
    from monkey_trt.runtime.mask import MaskResult
    from monkey_trt.runtime.result import MonkeyOutput
    from monkey_trt.serve.schema import GenerateParams

    from monkey_trt.serve.schema import Upload, Uploads

    mask = MaskResult(np.zeros((64, 64), np.float32), (8, 8), ())
    out = MonkeyOutput(image=np.zeros((64, 64, 3), np.float32), mask=mask, timings={"unet": 0.1}, backend="ort (CPUExecutionProvider)")
    params = GenerateParams(Request(prompt="x", height=64, width=64), 1.0)
    answer = result_json("rid", "host:1", params, out, {"subject": True, "prompt": False}, {"unet": 0.1, "total": 0.2},
                         {"image_png": b"png", "mask_png": b"png", "baseline_png": b"png", "mask_1_png": b"png"},
                         Uploads((Upload("s.png", b""),)))
    schema = openapi["paths"]["/v1/generate"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    jsonschema.validate(answer, schema)
    assert set(answer) == set(schema["properties"]), "every answered field is documented, and no more"
    # two subjects and a background (issue 22): each subject's mask and the background's are documented too
    two = MonkeyOutput(image=out.image, mask=mask, timings={"unet": 0.1}, backend="ort", masks=(mask, mask), overlap=0.25,
                       lost=(0.0, 0.25), background_mask=np.ones((64, 64), np.float32), subjects=2, scales=(1.0, 0.5),
                       background_scale=0.7)
    answer = result_json("rid", "host:1", params, two, {"subject": False, "prompt": False}, {"total": 0.2},
                         {"image_png": b"png", "mask_png": b"png", "mask_1_png": b"1", "mask_2_png": b"2", "background_mask_png": b"b"},
                         Uploads((Upload("a.png", b""), Upload(None, b"")), Upload("bg.png", b"")))
    jsonschema.validate(answer, schema)
    assert [(s["index"], s["image"], s["scale"], s["lost_to_overlap"]) for s in answer["subjects"]] == [(1, "a.png", 1.0, 0.0),
                                                                                                      (2, None, 0.5, 0.25)]
    assert answer["background"]["image"] == "bg.png" and answer["background"]["scale"] == 0.7 and answer["overlap"] == 0.25


def test_error_answers_match_the_error_schema(client, openapi):
    import jsonschema

    r = client.get("/readyz")
    assert r.status_code == 503
    jsonschema.validate(r.json(), openapi["paths"]["/readyz"]["get"]["responses"]["503"]["content"]["application/json"]["schema"])


def test_integer_ranges_are_integers(client, openapi):
    """Before: FastAPI's OpenAPI model turned every bound into a float: `height` showed `≥ 64.0`, the seed's
    maximum `9.223372036854776e+18` (not even the right number)."""
    from monkey_trt.serve.schema import request_body_schema

    for path in ("/v1/generate", "/v1/generate/stream"):
        body = openapi["paths"][path]["post"]["requestBody"]
        assert body == request_body_schema()  # exactly as written
        for c in body["content"].values():
            for name, s in c["schema"]["properties"].items():
                if s.get("type") == "integer":
                    for bound in ("minimum", "maximum", "exclusiveMaximum", "default"):
                        assert type(s.get(bound, 0)) is int, (path, name, bound, s[bound])
    assert openapi["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]["seed"]["maximum"] == 2**63 - 1
    page = client.get("/docs").text
    assert "&ge; 64," in page and "&le; 2048<" in page and "&le; 9223372036854775807" in page and "64.0" not in page
