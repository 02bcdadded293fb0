"""The ASGI app (FastAPI): HTTP onto a `MonkeyService`.

    POST /v1/generate   multipart (file `image` + fields) or JSON (`image` base64) -> JSON or image/png
    GET  /healthz       the process is alive
    GET  /readyz        the engine is loaded and warmed (503 before)
    GET  /metrics       Prometheus text format
    GET  /docs          OpenAPI page (/openapi.json)

Every refusal is JSON `{"error": "<one line>", "request_id": "..."}`; every response carries
`X-Request-Id` and `X-Replica`. The service lives in `app.state.service` (set by the CLI before
uvicorn starts, or by a Ray replica in its constructor).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from monkey_trt.core import __version__
from monkey_trt.core.errors import MonkeyError
from monkey_trt.runtime.images import decode_subject
from monkey_trt.runtime.result import MonkeyOutput
from monkey_trt.serve.schema import (
    IMAGE_FIELD,
    ApiError,
    GenerateParams,
    image_from_json,
    parse_fields,
    request_body_schema,
)
from monkey_trt.serve.service import MonkeyService, encode_output

log = logging.getLogger("monkey_trt.serve")
GENERATE = "/v1/generate"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class BodyTooLarge(ApiError):
    def __init__(self, limit: int):
        super().__init__(413, f"request body is larger than the {limit / 2**20:g} MiB limit (--max-body-mb)")


def _error(status: int, message: str, request_id: str | None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "request_id": request_id}, status_code=status, headers=headers)


class ServeMiddleware:
    """Pure ASGI: request id + replica headers, the body limit (while reading), status counts of /v1/generate."""

    def __init__(self, app, max_body_bytes: int):
        self.app, self.max_body = app, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        service: MonkeyService | None = getattr(scope["app"].state, "service", None) if "app" in scope else None
        replica = service.replica if service else "-"
        counted = scope["path"] == GENERATE and service is not None

        async def send_tagged(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [
                    (b"x-request-id", request_id.encode()), (b"x-replica", replica.encode("latin-1", "replace"))]
                if counted:
                    service.metrics.requests.labels(str(message["status"])).inc()
            await send(message)

        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            status, msg = (413, BodyTooLarge(self.max_body).message) if length.isdigit() else (400, "bad Content-Length header")
            return await _error(status, msg, request_id, {"Connection": "close"})(scope, receive, send_tagged)
        seen = 0

        async def receive_limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        await self.app(scope, receive_limited, send_tagged)


# -- reading a request -----------------------------------------------------------------------
async def read_generate_request(request: Request) -> tuple[dict[str, Any], bytes]:
    """-> (fields without the image, image bytes); multipart/form-data or application/json."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form(max_files=2, max_fields=64)
        fields: dict[str, Any] = {}
        image = None
        try:
            for key, value in form.multi_items():
                if key in fields or (key == IMAGE_FIELD and image is not None):
                    raise ApiError(400, f"field {key!r} is given more than once")
                if key == IMAGE_FIELD:
                    if not isinstance(value, UploadFile):
                        raise ApiError(400, "field 'image' must be a file upload (multipart file part)")
                    image = await value.read()
                elif isinstance(value, UploadFile):
                    raise ApiError(400, f"field {key!r} must be a plain form value, not a file")
                else:
                    fields[key] = value
        finally:
            await form.close()  # spooled uploads are temporary files
        if image is None:
            raise ApiError(400, "field 'image' (the subject image file) is required")
        return fields, image
    if ctype == "application/json":
        try:
            body = json.loads(await request.body())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ApiError(400, f"the body is not valid JSON ({e.__class__.__name__}: {str(e).splitlines()[0][:120]})") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the JSON body must be an object")
        if IMAGE_FIELD not in body:
            raise ApiError(400, "field 'image' (the subject image, base64) is required")
        return {k: v for k, v in body.items() if k != IMAGE_FIELD}, image_from_json(body[IMAGE_FIELD])
    raise ApiError(415, f"Content-Type must be multipart/form-data or application/json, got {ctype or 'none'!r}")


