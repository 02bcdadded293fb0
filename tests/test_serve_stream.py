"""`POST /v1/generate/stream`: server-sent progress, then the answer; under every limit /v1/generate has.

The real server on the tiny engine for the answer and SIGTERM; the stub service of test_serve_hostile
(a gate holds its generation) for queue positions, the queue bound, timeouts and clients that hang up.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

import tests.test_serve as serve_tests
import tests.test_serve_hostile as hostile_tests
from tests.test_serve import Server, assert_one_error, post
from tests.test_serve_hostile import SUBJECT, WAIT_S

subject_png, stub = serve_tests.subject_png, hostile_tests.stub  # fixtures

STREAM = "/v1/generate/stream"


def parse_sse(text: str) -> list[tuple[str, dict]]:
    """Events of a text/event-stream body (comments skipped)."""
    out = []
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if lines:
            name = next(line[6:].strip() for line in lines if line.startswith("event:"))
            out.append((name, json.loads("".join(line[5:].strip() for line in lines if line.startswith("data:")))))
    return out


def stream_form(subject: bytes, **fields) -> dict:
    return {"image": ("subject.png", subject, "image/png"), **{k: (None, str(v)) for k, v in fields.items()}}


class Listener(threading.Thread):
    """One streamed request on its own connection, read to its end; `events` fills as they arrive."""

    def __init__(self, url: str, subject: bytes, **fields):
        super().__init__(daemon=True)
        self.url, self.files = url, stream_form(subject, **fields)
        self.events: list[tuple[str, dict]] = []
        self.raw = ""
        self.status: int | None = None
        self.start()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=WAIT_S) as c, c.stream("POST", STREAM, files=self.files) as r:
            self.status = r.status_code
            for chunk in r.iter_text():
                self.raw += chunk
                self.events = parse_sse(self.raw.rpartition("\n\n")[0])

    def wait_for(self, predicate, what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not predicate(self.events):
            assert time.monotonic() < deadline, f"no {what} in {self.events}"
            time.sleep(0.01)


class Turnstile:
    """The stub pipeline's gate, one generation at a time: `let_one()` lets one through, `set()` all."""

    def __init__(self):
        self._permits, self._open = threading.Semaphore(0), False

    def let_one(self) -> None:
        self._permits.release()

    def wait(self, timeout: float) -> bool:
        return self._open or self._permits.acquire(timeout=timeout)

    def set(self) -> None:
        self._open = True
        self._permits.release(100)


