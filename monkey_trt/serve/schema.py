"""Request fields of `POST /v1/generate`, shared by the multipart form and the JSON body.

Field names follow the CLI options (`--mask-steps` -> `mask_steps`): both come from the Knobs of
`core.config` (`Request`, `MonkeyConfig`), as do each field's converter and its OpenAPI schema. Form
values arrive as strings, JSON values typed; both go through one table of converters, then through the
same validation as the CLI, so an HTTP client gets the CLI's messages. Every failure is an `ApiError`
with one message; nothing here touches the engine.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from monkey_trt.core.config import Knob, MonkeyConfig, Request, knobs
from monkey_trt.core.errors import MonkeyError


class ApiError(Exception):
    """A request the service refuses: HTTP `status` and one line of `message`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# numbers as text: ASCII digits only (Python's int()/float() also take `6_4` and full-width digits: refused here)
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_FLOAT_TEXT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(?i:nan|inf|infinity)")


def _int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise ApiError(400, f"field {name!r} must be an integer, got {v!r}")
    if isinstance(v, str) and not _INT_TEXT.fullmatch(v.strip()):
        raise ApiError(400, f"field {name!r} must be an integer (ASCII digits), got {v!r}")
    return int(v.strip()) if isinstance(v, str) else v


def _float(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ApiError(400, f"field {name!r} must be a number, got {v!r}")
    if isinstance(v, str) and not _FLOAT_TEXT.fullmatch(v.strip()):
        raise ApiError(400, f"field {name!r} must be a number (ASCII digits), got {v!r}")
    x = float(v)
    if not math.isfinite(x):
        raise ApiError(400, f"field {name!r} must be a finite number, got {v!r}")
    return x


def _str(name: str, v: Any) -> str:
    if not isinstance(v, str):
        raise ApiError(400, f"field {name!r} must be a string, got {v!r}")
    return v


def _bool(name: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return v.strip().lower() in ("1", "true", "yes", "on")
    raise ApiError(400, f"field {name!r} must be true or false, got {v!r}")


def _int_list(name: str, v: Any) -> tuple[int, ...]:
    """`[1, 2]` (JSON) or `"1,2"` (form, like the CLI)."""
    if isinstance(v, str):
        v = [x for x in v.replace(" ", "").split(",") if x != ""]
    if not isinstance(v, list):
        raise ApiError(400, f"field {name!r} must be a list of integers or '1,2', got {v!r}")
    return tuple(_int(name, x) for x in v)


def _float_list(name: str, v: Any) -> tuple[float, ...]:
    """`[0, 0.5]` (JSON) or `"0,0.5"` (form, like the CLI)."""
    if isinstance(v, str):
        v = [x for x in v.replace(" ", "").split(",") if x != ""]
    if not isinstance(v, list):
        raise ApiError(400, f"field {name!r} must be a list of numbers or '0,0.5', got {v!r}")
    return tuple(_float(name, x) for x in v)


_CONVERTERS: dict[type, Callable[[str, Any], Any]] = {int: _int, float: _float, str: _str, bool: _bool, tuple: _int_list}


def _converter(k: Knob) -> Callable[[str, Any], Any]:
    return _float_list if k.kind is tuple and k.item is float else _CONVERTERS[k.kind]


_SCALE = knobs(MonkeyConfig)["scale_final"]
# What to return besides MONKEY's image: the plain IP-Adapter image from the same noise.
BASELINE_KNOBS = {
    "baseline": Knob("baseline", bool, False, help="Also run plain IP-Adapter from the same noise (baseline_png)"),
    "baseline_scale": Knob("baseline_scale", float, None, lo=_SCALE.lo, hi=_SCALE.hi,
                           help="IP scale of the baseline (default: scale_final); implies baseline"),
}
# Every field but the image, in the order of the 'known fields' message; a field left out takes the
# engine's opt size (height, width) or the Knob's default.
FIELD_KNOBS: dict[str, Knob] = {
    **{name: knobs(Request)[name] for name in ("prompt", "seed", "height", "width")},
    **BASELINE_KNOBS,
    **knobs(MonkeyConfig),
}
KNOBS: dict[str, Callable[[str, Any], Any]] = {name: _converter(k) for name, k in knobs(MonkeyConfig).items()}
FIELDS: dict[str, Callable[[str, Any], Any]] = {name: _converter(k) for name, k in FIELD_KNOBS.items()}
IMAGE_FIELD = "image"  # a subject image; repeated (multipart parts, or a JSON list) for several subjects, in order
BACKGROUND_FIELD = "background_image"  # optional: the background image (its mask: where no subject's mask is)
IMAGE_FIELDS = (IMAGE_FIELD, BACKGROUND_FIELD)
MAX_PROMPT_CHARS = 4096  # far beyond 77 tokens; longer prompts are truncated anyway, refuse absurd ones


@dataclass(frozen=True)
class GenerateParams:
    """A validated `POST /v1/generate`: the CLI's Request plus what to return."""

    request: Request
    baseline_scale: float | None  # plain IP-Adapter from the same noise (`baseline`), None = not asked


def check_json_types(fields: dict[str, Any]) -> None:
    """A JSON body's values in JSON's own types, as its schema says: numbers are JSON numbers (not "4": text is
    a form's way), booleans are true/false (not "yes", 1), a list holds numbers only (not `[1, "2"]`; the
    documented `"1,2"` text is still taken)."""
    for name, v in fields.items():
        k = FIELD_KNOBS.get(name)
        if k is None or v is None:
            continue
        if k.kind is int and type(v) is not int:
            raise ApiError(400, f"field {name!r} must be an integer (a JSON number, not text), got {v!r}")
        if k.kind is float and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ApiError(400, f"field {name!r} must be a number (a JSON number, not text), got {v!r}")
        if k.kind is bool and not isinstance(v, bool):
            raise ApiError(400, f"field {name!r} must be true or false (a JSON boolean), got {v!r}")
        if k.kind is tuple and isinstance(v, list):
            want = (int,) if k.item is int else (int, float)
            if not all(isinstance(x, want) and not isinstance(x, bool) for x in v):
                kind = "integers" if k.item is int else "numbers"
                raise ApiError(400, f"field {name!r} must be a list of {kind} only, got {v!r}")


def parse_fields(fields: dict[str, Any], default_size: tuple[int, int]) -> GenerateParams:
    """Fields (image excluded) -> GenerateParams; `default_size` (height, width) is the engine's opt size."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r}; known fields: {', '.join(IMAGE_FIELDS)}, {', '.join(FIELDS)}")
    v = {k: FIELDS[k](k, x) for k, x in fields.items() if x is not None}
    if "prompt" not in v:
        raise ApiError(400, "field 'prompt' is required")
    if len(v["prompt"]) > MAX_PROMPT_CHARS:
        raise ApiError(400, f"field 'prompt' is {len(v['prompt'])} characters; at most {MAX_PROMPT_CHARS} are accepted")
    try:
        config = MonkeyConfig(**{k: v[k] for k in KNOBS if k in v})
        request = Request(prompt=v["prompt"], height=v.get("height", default_size[0]), width=v.get("width", default_size[1]),
                          seed=v.get("seed", 0), config=config)
        baseline_scale = None
        if v.get("baseline", False) or "baseline_scale" in v:
            baseline_scale = v.get("baseline_scale", config.scale_final)
            BASELINE_KNOBS["baseline_scale"].check(baseline_scale)
    except MonkeyError as e:
        raise ApiError(400, str(e)) from None
    return GenerateParams(request, baseline_scale)


@dataclass(frozen=True)
class Upload:
    """One image of a request: its name (the multipart file name; None in JSON) and its undecoded bytes."""

    name: str | None
    data: bytes


@dataclass(frozen=True)
class Uploads:
    """A request's images, undecoded: the subjects in order, and the background image if one was sent."""

    subjects: tuple[Upload, ...]
    background: Upload | None = None


def image_from_json(value: Any, field: str = IMAGE_FIELD) -> bytes:
    """One base64 image of a JSON body (standard alphabet, optional data: URL prefix) -> bytes."""
    what = "the background image" if field == BACKGROUND_FIELD else "the subject image"
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"field {field!r} must be {what} as a base64 string" +
                       (" (or a list of them, one per subject)" if field == IMAGE_FIELD else ""))
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"field {field!r} is not valid base64") from None


