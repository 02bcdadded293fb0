"""Limits below the app, where uvicorn would otherwise trust the client: the HTTP protocol and the logs.

`limited_protocol(limits)` is uvicorn's h11 protocol with
  - a cap on open connections: one over `max_connections` is answered 503 (JSON) and closed; a few more
    (`PROBE_LANE`) may first send their request line for `PROBE_WAIT_S`: `GET /healthz` is answered 200 there,
    so a liveness probe never fails because slow or idle clients fill the cap (anything else: the 503);
  - a header read timeout: a request's line and headers must arrive within `header_timeout_s` of the
    connection opening or of the previous response (a silent idle connection is closed, a partial
    request gets 408); a body the app did not read is drained within the same time or the connection closes;
  - a header size limit (`max_header_bytes`, checked before h11 sees the bytes): more is 431;
  - a write timeout: a client that reads none of its response for `write_timeout_s` is disconnected;
  - framing errors answered as JSON `{"error", "request_id"}` like every other error, not text/plain.
The body read timeouts live in the app's middleware (`app.ServeMiddleware`), which sees what the app reads.

`RateLimitFilter` keeps a flood of one message (a malformed request per connection, an internal error
per request) from filling the disk: at most `burst` lines per message per `interval_s`; the rest are
counted (`monkey_log_lines_dropped_total`) and the next line that passes says how many were dropped.
"""

from __future__ import annotations

import json
import logging
import re
import resource
import threading
import time
import uuid
from dataclasses import dataclass
from http import HTTPStatus

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from monkey_trt.core.errors import MonkeyError
from monkey_trt.serve.metrics import PROCESS

log = logging.getLogger("monkey_trt.serve")
_HEADER_END = re.compile(rb"\n\r?\n")  # h11 ends a header block at an empty line, CRLF or bare LF


