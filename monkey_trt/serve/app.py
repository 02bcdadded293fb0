"""The ASGI app (FastAPI): HTTP onto a `MonkeyService`.

    GET  /              a page to try it in a browser (serve/page.html: self-contained, no CDN)
    POST /v1/generate   multipart (file `image`, repeated per subject, optional file `background_image` + fields) or JSON
                        (`image` base64 or a list of them, `background_image` base64) -> JSON or image/png
    POST /v1/generate/stream   the same request -> server-sent events: progress, then the JSON answer (serve/stream.py)
    GET  /healthz       the process is alive
    GET  /readyz        the engine is loaded and warmed (503 before)
    GET  /metrics       Prometheus text format
    GET  /docs          the API reference, one self-contained page (works offline: no CDN); /openapi.json

Every refusal is JSON `{"error": "<one line>", "request_id": "..."}`; every response carries
`X-Request-Id` and `X-Replica`. The service lives in `app.state.service` (set by the CLI before
uvicorn starts, or by a Ray replica in its constructor).

Limits: a generate request is admitted (a slot of the inference queue, else 429) before anything heavy
happens to it: its body is read (at most --max-body-mb, with an idle and a total timeout -> 408), its
fields are checked for size (huge integers, deep nesting, long values -> 400), its image is decoded on
the inference thread (one at a time) and its result encoded, all inside that slot; so --max-queue bounds
memory as well as inference. A client that hangs up is counted as 499, not as a server error.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from monkey_trt.core import __version__
from monkey_trt.core.errors import MonkeyError
from monkey_trt.runtime.images import decode_images, decode_subject
from monkey_trt.runtime.outputs import subjects_record
from monkey_trt.runtime.result import MonkeyOutput
from monkey_trt.serve.schema import (
    BACKGROUND_FIELD,
    IMAGE_FIELD,
    IMAGE_FIELDS,
    ApiError,
    GenerateParams,
    Upload,
    Uploads,
    check_json_types,
    generate_responses,
    parse_fields,
    request_body_schema,
    simple_responses,
    stream_responses,
    uploads_from_json,
)
from monkey_trt.serve.service import MonkeyService, encode_output
from monkey_trt.serve.stream import EventStream
from monkey_trt.serve.worker import QueueFull, Slot

log = logging.getLogger("monkey_trt.serve")
GENERATE = "/v1/generate"
GENERATE_STREAM = "/v1/generate/stream"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
BODY_IDLE_S = 10.0  # seconds without a byte of the body -> 408
BODY_TOTAL_S = 60.0  # seconds for the whole body, from the first read -> 408
DRAIN_BYTES = 2**20  # a refused body up to this size is drained (keep-alive); a larger one closes the connection
MAX_JSON_DIGITS = 40  # digits of an integer in a JSON body (a seed has at most 19)
MAX_FIELD_CHARS = 256  # a field's value, as text (the prompt has its own limit: schema.MAX_PROMPT_CHARS)
MAX_FIELD_NAME = 64
CLIENT_CLOSED = 499  # nginx's "client closed request": counted apart from the server's errors


class BodyTooLarge(ApiError):
    def __init__(self, limit: int):
        super().__init__(413, f"request body is larger than the {limit / 2**20:g} MiB limit (--max-body-mb)", {"Connection": "close"})


class BodyTimeout(ApiError):
    def __init__(self, why: str):
        super().__init__(408, f"request body not received in time: {why}", {"Connection": "close"})


def _error(status: int, message: str, request_id: str | None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "request_id": request_id}, status_code=status, headers=headers)


class ServeMiddleware:
    """Pure ASGI: request id + replica headers, the body limits (size and time, while reading), status
    counts of /v1/generate, `Connection: close` on an answer given before a large body was read."""

    def __init__(self, app, max_body_bytes: int, body_idle_s: float = BODY_IDLE_S, body_total_s: float = BODY_TOTAL_S):
        self.app, self.max_body = app, max_body_bytes
        self.body_idle_s, self.body_total_s = body_idle_s, body_total_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        service: MonkeyService | None = getattr(scope["app"].state, "service", None) if "app" in scope else None
        replica = service.replica if service else "-"
        counted = scope["path"] in (GENERATE, GENERATE_STREAM) and service is not None
        streamed = scope["path"] == GENERATE_STREAM  # a stream that starts counts its own end (EventStream)

        length = headers.get(b"content-length")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        body_done = not chunked and (length is None or length == b"0")
        seen, started, disconnected = 0, None, False

        async def send_tagged(message):
            if message["type"] == "http.response.start":
                given = list(message.get("headers", []))
                extra = [(b"x-request-id", request_id.encode()), (b"x-replica", replica.encode("latin-1", "replace"))]
                if (not body_done and (chunked or not length.isdigit() or int(length) - seen > DRAIN_BYTES)
                        and (b"connection", b"close") not in given):
                    extra.append((b"connection", b"close"))  # do not read on through a large body nobody wants
                message["headers"] = given + extra
                if counted and not (streamed and message["status"] == 200):
                    service.metrics.requests.labels(str(CLIENT_CLOSED if disconnected else message["status"])).inc()
            await send(message)

        if scope.get("http_version", "1.1") not in ("1.0", "1.1"):
            return await _error(505, f"HTTP/{scope['http_version']} is not supported; use HTTP/1.1", request_id,
                                {"Connection": "close"})(scope, receive, send_tagged)
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            status, msg = (413, BodyTooLarge(self.max_body).message) if length.isdigit() else (400, "bad Content-Length header")
            return await _error(status, msg, request_id, {"Connection": "close"})(scope, receive, send_tagged)

        async def receive_limited():
            nonlocal seen, started, body_done, disconnected
            if body_done:
                return await receive()  # after the body: waiting for a disconnect is not bounded here
            loop = asyncio.get_running_loop()
            started = started if started is not None else loop.time()
            left = started + self.body_total_s - loop.time()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, min(self.body_idle_s, left)))
            except asyncio.TimeoutError:
                why = f"no data for {self.body_idle_s:g}s" if left > self.body_idle_s else f"not complete within {self.body_total_s:g}s"
                raise BodyTimeout(f"{why} ({seen} bytes received)") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge(self.max_body)
                body_done = not message.get("more_body", False)
            elif message["type"] == "http.disconnect":
                disconnected = True
            return message

        await self.app(scope, receive_limited, send_tagged)


# -- reading a request -----------------------------------------------------------------------
async def read_generate_request(request: Request, max_images: int = 2) -> tuple[dict[str, Any], Uploads]:
    """-> (fields without the images, the images undecoded); multipart/form-data or application/json.
    `max_images`: the file parts a form may hold (the engine's subjects + the background; one more is refused by name)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=max_images + 1, max_fields=64)
        except StarletteHTTPException as e:  # one part over the engine's images is ours to refuse by name (svc.check)
            if str(e.detail).startswith("Too many files"):
                raise ApiError(422, f"more than {max_images + 1} image parts: this engine takes at most {max_images - 1} subject "
                                    "image(s) (manifest max_subjects) and one background image") from None
            raise
        fields: dict[str, Any] = {}
        subjects: list[Upload] = []
        background = None
        try:
            for key, value in form.multi_items():
                if key in fields or (key == BACKGROUND_FIELD and background is not None):
                    raise ApiError(400, f"field {key!r} is given more than once")
                if key in IMAGE_FIELDS:
                    if not isinstance(value, UploadFile):
                        raise ApiError(400, f"field {key!r} must be a file upload (multipart file part)")
                    upload = Upload(value.filename or None, await value.read())
                    if key == IMAGE_FIELD:
                        subjects.append(upload)  # in the order of the parts
                    else:
                        background = upload
                elif isinstance(value, UploadFile):
                    raise ApiError(400, f"field {key!r} must be a plain form value, not a file")
                else:
                    fields[key] = value
        finally:
            await form.close()  # spooled uploads are temporary files
        if not subjects:
            raise ApiError(400, "field 'image' (the subject image file) is required" +
                           ("; a background image goes beside subject images" if background is not None else ""))
        return fields, Uploads(tuple(subjects), background)
    if ctype == "application/json":
        body = await run_in_threadpool(parse_json, await request.body())
        if not isinstance(body, dict):
            raise ApiError(400, "the JSON body must be an object")
        if IMAGE_FIELD not in body:
            raise ApiError(400, "field 'image' (the subject image, base64) is required" +
                           ("; a background image goes beside subject images" if BACKGROUND_FIELD in body else ""))
        fields = {k: v for k, v in body.items() if k not in IMAGE_FIELDS}
        check_field_sizes(fields)  # before a value is quoted in an error
        check_json_types(fields)
        return fields, uploads_from_json(body)
    raise ApiError(415, f"Content-Type must be multipart/form-data or application/json, got {ctype or 'none'!r}")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_DIGITS:
        raise ApiError(400, f"the JSON body holds an integer of {len(text.lstrip('-'))} digits; at most {MAX_JSON_DIGITS} are accepted")
    return int(text)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object; a key given twice is refused (json.loads would keep the last one silently)."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ApiError(400, f"field {key[:MAX_FIELD_NAME]!r} is given more than once")
        obj[key] = value
    return obj


def parse_json(raw: bytes) -> Any:
    """The JSON body; invalid, too deeply nested or holding huge integers -> ApiError 400."""
    try:
        return json.loads(raw, parse_int=_bounded_int, object_pairs_hook=_unique_keys)
    except ApiError:
        raise
    except RecursionError:
        raise ApiError(400, "the JSON body is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise ApiError(400, f"the body is not valid JSON ({e.__class__.__name__}: {str(e).splitlines()[0][:120]})") from None


def _text_size(value: Any, budget: int) -> int:
    """About how many characters `repr(value)` takes, counting no further than `budget` (no recursion)."""
    n, stack = 0, [value]
    while stack and n <= budget:
        v = stack.pop()
        if isinstance(v, str):
            n += len(v) + 2
        elif isinstance(v, (list, tuple)):
            n += 2 + 2 * len(v)
            stack.extend(v[: budget + 1])
        elif isinstance(v, dict):
            n += 2 + 4 * len(v)
            stack.extend(list(v)[: budget + 1] + list(v.values())[: budget + 1])
        elif isinstance(v, bool) or v is None:
            n += 5
        elif isinstance(v, int):
            n += v.bit_length() * 3 // 10 + 2
        else:
            n += 24
    return n


def check_field_sizes(fields: dict[str, Any]) -> None:
    """Refuse field names and values too large to be a knob before they are parsed (or quoted in an error)."""
    for key, value in fields.items():
        if len(key) > MAX_FIELD_NAME:
            raise ApiError(400, f"a field name is {len(key)} characters long; at most {MAX_FIELD_NAME} are accepted")
        if key == "prompt" and isinstance(value, str):
            continue  # parse_fields refuses a long prompt with its own message
        if _text_size(value, MAX_FIELD_CHARS) > MAX_FIELD_CHARS:
            raise ApiError(400, f"field {key!r} is too large: a knob is a number, a string or a list of numbers "
                                f"of at most {MAX_FIELD_CHARS} characters")


def images_decoder(uploads: Uploads):
    """The uploads' decoder, for the inference thread (one decode at a time, inside the request's slot):
    -> (subjects, background); a bad image is a 400 naming which (`subject 2 (cat.png): ...`)."""

    def decode():
        bg = uploads.background
        try:
            return decode_images([(u.name, (IMAGE_FIELD, u.data)) for u in uploads.subjects], lambda src: decode_subject(src[1], src[0]),
                                 None if bg is None else (bg.name, (BACKGROUND_FIELD, bg.data)))
        except MonkeyError as e:
            raise ApiError(400, str(e)) from None

    return decode


def busy(svc: MonkeyService, e: QueueFull) -> ApiError:
    return ApiError(429, f"server busy: {svc.worker.max_queue} requests already queued; retry later", {"Retry-After": str(e.retry_after_s)})


def as_api_error(e: Exception, request_id: str) -> ApiError:
    """What a generate request's failure answers (an unexpected one is logged with its traceback)."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, ClientDisconnect):
        return ApiError(CLIENT_CLOSED, "the client closed the connection before its request was read")
    if isinstance(e, StarletteHTTPException):  # the form parser's own refusals (too many parts, bad multipart)
        return ApiError(e.status_code, str(e.detail))
    if isinstance(e, MonkeyError):
        return ApiError(400, str(e))
    log.error("request %s: internal error", request_id, exc_info=e)
    return ApiError(500, f"internal error (request id {request_id}; see the server log)")


async def admitted_request(svc: MonkeyService, request: Request) -> tuple[Slot, GenerateParams, Uploads]:
    """A generate request admitted (429 if the queue is full), read and checked: (its slot, params, its images undecoded).
    On failure its slot is released and the ApiError raised."""
    try:
        slot = svc.worker.admit()  # before the body is read: the queue bound bounds memory too
    except QueueFull as e:
        raise busy(svc, e) from None
    try:
        fields, uploads = await read_generate_request(request, svc.max_subjects + 1)
        check_field_sizes(fields)
        params = parse_fields(fields, svc.default_size)
        svc.check(params, len(uploads.subjects), uploads.background is not None)  # engine limits (422) before any image is decoded
    except Exception as e:  # noqa: BLE001 (every failure becomes one ApiError; an unexpected one is logged there)
        slot.release()
        raise as_api_error(e, request.state.request_id) from None
    return slot, params, uploads


async def _client_gone(request: Request) -> None:
    """Returns when the client hangs up (its body is read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_client_leaves(request: Request, work):
    """`work` (a generation) unless the client hangs up first: then it is cancelled (a queued job is dropped, a
    running one finishes and is discarded) and the request ends as 499, counted by the middleware."""
    job, gone = asyncio.ensure_future(work), asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({job, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not job.done():
        job.cancel()
        with contextlib.suppress(BaseException):
            await job
        raise ApiError(CLIENT_CLOSED, "the client closed the connection before the answer; its queued work was dropped")
    return job.result()


def wants_png(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "image/png" in accept and "application/json" not in accept


# -- the app ---------------------------------------------------------------------------------
def create_app(service: MonkeyService | None = None, max_body_bytes: int | None = None,
               body_idle_s: float = BODY_IDLE_S, body_total_s: float = BODY_TOTAL_S) -> FastAPI:
    """The app over `service` (already loaded); warm-up starts with the app and the service closes with it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc: MonkeyService | None = getattr(app.state, "service", None)
        if svc is not None and svc.pipe is not None:
            svc.start_warmup()
        yield
        svc = getattr(app.state, "service", None)
        if svc is not None:
            await run_in_threadpool(svc.close)  # in-flight requests are done (uvicorn waited for them)

    app = FastAPI(title="monkey-trt", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="MONKEY (masked IP-Adapter personalization, SD1.5/LCM) as an HTTP service.")
    app.state.service = service
    generated = app.openapi

    def openapi() -> dict:
        """FastAPI's document with our request bodies as written: its OpenAPI model reads every `minimum`/`maximum`
        as a float (an integer field showed `64.0`, the seed's maximum `9.223372036854776e+18`)."""
        if app.openapi_schema is None:
            doc = generated()
            svc = app.state.service
            most = svc.max_subjects if svc is not None and svc.pipe is not None else None  # this engine's subject images
            for path in (GENERATE, GENERATE_STREAM):
                doc["paths"][path]["post"]["requestBody"] = request_body_schema(most)
        return app.openapi_schema

    app.openapi = openapi
    limit = max_body_bytes if max_body_bytes is not None else (service.config.max_body_bytes if service else 20 * 2**20)
    app.add_middleware(ServeMiddleware, max_body_bytes=limit, body_idle_s=body_idle_s, body_total_s=body_total_s)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, e: ApiError):
        return _error(e.status, e.message, request.state.request_id, e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, e: StarletteHTTPException):
        return _error(e.status_code, str(e.detail), request.state.request_id, getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, e: Exception):  # outside a route's own handling: JSON too
        rid = getattr(request.state, "request_id", None)
        return _error(500, f"internal error (request id {rid}; see the server log)", rid)

    def current(request: Request) -> MonkeyService:
        svc = request.app.state.service
        if svc is None or svc.pipe is None:
            raise ApiError(503, "no engine loaded", {"Retry-After": "1"})
        return svc

    @app.get("/", include_in_schema=False)
    async def page():  # try it in a browser: one self-contained page, its form built from /openapi.json
        from monkey_trt.serve.page import page

        html, headers = page()
        return HTMLResponse(html, headers=headers)

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request):  # rendered here from the schema: no Swagger UI from a CDN
        from monkey_trt.serve.docs_page import render_docs

        return HTMLResponse(render_docs(request.app.openapi()))

    @app.get("/healthz", summary="Alive", openapi_extra={"responses": simple_responses(
        _HEALTH, "the process is alive")})
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="Engine loaded and warmed", openapi_extra={"responses": simple_responses(
        _READY, "the engine is loaded and warmed: requests are served", 503)})
    async def readyz(request: Request):
        svc = request.app.state.service
        if svc is None or svc.pipe is None or not svc.ready.is_set():
            why = (svc.warm_error if svc else None) or "engine not loaded and warmed yet"
            return _error(503, why, request.state.request_id, {"Retry-After": "1"})
        return {"status": "ready", "engine_dir": str(svc.config.engine_dir), "backend": svc.config.spec.backend,
                "replica": svc.replica, "queue_depth": svc.worker.depth, "max_subjects": svc.max_subjects}

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse, openapi_extra={"responses": simple_responses(
        {"type": "string"}, "Prometheus text format 0.0.4", 503, media="text/plain")})
    async def metrics(request: Request):
        svc = current(request)
        return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post(GENERATE, summary="MONKEY: subject image(s) + prompt -> image and mask(s)", openapi_extra=_OPENAPI_GENERATE)
    async def generate(request: Request):
        svc = current(request)
        rid = request.state.request_id
        t0 = time.perf_counter()
        slot, params, uploads = await admitted_request(svc, request)
        try:
            out, hits, queue_s = await until_client_leaves(request, svc.generate(params, images_decoder(uploads), slot))
            files = await run_in_threadpool(encode_output, out)
        except Exception as e:  # noqa: BLE001 (as above)
            raise as_api_error(e, rid) from None
        finally:
            slot.release()
        total = time.perf_counter() - t0
        svc.metrics.latency.observe(total)
        if wants_png(request):
            return Response(files["image_png"], media_type="image/png",
                            headers={"X-Seed": str(params.request.seed), "X-Mask-Coverage": f"{out.mask.coverage:.6f}"})
        timings = {**out.timings, "queue": queue_s, "total": total}
        return result_json(rid, svc.replica, params, out, hits, timings, files, uploads)

    @app.post(GENERATE_STREAM, summary="MONKEY with streamed progress (server-sent events)", response_class=EventStream, status_code=200,
              openapi_extra=_OPENAPI_STREAM)
    async def generate_stream(request: Request):
        svc = current(request)
        rid = request.state.request_id
        t0 = time.perf_counter()
        if not svc.ready.is_set():  # refused with its status, before any event
            raise ApiError(503, "the engine is still warming up; retry shortly", {"Retry-After": "1"})
        slot, params, uploads = await admitted_request(svc, request)

        async def run(watch) -> dict[str, Any]:
            try:
                out, hits, queue_s = await svc.generate(params, images_decoder(uploads), slot, watch)
                watch.encoding()
                files = await run_in_threadpool(encode_output, out)
            except Exception as e:  # noqa: BLE001 (as above)
                raise as_api_error(e, rid) from None
            total = time.perf_counter() - t0
            svc.metrics.latency.observe(total)
            return result_json(rid, svc.replica, params, out, hits, {**out.timings, "queue": queue_s, "total": total}, files, uploads)

        def end(status: int) -> None:
            slot.release()
            svc.metrics.requests.labels(str(status)).inc()

        return EventStream(run, rid, svc.worker.ahead, end)

    return app


def result_json(request_id: str, replica: str, params: GenerateParams, out: MonkeyOutput, hits: dict[str, bool],
                timings: dict[str, float], files: dict[str, bytes], uploads: Uploads) -> dict[str, Any]:
    """The JSON answer of /v1/generate (the fields of `monkey-trt generate`'s result.json, plus the PNGs): `mask` and
    `mask_png` as with one subject (several: their union), `subjects` each with its own mask, `overlap`, `background`."""
    r = params.request
    b64 = lambda data: base64.b64encode(data).decode("ascii")  # noqa: E731
    names = {"subject": [u.name for u in uploads.subjects], "background_image": None if uploads.background is None else uploads.background.name}
    listed = subjects_record(out, names)  # result.json's `subjects`, `overlap`, `background`: the uploads' file names
    subjects, background = listed["subjects"], listed["background"]
    for i, entry in enumerate(subjects, 1):
        entry["mask_png"] = b64(files.pop(f"mask_{i}_png"))
    if background is not None:
        background["mask_png"] = b64(files.pop("background_mask_png"))
    return {
        "request_id": request_id, "replica": replica, "backend": out.backend, "prompt": r.prompt, "seed": r.seed,
        "height": r.height, "width": r.width, "config": r.config.to_dict(), "baseline_scale": params.baseline_scale,
        "mask": {"coverage": out.mask.coverage, "grid": list(out.mask.grid), "degenerate_steps": list(out.mask.degenerate_steps)},
        "subjects": subjects, "overlap": out.overlap, "background": background,
        "prompt_truncated": out.prompt_truncated, "warnings": list(out.warnings),
        "cache": {name: "hit" if hit else "miss" for name, hit in hits.items()},
        "timings_s": {k: round(v, 6) for k, v in timings.items()},
        **{k: b64(v) for k, v in files.items()},  # image_png, mask_png[, baseline_png]
    }


_OPENAPI_GENERATE = {
    "requestBody": request_body_schema(),  # from the Knobs of core.config, like the CLI's options
    "responses": generate_responses(),
}
_OPENAPI_STREAM = {"requestBody": request_body_schema(), "responses": stream_responses()}
_HEALTH = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string", "enum": ["ok"]}}}
_READY = {"type": "object", "required": ["status", "engine_dir", "backend", "replica", "queue_depth", "max_subjects"], "properties": {
    "status": {"type": "string", "enum": ["ready"]}, "engine_dir": {"type": "string"}, "backend": {"type": "string"},
    "replica": {"type": "string"}, "queue_depth": {"type": "integer", "description": "requests queued behind the running one"},
    "max_subjects": {"type": "integer", "description": "subject images one request may hold (the engine's manifest)"}}}