def uploads_from_json(body: dict[str, Any]) -> Uploads:
    """The JSON body's images: `image` one base64 string or a list of them (one per subject, in order), and
    `background_image` one base64 string."""
    value = body[IMAGE_FIELD]
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ApiError(400, "field 'image' is an empty list: give at least one subject image")
    subjects = tuple(Upload(None, image_from_json(v)) for v in values)
    background = body.get(BACKGROUND_FIELD)
    return Uploads(subjects, None if background is None else Upload(None, image_from_json(background, BACKGROUND_FIELD)))


# -- OpenAPI ----------------------------------------------------------------------------------
_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}
_ENGINE_SIZE = ("height", "width")


def field_schema(k: Knob, form: bool) -> dict[str, Any]:
    """The OpenAPI schema of one field: type, range, default and help from its Knob."""
    if k.kind is tuple:  # `[1, 2]` in JSON, `1,2` in both
        schema: dict[str, Any] = {"type": "string"} if form else \
            {"oneOf": [{"type": "array", "items": {"type": _JSON_TYPES[k.item]}}, {"type": "string"}]}
    else:
        schema = {"type": _JSON_TYPES[k.kind]}
    if k.lo is not None:
        schema["minimum"] = k.lo
    if k.hi is not None:
        schema["exclusiveMaximum" if k.hi_open else "maximum"] = k.hi
    if k.name in _ENGINE_SIZE:
        schema["description"] = f"{k.help} [default: the engine's opt size]"
    else:
        schema["description"] = k.help + (f", at most {MAX_PROMPT_CHARS} characters" if k.name == "prompt" else "") + \
            (f" [maximum: the engine model's {k.model_bound} - 1]" if k.model_bound else "")
        if not k.required and k.default is not None:
            schema["default"] = ",".join(map(str, k.default)) if k.kind is tuple and form else \
                (list(k.default) if k.kind is tuple else k.default)
    return schema