def _default_max_connections() -> int:
    """512, or half the open-file limit if that is lower (the rest: engine files, logs, the listening socket)."""
    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError):
        soft = 1024
    return max(16, min(512, soft // 2)) if soft != resource.RLIM_INFINITY else 512


@dataclass(frozen=True)
class HttpLimits:
    """What one connection may take before the app sees a request."""

    max_connections: int = 0  # open connections at once; 0 = 512 or half the open-file limit
    header_timeout_s: float = 10.0  # request line + headers, from connection open / previous response
    max_header_bytes: int = 32 * 1024  # request line + headers
    keep_alive_s: int = 5  # an idle keep-alive connection closes after this
    write_timeout_s: float = 30.0  # a response the client stops reading (the send buffer stays full)

    def __post_init__(self) -> None:
        if self.max_connections == 0:
            object.__setattr__(self, "max_connections", _default_max_connections())
        if (self.max_connections < 1 or not 0 < self.header_timeout_s <= 3600 or self.max_header_bytes < 1024
                or self.keep_alive_s < 1 or not 0 < self.write_timeout_s <= 3600):
            raise MonkeyError(f"bad HTTP limits: {self}")


def json_error_bytes(status: int, message: str, extra: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 response (JSON error, `Connection: close`) written straight to the transport."""
    request_id = uuid.uuid4().hex
    body = json.dumps({"error": message, "request_id": request_id}).encode()
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    headers = {"content-type": "application/json", "content-length": str(len(body)), "connection": "close",
               "x-request-id": request_id, **(extra or {})}
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode("latin-1") + body


PROBE_LANE = 8  # connections over the cap that may still ask GET /healthz
PROBE_WAIT_S = 0.5  # how long such a connection has to send its request line before the 503
_PROBE_LINE = re.compile(rb"(GET|HEAD) /healthz(\?\S*)? HTTP/1\.[01]\r?\n")


def probe_answer(head: bytes) -> bytes | None:
    """The whole response to a connection over the cap whose first bytes are `head`: 200 for a liveness probe
    (`GET /healthz`), None while its request line is incomplete, else None too (the caller answers 503)."""
    if not _PROBE_LINE.match(head):
        return None
    body = json.dumps({"status": "ok"}).encode()
    return (f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode("latin-1") + body


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol under `limits` (a subclass per limits: see `limited_protocol`)."""

    limits: HttpLimits = HttpLimits()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._header_timer: object | None = None
        self._write_timer: object | None = None
        self._refused = False
        self._in_lane = False  # over the cap, waiting for a liveness probe's request line (PROBE_LANE)
        self._framing_error: h11.RemoteProtocolError | None = None
        next_event = self.conn.next_event

        def next_event_noted():  # keep h11's reason (and its status hint) for the JSON answer
            try:
                return next_event()
            except h11.RemoteProtocolError as e:
                self._framing_error = e
                raise

        self.conn.next_event = next_event_noted

    # -- the connection cap ------------------------------------------------------------------
    probes = [0]  # connections in the probe lane now (one list per limits class: see `limited_protocol`)

    def connection_made(self, transport) -> None:
        if len(self.connections) >= self.limits.max_connections:
            self._refused = True
            self.transport = transport
            self._probe_head = b""
            if self.probes[0] < PROBE_LANE:  # it may still be a liveness probe: wait briefly for its request line
                self.probes[0] += 1
                self._in_lane = True
                self._probe_timer = self.loop.call_later(PROBE_WAIT_S, self._refuse)
                return
            self._refuse()
            return
        super().connection_made(transport)
        self._arm_header_timer()

    def _leave_lane(self) -> None:
        if self._in_lane:
            self._in_lane = False
            self.probes[0] -= 1
            self._probe_timer.cancel()

    def _refuse(self) -> None:
        """Over the cap and not a liveness probe: 503 (JSON) and close."""
        self._leave_lane()
        if self.transport.is_closing():
            return
        PROCESS.inc("connection_cap")
        log.warning("connection refused: %d connections open (the cap)", self.limits.max_connections)
        self.transport.write(json_error_bytes(503, f"too many open connections (at most {self.limits.max_connections}); retry shortly",
                                              {"retry-after": "1"}))
        self.transport.close()

    def _probe_data(self, data: bytes) -> None:
        if not self._in_lane or self.transport.is_closing():
            return
        self._probe_head = (self._probe_head + data)[:512]
        answer = probe_answer(self._probe_head)
        if answer is not None:
            self._leave_lane()
            self.transport.write(answer)
            self.transport.close()
        elif b"\n" in self._probe_head or len(self._probe_head) >= 512:
            self._refuse()

    def connection_lost(self, exc) -> None:
        if self._refused:
            self._leave_lane()
        self._cancel_header_timer()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        if self._refused:
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            self._probe_data(data)
            return
        cycle, state = self.cycle, self.conn.their_state
        if state is h11.IDLE and self._headers_too_long(data):
            self._framing_error = h11.RemoteProtocolError("request headers too long", error_status_hint=431)
            self.send_400_response("request headers too long")
            return
        super().data_received(data)
        if self.cycle is not cycle:
            self._cancel_header_timer()  # a request's headers are complete: the app's body timeouts take over
        elif state is not h11.IDLE and self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._arm_header_timer()  # an unread body is drained: the next request starts now

    def _headers_too_long(self, data: bytes) -> bool:
        """Whether the request line and headers, buffered + `data`, pass max_header_bytes. (h11 bounds only
        an incomplete request: a whole 200 KB header block arriving in one read would pass it.)"""
        head = self.conn.trailing_data[0] + data
        end = _HEADER_END.search(head, 0, self.limits.max_header_bytes + 4)
        return end is None and len(head) > self.limits.max_header_bytes

    # -- header timeout ------------------------------------------------------------------------
    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport is None or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is in the app (cannot happen: its headers cancelled the timer)
        partial = self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])
        if partial:
            PROCESS.inc("header_timeout")
            log.info("connection closed: request headers not complete within %gs", self.limits.header_timeout_s)
            self.transport.write(json_error_bytes(408, f"request headers not received within {self.limits.header_timeout_s:g}s"))
        self._unset_keepalive_if_required()
        self.transport.close()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()
        if self.cycle is cycle and not self.transport.is_closing():
            self._arm_header_timer()  # for the next request (or for draining a body the app did not read)

    # -- framing errors as JSON ----------------------------------------------------------------
    def send_400_response(self, msg: str) -> None:
        e = self._framing_error
        status = getattr(e, "error_status_hint", 400) if e is not None else 400
        if status == 431 or (e is not None and "too long" in str(e).lower()):
            status = 431
            text = f"request line and headers exceed {self.limits.max_header_bytes // 1024} KiB"
        else:
            text = f"malformed HTTP request ({_one_line(e) if e is not None else msg})"
        PROCESS.inc("malformed")
        self._cancel_header_timer()
        self.transport.write(json_error_bytes(status if 400 <= status < 600 else 400, text))
        self.transport.close()

    # -- write timeout --------------------------------------------------------------------------
    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.limits.write_timeout_s, self._write_timeout)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_timeout(self) -> None:
        self._write_timer = None
        if self.transport is not None:  # closing or not: a close waiting on this buffer would wait forever
            PROCESS.inc("write_timeout")
            log.info("connection dropped: the client read nothing of its response for %gs", self.limits.write_timeout_s)
            self.transport.abort()  # close() would wait for a buffer that never drains

    def shutdown(self) -> None:
        self._cancel_header_timer()
        super().shutdown()