def wants_png(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "image/png" in accept and "application/json" not in accept


# -- the app ---------------------------------------------------------------------------------
def create_app(service: MonkeyService | None = None, max_body_bytes: int | None = None) -> FastAPI:
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

    app = FastAPI(title="monkey-trt", version=__version__, lifespan=lifespan,
                  description="MONKEY (masked IP-Adapter personalization, SD1.5/LCM) as an HTTP service.")
    app.state.service = service
    limit = max_body_bytes if max_body_bytes is not None else (service.config.max_body_bytes if service else 20 * 2**20)
    app.add_middleware(ServeMiddleware, max_body_bytes=limit)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, e: ApiError):
        return _error(e.status, e.message, request.state.request_id, e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, e: StarletteHTTPException):
        return _error(e.status_code, str(e.detail), request.state.request_id, getattr(e, "headers", None))

    def current(request: Request) -> MonkeyService:
        svc = request.app.state.service
        if svc is None or svc.pipe is None:
            raise ApiError(503, "no engine loaded", {"Retry-After": "1"})
        return svc

    @app.get("/healthz", summary="Alive")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="Engine loaded and warmed")
    async def readyz(request: Request):
        svc = request.app.state.service
        if svc is None or svc.pipe is None or not svc.ready.is_set():
            why = (svc.warm_error if svc else None) or "engine not loaded and warmed yet"
            return _error(503, why, request.state.request_id, {"Retry-After": "1"})
        return {"status": "ready", "engine_dir": str(svc.config.engine_dir), "backend": svc.config.backend,
                "replica": svc.replica, "queue_depth": svc.worker.depth}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics(request: Request):
        svc = current(request)
        return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post(GENERATE, summary="MONKEY: subject image + prompt -> image and mask", openapi_extra=_OPENAPI_GENERATE)
    async def generate(request: Request):
        svc = current(request)
        rid = request.state.request_id
        t0 = time.perf_counter()
        try:
            fields, image_bytes = await read_generate_request(request)
            params = parse_fields(fields, svc.default_size)
            svc.check(params)  # engine limits (422) before the image is decoded
            subject = await run_in_threadpool(decode_subject, image_bytes, IMAGE_FIELD)
            out, hits, queue_s = await svc.generate(params, subject)
            files = await run_in_threadpool(encode_output, out)
        except ApiError:
            raise
        except StarletteHTTPException as e:  # the form parser's own refusals (too many parts, bad multipart)
            raise ApiError(e.status_code, str(e.detail)) from None
        except MonkeyError as e:
            raise ApiError(400, str(e)) from None
        except Exception:
            log.exception("request %s: internal error", rid)
            raise ApiError(500, f"internal error (request id {rid}; see the server log)") from None
        total = time.perf_counter() - t0
        svc.metrics.latency.observe(total)
        if wants_png(request):
            return Response(files["image_png"], media_type="image/png",
                            headers={"X-Seed": str(params.request.seed), "X-Mask-Coverage": f"{out.mask.coverage:.6f}"})
        timings = {**out.timings, "queue": queue_s, "total": total}
        return result_json(rid, svc.replica, params, out, hits, timings, files)

    return app


def result_json(request_id: str, replica: str, params: GenerateParams, out: MonkeyOutput, hits: dict[str, bool],
                timings: dict[str, float], files: dict[str, bytes]) -> dict[str, Any]:
    """The JSON answer of /v1/generate (the fields of `monkey-trt generate`'s result.json, plus the PNGs)."""
    r = params.request
    return {
        "request_id": request_id, "replica": replica, "backend": out.backend, "prompt": r.prompt, "seed": r.seed,
        "height": r.height, "width": r.width, "config": r.config.to_dict(), "baseline_scale": params.baseline_scale,
        "mask": {"coverage": out.mask.coverage, "grid": list(out.mask.grid), "degenerate_steps": list(out.mask.degenerate_steps)},
        "prompt_truncated": out.prompt_truncated, "warnings": list(out.warnings),
        "cache": {name: "hit" if hit else "miss" for name, hit in hits.items()},
        "timings_s": {k: round(v, 6) for k, v in timings.items()},
        **{k: base64.b64encode(v).decode("ascii") for k, v in files.items()},  # image_png, mask_png[, baseline_png]
    }


_OPENAPI_GENERATE = {
    "requestBody": request_body_schema(),  # from the Knobs of core.config, like the CLI's options
    "responses": {"200": {"description": "JSON (image_png, mask_png base64, seed, timings_s, mask, warnings, cache) "
                                         "or image/png when Accept: image/png"}},
}