BACKGROUND_HELP = ("optional background image (any PIL format): one more IP image, applied where no subject's mask is, "
                   "at background_scale")


def request_body_schema(max_subjects: int | None = None) -> dict[str, Any]:
    """`requestBody` of POST /v1/generate: multipart (the images as files) or JSON (the images as base64);
    `max_subjects`: the engine's limit, as the subject images' maxItems (None: not known here)."""
    most = {} if max_subjects is None else {"maxItems": max_subjects}

    def body(form: bool) -> dict[str, Any]:
        several = ("one part per subject, in order (repeat the part; at most the engine's max_subjects, /readyz)" if form else
                   "one per subject, in order (at most the engine's max_subjects, /readyz)")
        if form:
            image = {"type": "array", "minItems": 1, **most, "items": {"type": "string", "format": "binary"},
                     "description": f"subject image (any PIL format): {several}"}
            background = {"type": "string", "format": "binary", "description": BACKGROUND_HELP}
        else:
            b64 = {"type": "string", "description": "base64 (a data: URL prefix is accepted)"}
            image = {"oneOf": [b64, {"type": "array", "minItems": 1, **most, "items": b64}],
                     "description": f"subject image (any PIL format), base64, or a list of them: {several}"}
            background = {**b64, "description": BACKGROUND_HELP + ", base64"}
        return {"schema": {
            "type": "object", "required": [IMAGE_FIELD, *[n for n, k in FIELD_KNOBS.items() if k.required]],
            "properties": {IMAGE_FIELD: image, BACKGROUND_FIELD: background, **{n: field_schema(k, form) for n, k in FIELD_KNOBS.items()}},
            "additionalProperties": False,
        }}

    return {"required": True, "content": {"multipart/form-data": body(True), "application/json": body(False)}}