def limited_protocol(limits: HttpLimits) -> type[LimitedH11Protocol]:
    """The protocol class to give uvicorn (`Config(http=...)`)."""
    return type("LimitedH11Protocol", (LimitedH11Protocol,), {"limits": limits, "probes": [0]})


def uvicorn_config(app, limits: HttpLimits | None = None, **kwargs):
    """uvicorn.Config for `app` under `limits` (h11 with the limits above; uvicorn's own concurrency 503,
    a text/plain answer, is off: the connection cap and the app's queue bound replace it)."""
    import uvicorn

    limits = limits or HttpLimits()
    return uvicorn.Config(app, http=limited_protocol(limits), h11_max_incomplete_event_size=limits.max_header_bytes,
                          timeout_keep_alive=limits.keep_alive_s, limit_concurrency=None, **kwargs)


# -- logs -------------------------------------------------------------------------------------
class RateLimitFilter(logging.Filter):
    """At most `burst` records per message (logger, level, format string) per `interval_s`, and at most
    `total` records of all messages per interval; the dropped ones are counted, and the next record of
    the message that passes carries "(N similar lines dropped)"."""

    def __init__(self, burst: int = 20, interval_s: float = 60.0, total: int = 200, clock=time.monotonic):
        super().__init__()
        self.burst, self.interval_s, self.total, self.clock = burst, interval_s, total, clock
        self._lock = threading.Lock()
        self._windows: dict[tuple, list] = {}  # key -> [window start, passed, dropped]
        self._all = [0.0, 0]  # window start, passed (all keys)
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg)[:200])
        now = self.clock()
        with self._lock:
            if now - self._all[0] >= self.interval_s:
                self._all = [now, 0]
                if len(self._windows) > 1000:  # many distinct messages: forget the quiet ones
                    self._windows = {k: w for k, w in self._windows.items() if now - w[0] < self.interval_s}
            w = self._windows.get(key)
            carried = 0
            if w is None or now - w[0] >= self.interval_s:
                carried = w[2] if w is not None else 0
                w = self._windows[key] = [now, 0, 0]
            if w[1] >= self.burst or self._all[1] >= self.total:
                w[2] += 1 + carried  # the count of the previous window waits for the next line that passes
                self.dropped += 1
                PROCESS.inc("log_lines_dropped")
                return False
            w[1] += 1
            self._all[1] += 1
        if carried:
            record.msg = f"{record.msg} ({carried} similar lines dropped in the previous {self.interval_s:g}s)"
        return True


def install_log_rate_limit(filt: RateLimitFilter,
                           loggers=("", "uvicorn", "uvicorn.error", "uvicorn.access", "monkey_trt.serve")) -> None:
    """Put `filt` on every handler of `loggers` (records propagated from child loggers pass handler
    filters, not logger filters). Call after uvicorn has configured its logging."""
    for name in loggers:
        for handler in logging.getLogger(name).handlers:
            if filt not in handler.filters:
                handler.addFilter(filt)