def raw_stream(port: int, **fields) -> socket.socket:
    """A streamed request on a bare socket (to hang up at a chosen moment): the socket, its request sent."""
    req = httpx.Request("POST", f"http://127.0.0.1:{port}{STREAM}", files=stream_form(SUBJECT, **fields))
    body = req.read()
    head = "".join(f"{k}: {v}\r\n" for k, v in req.headers.items() if k.lower() != "host")
    s = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    s.sendall(f"POST {STREAM} HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode() + body)
    return s


def read_until(s: socket.socket, needle: bytes) -> bytes:
    data = b""
    while needle not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    return data


# -- the real server --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(engine_dir):
    s = Server(engine_dir, "--max-queue", "2", "--max-body-mb", "1")
    yield s
    assert s.stop() == 0


def test_stream_reports_every_stage_then_the_answer(server, subject_png):
    fields = {"prompt": "a toy on the beach", "seed": 5, "baseline": "true"}
    with server.client.stream("POST", STREAM, files=stream_form(subject_png, **fields)) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache" and r.headers["x-request-id"]
        events = parse_sse(r.read().decode())
    names = [n for n, _ in events]
    assert names[0] == "queued" and events[0][1] == {"position": 0}
    assert names[-1] == "result" and names.count("result") == 1 and "error" not in names
    stages = [d["stage"] for n, d in events if n == "stage"]
    assert stages == ["decode_upload", "encode_prompt", "encode_subject", "mask_pass", "mask", "final_pass", "decode",
                      "baseline_pass", "decode_baseline", "encode_png"]
    result = events[-1][1]
    c = result["config"]
    steps = {s: [d["step"] for n, d in events if n == "step" and d["stage"] == s] for s in ("mask_pass", "final_pass", "baseline_pass")}
    assert steps == {"mask_pass": list(range(1, max(c["mask_steps"]) + 2)), "final_pass": list(range(1, c["steps_final"] + 1)),
                     "baseline_pass": list(range(1, c["steps_final"] + 1))}
    progress = [d["progress"] for n, d in events if "progress" in d]
    assert progress == sorted(progress) and 0 <= progress[0] and progress[-1] < 1
    # the answer is /v1/generate's, byte for byte where it does not depend on the moment
    plain = post(server.client, subject_png, **fields).json()
    for key in ("image_png", "mask_png", "baseline_png", "mask", "config", "warnings", "seed", "height", "width"):
        assert result[key] == plain[key], key
    assert set(result) == set(plain) and result["request_id"] == r.headers["x-request-id"]


def test_stream_refusals_keep_their_status(server, subject_png):
    r = server.client.post(STREAM, files=stream_form(subject_png, prompt="x", threshold=7))
    assert_one_error(r, 400, "threshold")
    r = server.client.post(STREAM, files=stream_form(subject_png, prompt="x", height=512))
    assert_one_error(r, 422, "cannot serve")
    r = server.client.post(STREAM, content=b"x" * (2 * 2**20), headers={"content-type": "application/json"})
    assert_one_error(r, 413, "larger than")
    r = server.client.post(STREAM, content=b"{}", headers={"content-type": "text/plain"})
    assert_one_error(r, 415, "content-type")
    r = server.client.post(STREAM, files=stream_form(b"not an image", prompt="x"))  # found on the inference thread
    assert r.status_code == 200
    events = parse_sse(r.text)
    assert events[-1][0] == "error" and events[-1][1]["status"] == 400 and "not a readable image" in events[-1][1]["error"]
    assert events[-1][1]["error"] == post(server.client, b"not an image", prompt="x").json()["error"]
    metrics = server.client.get("/metrics").text
    assert 'monkey_requests_total{status="500"}' not in metrics


def test_stream_in_openapi_and_docs(server):
    op = server.client.get("/openapi.json").json()["paths"][STREAM]["post"]
    assert "text/event-stream" in op["responses"]["200"]["content"]
    assert {"400", "413", "429", "503"} <= set(op["responses"])
    assert op["requestBody"] == server.client.get("/openapi.json").json()["paths"]["/v1/generate"]["post"]["requestBody"]
    assert STREAM in server.client.get("/docs").text


def test_progress_hooks_change_nothing(runtime, subject):
    from monkey_trt.core.config import MonkeyConfig, Request

    request = Request("a toy", 64, 64, 3, MonkeyConfig())
    plain = runtime(request, subject, baseline_scale=0.5)
    heard: list[tuple] = []
    hooked = runtime(request, subject, baseline_scale=0.5, progress=lambda *a: heard.append(("stage", *a)),
                     steps=lambda *a: heard.append(("step", *a)))
    for a, b in [(plain.image, hooked.image), (plain.mask.mask, hooked.mask.mask), (plain.baseline_image, hooked.baseline_image)]:
        assert np.array_equal(a, b)
    calls = [h for h in heard if h[0] == "step"]
    assert len(calls) == len(hooked.unet_calls)  # one step event per UNet call, each counted within its stage
    for stage in {h[1] for h in calls}:
        counts = [(h[2], h[3]) for h in calls if h[1] == stage]
        assert counts == [(i + 1, len(counts)) for i in range(len(counts))], stage


def test_sigterm_lets_a_stream_finish(engine_dir, subject_png):
    s = Server(engine_dir)
    listener = Listener(s.url, subject_png, prompt="a toy", steps_final=20, masked_steps="2,3")
    listener.wait_for(lambda ev: any(n == "step" for n, _ in ev), "step event")
    s.terminate()
    listener.join(WAIT_S)
    assert listener.events[-1][0] == "result", listener.events[-3:]
    assert s.stop() == 0


# -- the stub service: positions, limits, hang-ups ------------------------------------------------------
def test_queue_positions_and_the_queue_bound(stub):
    srv = stub(max_queue=2)
    srv.pipe.gate = gate = Turnstile()
    a = Listener(srv.url, SUBJECT, prompt="a")
    assert srv.pipe.started.acquire(timeout=WAIT_S)  # a runs (held by the gate)
    b = Listener(srv.url, SUBJECT, prompt="b")
    b.wait_for(lambda ev: ev and ev[0] == ("queued", {"position": 0}), "b queued next")
    c = Listener(srv.url, SUBJECT, prompt="c")
    c.wait_for(lambda ev: ev and ev[0] == ("queued", {"position": 1}), "c queued behind b")
    r = httpx.post(srv.url + STREAM, files=stream_form(SUBJECT, prompt="d"), timeout=WAIT_S)  # a + 2 waiting: full
    assert_one_error(r, 429, "server busy")
    assert int(r.headers["retry-after"]) >= 1
    a.wait_for(lambda ev: any(n == "stage" and d["stage"] == "stub" for n, d in ev), "a's stage")
    gate.let_one()  # a finishes, b runs: c moves up
    c.wait_for(lambda ev: ("queued", {"position": 0}) in ev, "c's new position")
    gate.set()
    for x in (a, b, c):
        x.join(WAIT_S)
        assert x.status == 200 and x.events[-1][0] == "result", x.events
    assert [d["position"] for n, d in c.events if n == "queued"] == [1, 0]
    srv.wait_depth(0)
    assert srv.metric(200) == 3 and srv.metric(429) == 1


def test_client_that_leaves_costs_no_more_than_a_cancelled_request(stub, caplog):
    srv = stub(max_queue=2)
    srv.pipe.gate.clear()
    with caplog.at_level("INFO", logger="monkey_trt.serve"):
        a = raw_stream(srv.port, prompt="a")
        read_until(a, b"event: stage")  # a runs (held by the gate)
        b = raw_stream(srv.port, prompt="b")
        read_until(b, b"event: queued")
        srv.wait_depth(2)
        b.close()  # b leaves while queued: its job is dropped, its slot freed at once
        srv.wait_depth(1)
        a.close()  # a leaves while running: the job ends unwatched, then its slot frees
        time.sleep(0.3)
        assert srv.service.worker.depth == 1
        srv.pipe.gate.set()
        srv.wait_depth(0)
    assert len(srv.pipe.threads) == 1  # b's job never ran
    deadline = time.monotonic() + WAIT_S
    while srv.metric(499) < 2:
        assert time.monotonic() < deadline, srv.client.get("/metrics").text
        time.sleep(0.05)
    assert srv.metric(500) == 0 and srv.metric(200) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    assert post(srv.client, SUBJECT, prompt="fine").status_code == 200


def test_timeout_ends_the_stream_with_504_and_keepalives_meanwhile(stub, monkeypatch):
    from monkey_trt.serve import stream

    monkeypatch.setattr(stream, "KEEPALIVE_S", 0.2)
    srv = stub(timeout_s=1.0)
    srv.pipe.gate.clear()
    t0 = time.monotonic()
    r = httpx.post(srv.url + STREAM, files=stream_form(SUBJECT, prompt="a"), timeout=WAIT_S)
    assert r.status_code == 200 and time.monotonic() - t0 >= 1.0
    assert ": keep-alive" in r.text
    events = parse_sse(r.text)
    assert events[-1] == ("error", {"status": 504, "error": "request did not finish within the 1s timeout",
                                    "request_id": r.headers["x-request-id"]})
    srv.pipe.gate.set()
    srv.wait_depth(0)
    assert srv.metric(504) == 1


def test_body_limits_apply_to_the_stream(stub):
    srv = stub(max_body_bytes=4096)
    r = httpx.post(srv.url + STREAM, files=stream_form(b"x" * 10_000, prompt="a"), timeout=WAIT_S)
    assert_one_error(r, 413, "larger than")
    r = httpx.post(srv.url + STREAM, json={"prompt": "a", "image": base64.b64encode(SUBJECT).decode()}, timeout=WAIT_S)
    assert r.status_code == 200 and parse_sse(r.text)[-1][0] == "result"  # JSON bodies stream too
    srv.wait_depth(0)


def test_hostile_bodies_on_the_stream_are_refused_as_on_generate(stub):
    srv = stub(body_idle_s=0.5)
    s = srv.connect()  # a body that stops coming: 408 before any event
    s.sendall(f"POST {STREAM} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{".encode())
    reply = read_until(s, b"}")
    s.close()
    assert reply.startswith(b"HTTP/1.1 408") and b"not received in time" in reply and b"text/event-stream" not in reply
    b64 = base64.b64encode(SUBJECT).decode()
    for body, needle in [(('{"prompt":"x","image":"' + b64 + '","seed":1' + "0" * 5000 + "}").encode(), "digits"),
                         (b"[" * 100_000 + b"]" * 100_000, "nested too deeply")]:
        r = srv.client.post(STREAM, content=body, headers={"content-type": "application/json"})
        assert_one_error(r, 400, needle)
    srv.wait_depth(0)
    assert srv.metric(500) == 0 and srv.metric(400) == 2 and srv.metric(408) == 1
