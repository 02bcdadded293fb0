"""`POST /v1/generate/stream`: one generation as server-sent events (text/event-stream), readable with `curl -N`.

    event: queued   data: {"position": 0}                                   jobs ahead (again when it changes)
    event: stage    data: {"stage": "encode_prompt", "label": "...", "progress": 0.11}
    event: step     data: {"stage": "mask_pass", "step": 1, "steps": 2, "progress": 0.3}
    ...
    event: result   data: <the JSON answer of POST /v1/generate>            the last event, or
    event: error    data: {"status": 504, "error": "...", "request_id": "..."}

The request is admitted, read and checked exactly like /v1/generate's before the stream starts, so those
refusals (429, 413, 408, 400, 415, 422, 503) keep their HTTP status and JSON body; what fails later (an
image that does not decode, the timeout, the engine) is the stream's last event, `error`, with the status
/v1/generate would answer. A client that hangs up cancels its job if it is still queued (a running job
finishes and is discarded, like that of any request whose client left), frees its slot and counts as 499.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import StreamingResponse

from monkey_trt.serve.progress import Watcher
from monkey_trt.serve.schema import ApiError

log = logging.getLogger("monkey_trt.serve")
POLL_S = 0.25  # how often a queued request looks at its place in line
KEEPALIVE_S = 15.0  # a comment line after this long without an event (proxies, and a dead client is noticed)
CLIENT_CLOSED = 499


def sse(name: str, data: dict[str, Any]) -> bytes:
    """One server-sent event."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class EventStream(StreamingResponse):
    """The events of `run(watcher)` (a coroutine: the generation, its answer as a dict, ApiError on failure).

    `ahead(ticket)`: jobs before the request's job (InferenceWorker.ahead); `on_end(status)` runs once,
    however the stream ends (answered, failed, client gone, never started): the final status (499: client gone)."""

    media_type = "text/event-stream"

    def __init__(self, run: Callable[[Watcher], Awaitable[dict[str, Any]]], request_id: str,
                 ahead: Callable[[int], int | None], on_end: Callable[[int], None]):
        self._run, self._request_id, self._ahead, self._on_end = run, request_id, ahead, on_end
        self._status = CLIENT_CLOSED
        super().__init__(self._events(), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            on_end, self._on_end = self._on_end, None
            if on_end is not None:
                on_end(self._status)

    async def _events(self):
        loop = asyncio.get_running_loop()
        watch = Watcher(loop)
        task = asyncio.ensure_future(self._run(watch))
        task.add_done_callback(lambda _: watch.wake())
        position: int | None = None
        quiet_since = loop.time()
        try:
            while True:
                done = task.done()
                queued = watch.ticket is not None and self._ahead(watch.ticket) is not None
                events = await watch.next_events(0 if done else POLL_S if queued or watch.ticket is None else KEEPALIVE_S)
                if watch.ticket is not None:
                    now = self._ahead(watch.ticket)
                    if position is None or (now is not None and now != position):
                        position = now or 0
                        events.insert(0, ("queued", {"position": position}))
                if events:
                    yield b"".join(sse(name, data) for name, data in events)
                    quiet_since = loop.time()
                elif loop.time() - quiet_since >= KEEPALIVE_S:
                    yield b": keep-alive\n\n"
                    quiet_since = loop.time()
                if done:
                    break
            try:
                answer = task.result()
                self._status = 200
                yield sse("result", answer)
            except ApiError as e:
                self._status = e.status
                yield sse("error", {"status": e.status, "error": e.message, "request_id": self._request_id})
            except Exception:  # `run` maps every failure to ApiError: this is a bug, still answered as one line
                log.exception("request %s: internal error", self._request_id)
                self._status = 500
                yield sse("error", {"status": 500, "error": f"internal error (request id {self._request_id}; see the server log)",
                                    "request_id": self._request_id})
        finally:
            if not task.done():
                task.cancel()  # the client left: a queued job is dropped, a running one is discarded when it ends
