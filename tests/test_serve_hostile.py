"""The HTTP service against hostile clients, on loopback: framing errors, slow and silent clients, too
many connections, floods of heavy requests, hang-ups, absurd JSON. A stub pipeline (no engine) under
the real app, the real inference worker and the real protocol, in this process: fast and event-driven.
One test runs the real `monkey-trt serve` (the tiny engine) to prove the CLI wires the same limits in."""

from __future__ import annotations

import concurrent.futures as cf
import io
import json
import logging
import re
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from PIL import Image

from monkey_trt.core.config import DEFAULT_MASK_LAYER
from monkey_trt.enginedir.networks import ModelDims, Profile, ShapeRange
from monkey_trt.runtime.mask import MaskResult
from monkey_trt.runtime.result import MonkeyOutput
from tests.test_serve import assert_one_error, post

WAIT_S = 60  # generous bound for anything event-driven on a loaded machine


class StubPipe:
    """What MonkeyService needs of a pipeline; `gate` holds a generation on the inference thread."""

    def __init__(self):
        self.manifest = SimpleNamespace(profile=Profile(ShapeRange(1, 1, 1), ShapeRange(64, 64, 128), ShapeRange(64, 64, 128)),
                                        mask_layer=DEFAULT_MASK_LAYER, preprocess=None, dims=ModelDims(), max_subjects=4,
                                        background_slot=True)
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Semaphore(0)
        self.threads: list[str] = []

    def encode_subject(self, subject):
        return np.zeros((1, 4, 8), np.float32)

    def encode_prompt(self, prompt):
        return np.zeros((1, 77, 8), np.float32), False

    def __call__(self, request, subject, baseline_scale=None, progress=None, steps=None):
        self.threads.append(threading.current_thread().name)
        self.encode_subject(subject), self.encode_prompt(request.prompt)
        if progress is not None:  # a streamed request listens (run_monkey's hooks)
            progress("stub", 0, 1)
        self.started.release()
        assert self.gate.wait(WAIT_S)
        if steps is not None:
            steps("stub", 1, 1)
        h, w = request.height, request.width
        return MonkeyOutput(image=np.zeros((h, w, 3), np.float32), mask=MaskResult(np.zeros((h, w), np.float32), (8, 8), ()),
                            timings={"stub": 0.0}, backend="stub")

    def close(self):
        pass


class LimitedServer:
    """uvicorn under `serve.limits` in a thread of this process, over a service with a stub pipeline."""

    def __init__(self, limits=None, max_queue=2, timeout_s=30.0, routes=(), **app_kwargs):
        from monkey_trt.serve.app import create_app
        from monkey_trt.serve.encoder_cache import with_encoder_caches
        from monkey_trt.serve.limits import HttpLimits, uvicorn_config
        from monkey_trt.serve.run import bind
        from monkey_trt.serve.service import MonkeyService, ServeConfig

        self.pipe = StubPipe()
        self.service = MonkeyService(ServeConfig(Path("stub-engine"), max_queue=max_queue, timeout_s=timeout_s, max_body_mb=20,
                                                 warmup=False))
        self.service.pipe = with_encoder_caches(self.pipe, 4, 4)
        self.service.caches = self.service.pipe.caches
        self.sock = bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        app = create_app(self.service, **app_kwargs)
        for path, endpoint in routes:
            app.add_api_route(path, endpoint)
        config = uvicorn_config(app, limits or HttpLimits(), log_level="critical")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.url, timeout=WAIT_S)
        deadline = time.monotonic() + WAIT_S
        while not (self.server.started and self.service.ready.is_set()):
            assert time.monotonic() < deadline, "stub server not ready"
            time.sleep(0.02)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=WAIT_S)

    def metric(self, status: int) -> float:
        for line in self.client.get("/metrics").text.splitlines():
            if line.startswith(f'monkey_requests_total{{status="{status}"}}'):
                return float(line.split()[-1])
        return 0.0

    def wait_depth(self, depth: int) -> None:
        deadline = time.monotonic() + WAIT_S
        while self.service.worker.depth != depth:
            assert time.monotonic() < deadline, f"queue depth {self.service.worker.depth}, expected {depth}"
            time.sleep(0.02)

    def stop(self):
        self.pipe.gate.set()
        self.client.close()
        self.server.should_exit = True
        self.thread.join(WAIT_S)
        self.sock.close()