# -- OpenAPI: the responses -------------------------------------------------------------------
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error", "request_id"], "additionalProperties": False,
    "properties": {
        "error": {"type": "string", "description": "what was refused or failed, one line"},
        "request_id": {"type": ["string", "null"], "description": "the request's id (also the X-Request-Id header)"},
    },
}
_ERRORS = {
    400: "bad request: a field is unknown, of the wrong type or out of range; bad image (named: subject 2 (cat.png): ...); "
         "subject_scales not one per subject; bad JSON",
    408: "the request body was not received in time",
    413: "the request body is larger than --max-body-mb",
    415: "Content-Type is neither multipart/form-data nor application/json",
    422: "the request does not fit the engine (size outside its profile, mask_token beyond the model's IP tokens, more subject "
         "images than its max_subjects, a background image on an engine exported before them)",
    429: "the queue is full (--max-queue); retry after Retry-After seconds",
    499: "the client closed the connection before the answer (logged and counted, never sent)",
    500: "internal error (the message carries the request id; the details are in the server log)",
    503: "no engine loaded, or not warmed yet; retry after Retry-After seconds",
    504: "the request took longer than --timeout (queue wait included)",
    505: "HTTP version other than 1.0/1.1",
}
_ID_HEADERS = {
    "X-Request-Id": {"description": "the request's id (the client's X-Request-Id when valid, else a new one)", "schema": {"type": "string"}},
    "X-Replica": {"description": "the replica that answered", "schema": {"type": "string"}},
}


def error_responses(*statuses: int) -> dict[str, Any]:
    """OpenAPI `responses` entries of the JSON error body for `statuses`."""
    return {str(s): {"description": _ERRORS[s], "headers": _ID_HEADERS,
                     "content": {"application/json": {"schema": ERROR_SCHEMA}}} for s in statuses}


def _png_b64(what: str) -> dict[str, Any]:
    return {"type": "string", "format": "byte", "description": f"{what}, PNG, base64"}


def generate_response_schema() -> dict[str, Any]:
    """The JSON answer of POST /v1/generate (`app.result_json`)."""
    number_map = {"type": "object", "additionalProperties": {"type": "number"}}
    config = {"type": "object", "description": "every MonkeyConfig knob as used",
              "properties": {n: ({"type": "array", "items": {"type": _JSON_TYPES[k.item]}} if k.kind is tuple else {"type": _JSON_TYPES[k.kind]})
                             for n, k in knobs(MonkeyConfig).items()}}
    return {
        "type": "object",
        "required": ["request_id", "replica", "backend", "prompt", "seed", "height", "width", "config", "baseline_scale",
                     "mask", "subjects", "overlap", "background", "prompt_truncated", "warnings", "cache", "timings_s", "image_png",
                     "mask_png"],
        "properties": {
            "request_id": {"type": "string"},
            "replica": {"type": "string", "description": "the replica that ran the request"},
            "backend": {"type": "string", "description": "ort or trt (with the providers)"},
            "prompt": {"type": "string"},
            "seed": {"type": "integer"},
            "height": {"type": "integer"},
            "width": {"type": "integer"},
            "config": config,
            "baseline_scale": {"type": ["number", "null"], "description": "IP scale of the plain IP-Adapter baseline; null: not asked"},
            "mask": {"type": "object", "required": ["coverage", "grid", "degenerate_steps"], "properties": {
                "coverage": {"type": "number", "description": "fraction of the image the subject mask (several: their union) covers"},
                "grid": {"type": "array", "items": {"type": "integer"}, "description": "[h, w] of the attention map the mask comes from"},
                "degenerate_steps": {"type": "array", "items": {"type": "integer"}, "description": "mask steps whose map was flat"},
            }},
            "prompt_truncated": {"type": "boolean", "description": "the prompt was longer than the text encoder's 77 tokens"},
            "warnings": {"type": "array", "items": {"type": "string"}},
            "cache": {"type": "object", "additionalProperties": {"type": "string", "enum": ["hit", "miss"]},
                      "description": "per encoder cache (subject, prompt): hit or miss"},
            "timings_s": {**number_map, "description": "seconds per stage, plus queue and total"},
            "subjects": {"type": "array", "description": "the subject images in request order, each with its own mask", "items": {
                "type": "object", "required": ["index", "image", "scale", "coverage", "lost_to_overlap", "mask_png"], "properties": {
                    "index": {"type": "integer", "minimum": 1, "description": "1-based, in request order"},
                    "image": {"type": ["string", "null"], "description": "the upload's file name (multipart), null in JSON"},
                    "scale": {"type": "number", "description": "its IP scale (subject_scales, else 1)"},
                    "coverage": {"type": "number", "description": "fraction of the image its final mask covers"},
                    "lost_to_overlap": {"type": "number", "description": "fraction of its own raw mask given to another subject"},
                    "mask_png": _png_b64("its final mask (0/255)"),
                }}},
            "overlap": {"type": "number", "description": "fraction of the image in two or more subjects' raw masks (each such pixel "
                                                         "goes to the subject whose normalised map is highest there)"},
            "background": {"type": ["object", "null"], "description": "the background image, null without one",
                           "required": ["image", "scale", "coverage", "mask_png"], "properties": {
                               "image": {"type": ["string", "null"]}, "scale": {"type": "number"},
                               "coverage": {"type": "number", "description": "fraction of the image outside every subject mask"},
                               "mask_png": _png_b64("where the background image applies (0/255)")}},
            "image_png": _png_b64("the MONKEY image"),
            "mask_png": _png_b64("the subject mask (0 background, 255 subject); several subjects: the union of their masks"),
            "baseline_png": _png_b64("the plain IP-Adapter image (only with baseline)"),
        },
    }


def generate_responses() -> dict[str, Any]:
    """`responses` of POST /v1/generate: JSON or PNG, and every refusal."""
    return {
        "200": {"description": "the generation: JSON, or the image alone as PNG when the request says Accept: image/png",
                "headers": {**_ID_HEADERS,
                            "X-Seed": {"description": "the seed (image/png answers)", "schema": {"type": "integer"}},
                            "X-Mask-Coverage": {"description": "mask coverage (image/png answers)", "schema": {"type": "number"}}},
                "content": {"application/json": {"schema": generate_response_schema()},
                            "image/png": {"schema": {"type": "string", "format": "binary"}}}},
        **error_responses(400, 408, 413, 415, 422, 429, 499, 500, 503, 504, 505),
    }


def stream_responses() -> dict[str, Any]:
    """`responses` of POST /v1/generate/stream: server-sent events, or a refusal before the stream starts."""
    events = ("queued {position: jobs ahead, 0 = next}; stage {stage, label, progress}; "
              "step {stage, step, steps, progress} after each UNet call; then result (the JSON answer of "
              "POST /v1/generate) or error {status, error, request_id}: the last event. progress: fraction done, 0..1")
    return {
        "200": {"description": f"text/event-stream, one JSON object per event: {events}", "headers": _ID_HEADERS,
                "content": {"text/event-stream": {"schema": {"type": "string"}}}},
        **error_responses(400, 408, 413, 415, 422, 429, 499, 500, 503, 505),
    }


def simple_responses(ok: dict[str, Any], description: str, *errors: int, media: str = "application/json") -> dict[str, Any]:
    """`responses` of a GET endpoint: its 200 body schema and its errors."""
    return {"200": {"description": description, "headers": _ID_HEADERS, "content": {media: {"schema": ok}}},
            **error_responses(*errors)}