@pytest.fixture()
def stub():
    servers = []

    def make(**kwargs) -> LimitedServer:
        servers.append(LimitedServer(**kwargs))
        return servers[-1]

    yield make
    for s in servers:
        s.stop()


def png(w, h, mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h)).save(buf, format="png")
    return buf.getvalue()


SUBJECT = png(32, 32)


def read_until_closed(s: socket.socket, limit_s: float = WAIT_S) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection -> (bytes, seconds it took)."""
    s.settimeout(limit_s)
    data, t0 = b"", time.monotonic()
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - t0


def parse_reply(data: bytes) -> tuple[int, dict[str, str], dict]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


def assert_json_reply(data: bytes, status: int, needle: str) -> dict[str, str]:
    got, headers, body = parse_reply(data)
    assert got == status, data[:300]
    assert set(body) == {"error", "request_id"} and needle.lower() in body["error"].lower(), body
    assert "\n" not in body["error"] and headers["content-type"] == "application/json"
    return headers


# -- framing ----------------------------------------------------------------------------------------
FRAMING = [
    (b"GARBAGE\r\n\r\n", 400, "malformed"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", 400, "malformed"),
    (b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, "malformed"),
    (b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\nzz\r\n", 400, "malformed"),
    (b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", 505, "HTTP/9.9"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n", 431, "exceed 32 KiB"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(5000)) + b"\r\n", 431, "exceed"),
    (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431, "exceed"),
]


def test_framing_errors_are_answered_as_json(stub):
    from monkey_trt.serve.metrics import PROCESS

    srv = stub()
    malformed = PROCESS.get("malformed")
    for raw, status, needle in FRAMING:
        with srv.connect() as s:
            s.sendall(raw)
            data, _ = read_until_closed(s)
        headers = assert_json_reply(data, status, needle)
        assert headers["connection"] == "close" and re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])
    with srv.connect() as s:  # a header block over the limit that arrives in pieces
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        for _ in range(100):
            if select.select([s], [], [], 0.05)[0]:
                break  # the answer is there: stop sending
            s.sendall(b"X-Pad: " + b"p" * 1000 + b"\r\n")
        data, _ = read_until_closed(s)
    assert_json_reply(data, 431, "exceed")
    assert PROCESS.get("malformed") - malformed == len(FRAMING)  # 505 is the app's: 7 + the trickled one
    assert srv.client.get("/healthz").json() == {"status": "ok"}


# -- header timeout ---------------------------------------------------------------------------------
def test_header_timeout_closes_slow_and_silent_clients_but_not_slow_requests(stub):
    from monkey_trt.serve.limits import HttpLimits

    srv = stub(limits=HttpLimits(header_timeout_s=1.0))
    with srv.connect() as s:  # silent: closed without a word
        data, took = read_until_closed(s)
    assert data == b"" and took < 20
    with srv.connect() as s:  # partial headers, then nothing
        s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\n")
        data, took = read_until_closed(s)
    assert_json_reply(data, 408, "headers not received within 1s")
    assert took < 20
    with srv.connect() as s:  # slowloris: a byte every 0.2 s, forever
        s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\n")
        t0, closed = time.monotonic(), False
        while not closed and time.monotonic() - t0 < WAIT_S:
            try:
                s.sendall(b"X")
            except OSError:
                closed = True
            time.sleep(0.2)
            s.setblocking(False)
            try:
                closed = closed or s.recv(65536).startswith(b"HTTP/1.1 408")
            except BlockingIOError:
                pass
            except OSError:
                closed = True
            s.setblocking(True)
        assert closed and time.monotonic() - t0 < 20
    # a request whose *processing* outlasts the header timeout is not cut, and its keep-alive connection serves on
    srv.pipe.gate.clear()
    with httpx.Client(base_url=srv.url, timeout=WAIT_S) as c:
        with cf.ThreadPoolExecutor(1) as pool:
            fut = pool.submit(post, c, SUBJECT, prompt="slow")
            assert srv.pipe.started.acquire(timeout=WAIT_S)
            time.sleep(1.5)  # longer than the header timeout, while the request is in the app
            srv.pipe.gate.set()
            assert fut.result().status_code == 200
        assert post(c, SUBJECT, prompt="again").status_code == 200  # the same connection (keep-alive)


# -- connection cap ---------------------------------------------------------------------------------
def test_connection_cap_answers_503_json_and_recovers(stub):
    from monkey_trt.serve.limits import HttpLimits
    from monkey_trt.serve.metrics import PROCESS

    srv = stub(limits=HttpLimits(max_connections=4, header_timeout_s=WAIT_S))
    srv.client.close()  # its keep-alive connection would count
    refused = PROCESS.get("connection_cap")
    held = [srv.connect() for _ in range(4)]
    try:
        with srv.connect() as s:  # accepted after the 4 (the backlog is FIFO): over the cap
            data, _ = read_until_closed(s)
        headers = assert_json_reply(data, 503, "too many open connections")
        assert headers["retry-after"] == "1"
        assert PROCESS.get("connection_cap") == refused + 1
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + WAIT_S
    while True:  # the held connections close: room again
        try:
            r = httpx.get(srv.url + "/healthz", timeout=WAIT_S)
            if r.status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_healthz_answers_while_idle_connections_fill_the_cap(stub):
    """Issue 25, class 9: a liveness probe must not fail because slow clients hold every connection."""
    from monkey_trt.serve.limits import HttpLimits

    srv = stub(limits=HttpLimits(max_connections=4, header_timeout_s=WAIT_S))
    srv.client.close()
    held = [srv.connect() for _ in range(4)]  # idle: connected, nothing sent
    try:
        for _ in range(3):
            with srv.connect() as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                data, _ = read_until_closed(s)
            assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b'{"status": "ok"}'), data[:200]
        with srv.connect() as s:  # anything else over the cap is still refused
            s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            data, _ = read_until_closed(s)
        assert_json_reply(data, 503, "too many open connections")
    finally:
        for s in held:
            s.close()


# -- write timeout ----------------------------------------------------------------------------------
def test_client_that_stops_reading_its_response_is_dropped(stub):
    from fastapi.responses import Response

    from monkey_trt.serve.limits import HttpLimits
    from monkey_trt.serve.metrics import PROCESS

    srv = stub(limits=HttpLimits(write_timeout_s=1.0), routes=[("/big", lambda: Response(b"x" * (64 << 20)))])
    dropped = PROCESS.get("write_timeout")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(WAIT_S)
    s.connect(("127.0.0.1", srv.port))
    try:
        s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read the 64 MiB answer
        deadline = time.monotonic() + WAIT_S
        while PROCESS.get("write_timeout") == dropped:
            assert time.monotonic() < deadline, "a client that reads nothing kept its connection"
            time.sleep(0.05)
        while len(srv.server.server_state.connections) > 0:  # dropped, not left waiting to flush
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        s.close()
    assert srv.client.get("/healthz").status_code == 200


# -- body timeouts ----------------------------------------------------------------------------------
def test_body_idle_and_total_timeouts(stub):
    srv = stub(body_idle_s=1.0, body_total_s=3.0)
    head = b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000\r\n\r\n"
    with srv.connect() as s:  # stalls
        s.sendall(head + b'{"pro')
        data, took = read_until_closed(s)
    headers = assert_json_reply(data, 408, "no data for 1s (5 bytes received)")
    assert headers["connection"] == "close" and took < 20
    with srv.connect() as s:  # trickles: a byte every 0.3 s never trips the idle limit, the total one ends it
        s.sendall(head)
        t0, data = time.monotonic(), b""
        s.settimeout(0.3)
        while time.monotonic() - t0 < WAIT_S:
            try:
                s.sendall(b" ")
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            except socket.timeout:
                continue
            except OSError:
                break
    assert_json_reply(data, 408, "not complete within 3s")
    assert time.monotonic() - t0 < 30
    srv.wait_depth(0)  # the slots they held are free
    assert srv.metric(408) == 2


# -- admission before the body; the queue bounds memory ---------------------------------------------
def test_full_queue_refuses_before_reading_the_body(stub):
    srv = stub(max_queue=0)
    srv.pipe.gate.clear()
    with cf.ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, srv.client, SUBJECT, prompt="holds the only slot")
        assert srv.pipe.started.acquire(timeout=WAIT_S)
        with srv.connect() as s:  # declares 10 MiB, sends 10 bytes: answered at once, nothing read
            s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 10485760\r\n\r\n{\"prompt\":")
            data, _ = read_until_closed(s)
        headers = assert_json_reply(data, 429, "busy")
        assert int(headers["retry-after"]) >= 1 and headers["connection"] == "close"
        srv.pipe.gate.set()
        assert first.result().status_code == 200
    srv.wait_depth(0)


def test_flood_of_heavy_uploads_is_bounded_by_the_queue(stub, monkeypatch):
    """9 clients with 4-Mpx uploads against --max-queue 1, the engine busy: 2 admitted, 7 refused without
    their bodies being parsed; decoding happens on the inference thread, one image at a time."""
    import monkey_trt.serve.app as app_module

    decoding, most, threads = [0], [0], []
    lock = threading.Lock()
    real_decode = app_module.decode_subject

    def counting_decode(data, name):
        with lock:
            decoding[0] += 1
            most[0] = max(most[0], decoding[0])
            threads.append(threading.current_thread().name)
        try:
            return real_decode(data, name)
        finally:
            with lock:
                decoding[0] -= 1

    monkeypatch.setattr(app_module, "decode_subject", counting_decode)
    srv = stub(max_queue=1)
    srv.pipe.gate.clear()
    heavy = png(2000, 2000)
    clients = [httpx.Client(base_url=srv.url, timeout=WAIT_S) for _ in range(9)]
    try:
        with cf.ThreadPoolExecutor(9) as pool:
            first = pool.submit(post, clients[0], heavy, prompt="first")
            assert srv.pipe.started.acquire(timeout=WAIT_S)
            rest = [pool.submit(post, c, heavy, prompt=f"p{i}") for i, c in enumerate(clients[1:])]
            done, _ = set(), None
            deadline = time.monotonic() + WAIT_S
            while len(done) < 7:  # seven refusals come back while the engine is still busy
                done, _ = cf.wait(rest, timeout=1.0)
                assert time.monotonic() < deadline, f"{len(done)} answers while the engine is busy"
            assert srv.service.worker.depth == 2
            srv.pipe.gate.set()
            codes = sorted([first.result().status_code] + [f.result().status_code for f in rest])
    finally:
        for c in clients:
            c.close()
    assert codes == [200, 200] + [429] * 7, codes
    assert most[0] == 1 and len(threads) == 2 and all(t.startswith("monkey-infer") for t in threads), threads
    srv.wait_depth(0)


# -- hang-ups ------------------------------------------------------------------------------------------
def test_client_hang_up_is_not_a_server_error(stub, caplog):
    srv = stub()
    multipart = (b"--b\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nx\r\n--b\r\n"
                 b"Content-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n" + SUBJECT[:40])
    with caplog.at_level("INFO", logger="monkey_trt.serve"):
        for head, body in [(b"Content-Type: application/json\r\nContent-Length: 100000", b'{"prompt":'),
                           (b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 900000", multipart)]:
            s = srv.connect()
            s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n\r\n" + body)
            deadline = time.monotonic() + WAIT_S
            while srv.service.worker.depth == 0:  # the request is admitted and reading its body
                assert time.monotonic() < deadline
                time.sleep(0.01)
            s.close()
            srv.wait_depth(0)
    deadline = time.monotonic() + WAIT_S
    while srv.metric(499) < 2:
        assert time.monotonic() < deadline, srv.client.get("/metrics").text
        time.sleep(0.05)
    assert srv.metric(500) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


# -- absurd fields -------------------------------------------------------------------------------------
def test_absurd_json_and_images_are_400s(stub):
    import base64

    srv = stub()
    c = srv.client
    b64 = base64.b64encode(SUBJECT).decode()
    json_ct = {"content-type": "application/json"}
    cases = [
        (c.post("/v1/generate", content=('{"prompt":"x","image":"%s","seed":1%s}' % (b64, "0" * 5000)).encode(), headers=json_ct), "digits"),
        (c.post("/v1/generate", content=('{"prompt":"x","image":"%s","threshold":1%s}' % (b64, "0" * 400)).encode(), headers=json_ct), "digits"),
        (c.post("/v1/generate", content=b"[" * 100_000 + b"]" * 100_000, headers=json_ct), "nested too deeply"),
        (c.post("/v1/generate", json={"prompt": "x", "image": b64, "mask_steps": list(range(200_000))}), "too large"),
        (c.post("/v1/generate", json={"prompt": "x", "image": b64, "mask_layer": "a" * 500_000}), "too large"),
        (c.post("/v1/generate", json={"prompt": "x", "image": b64, "a" * 10_000: 1}), "field name"),
        (post(c, SUBJECT, prompt="x", seed="9" * 5000), "too large"),
        (post(c, png(8192, 1, "L"), prompt="x"), "32x its short side"),
        (post(c, png(8192, 8192, "L"), prompt="x"), "Mpx"),
    ]
    for r, needle in cases:
        assert_one_error(r, 400, needle)
        assert len(r.json()["error"]) < 300
    assert srv.metric(500) == 0
    assert post(c, SUBJECT, prompt="fine").status_code == 200


# -- the real CLI server --------------------------------------------------------------------------------
def test_cli_server_has_the_limits_and_rate_limits_its_log(engine_dir, tmp_path):
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "monkey_trt.cli", "serve", "--engine-dir", str(engine_dir), "--port", "0",
                                 "--log-level", "warning", "--max-queue", "2"], stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("monkey-trt serve: http://"), (line, log_path.read_text()[-2000:])
        url = line.split()[2]
        host, port = url.split("//")[1].rsplit(":", 1)
        with httpx.Client(base_url=url, timeout=WAIT_S * 2) as c:
            deadline = time.monotonic() + WAIT_S * 2
            while c.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            lines0 = len(log_path.read_text().splitlines())
            for _ in range(150):
                with socket.create_connection((host, int(port)), timeout=WAIT_S) as s:
                    s.sendall(b"GARBAGE\r\n\r\n")
                    data, _ = read_until_closed(s)
                assert data.startswith(b"HTTP/1.1 400") and b'"error"' in data
            with socket.create_connection((host, int(port)), timeout=WAIT_S) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
                assert_json_reply(read_until_closed(s)[0], 431, "exceed")
            assert_one_error(post(c, png(8192, 1, "L"), prompt="x"), 400, "32x its short side")
            metrics = c.get("/metrics").text
            grew = len(log_path.read_text().splitlines()) - lines0
            assert grew <= 30, f"{grew} log lines for 151 malformed requests"
            dropped = float(re.search(r"^monkey_log_lines_dropped_total (\S+)$", metrics, re.M).group(1))
            malformed = float(re.search(r'^monkey_http_refused_total\{reason="malformed"\} (\S+)$', metrics, re.M).group(1))
            assert dropped >= 100 and malformed == 151, (dropped, malformed)
    finally:
        proc.terminate()
        assert proc.wait(WAIT_S * 2) == 0
        proc.stdout.close()


def test_middleware_answers_a_bad_content_length_itself():
    """Behind a proxy or another HTTP implementation a bad Content-Length can reach the app: 400 JSON, closed."""
    import asyncio

    from monkey_trt.serve.app import ServeMiddleware

    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):
        raise AssertionError("reached the app")

    scope = {"type": "http", "path": "/v1/generate", "http_version": "1.1", "headers": [(b"content-length", b"abc")]}
    asyncio.run(ServeMiddleware(app, max_body_bytes=100)(scope, receive, send))
    start, body = sent[0], json.loads(sent[1]["body"])
    assert start["status"] == 400 and (b"connection", b"close") in start["headers"]
    assert body["error"] == "bad Content-Length header" and body["request_id"]
