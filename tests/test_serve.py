"""`monkey-trt serve`: a real server on loopback (uvicorn in a subprocess), a real HTTP client (httpx)."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import io
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from PIL import Image

from monkey_trt.cli import main

# few UNet steps: the load and memory tests send hundreds of requests
FAST = {"steps_mask_pass": "2", "mask_steps": "1", "steps_final": "3", "masked_steps": "1,2"}
TINY = {"steps_mask_pass": "1", "mask_steps": "0", "steps_final": "1", "masked_steps": "0"}  # 2 UNet calls


class Server:
    """`monkey-trt serve` in a subprocess on 127.0.0.1, port chosen by the OS."""

    def __init__(self, engine_dir: Path, *args: str):
        cmd = [sys.executable, "-m", "monkey_trt.cli", "serve", "--engine-dir", str(engine_dir), "--port", "0",
               "--log-level", "warning", *args]
        self.terminated = False
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("monkey-trt serve: http://"):
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r} {self.proc.stderr.read()}")
        self.url = line.split()[2]
        self.client = httpx.Client(base_url=self.url, timeout=120)
        deadline = time.monotonic() + 60
        while self.client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "server not ready within 60 s"
            time.sleep(0.1)

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))

    def terminate(self) -> None:
        """SIGTERM, once: a second one during the graceful shutdown would kill the process outright."""
        if not self.terminated:
            self.terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        self.client.close()
        if self.proc.poll() is None:
            self.terminate()
        try:
            return self.proc.wait(timeout=60)
        finally:
            self.proc.stdout.close()
            self.proc.stderr.close()


@pytest.fixture(scope="module")
def server(engine_dir):
    s = Server(engine_dir, "--max-queue", "2", "--max-body-mb", "1")
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def subject_png(tiny_model_dir) -> bytes:
    return (tiny_model_dir / "subject.png").read_bytes()


def post(client, subject: bytes | None, headers=None, **fields):
    """multipart/form-data: `image` as a file part (unless None), every other field as a plain part."""
    files = {k: (None, str(v)) for k, v in fields.items()}
    if subject is not None:
        files["image"] = ("subject.png", subject, "image/png")
    return client.post("/v1/generate", files=files, headers=headers)


def png_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def assert_one_error(r, status: int, needle: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error", "request_id"}, body
    assert needle.lower() in body["error"].lower(), body["error"]
    assert "\n" not in body["error"] and body["request_id"] == r.headers["x-request-id"]


# -- the happy path ---------------------------------------------------------------------------
def test_service_equals_cli_generate(server, subject_png, tiny_model_dir, engine_dir, tmp_path):
    knobs = {"seed": 7, "height": 64, "width": 96, "threshold": 0.4, "masked_steps": "2,3,4", "guidance_scale": 6.0}
    argv = ["generate", "--backend", "ort", "--engine-dir", str(engine_dir), "--image", str(tiny_model_dir / "subject.png"),
            "--prompt", "a toy on the beach", "--out", str(tmp_path / "cli")]
    for k, v in knobs.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    assert main(argv) == 0

    r = post(server.client, subject_png, prompt="a toy on the beach", **knobs)
    assert r.status_code == 200, r.text
    body = r.json()
    image, mask = base64.b64decode(body["image_png"]), base64.b64decode(body["mask_png"])
    assert image == (tmp_path / "cli" / "monkey.png").read_bytes()  # the same PNG bytes as the CLI writes
    assert mask == (tmp_path / "cli" / "mask.png").read_bytes()
    cli = json.loads((tmp_path / "cli" / "result.json").read_text())
    assert body["mask"]["coverage"] == cli["mask"]["coverage"] and body["seed"] == 7
    assert body["config"] == cli["config"] and body["height"] == 64 and body["width"] == 96
    assert {"encode_prompt", "encode_subject", "mask_pass", "final_pass", "decode", "queue", "total"} <= set(body["timings_s"])

    # the same request as JSON (base64 image), and as image/png
    doc = {"prompt": "a toy on the beach", "image": base64.b64encode(subject_png).decode(), **knobs, "masked_steps": [2, 3, 4]}
    r2 = server.client.post("/v1/generate", json=doc)
    assert r2.status_code == 200 and base64.b64decode(r2.json()["image_png"]) == image
    r3 = post(server.client, subject_png, headers={"Accept": "image/png"}, prompt="a toy on the beach", **knobs)
    assert r3.status_code == 200 and r3.headers["content-type"] == "image/png" and r3.content == image
    assert r3.headers["x-seed"] == "7"


def test_baseline_and_long_prompt(server, subject_png):
    r = post(server.client, subject_png, prompt=" ".join(["a toy on the beach"] * 30), baseline="true", **FAST)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["prompt_truncated"] and any("truncated" in w for w in body["warnings"])
    assert png_array(base64.b64decode(body["baseline_png"])).shape == (64, 64, 3)  # default size: the engine's opt


def test_endpoints(server):
    assert server.client.get("/healthz").json() == {"status": "ok"}
    ready = server.client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["backend"] == "ort"
    assert "/v1/generate" in server.client.get("/openapi.json").json()["paths"]
    assert server.client.get("/docs").status_code == 200
    metrics = server.client.get("/metrics").text
    for name in ("monkey_requests_total", "monkey_stage_seconds_bucket", "monkey_queue_depth", "monkey_cache_hits_total"):
        assert name in metrics


# -- bad requests -------------------------------------------------------------------------------
def _png(size=(32, 32), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="png")
    return buf.getvalue()


BAD_FORMS = [  # (fields, image, status, message)
    ({"prompt": "x", "seed": "abc"}, "ok", 400, "'seed' must be an integer"),
    ({"prompt": "x", "seed": "-1"}, "ok", 400, "seed must be in"),
    ({"prompt": "x", "height": "60"}, "ok", 400, "multiple of 8"),
    ({"prompt": "x", "height": "1024"}, "ok", 422, "outside the engine profile"),
    ({"prompt": "x", "width": "256"}, "ok", 422, "outside the engine profile"),
    ({"prompt": "x", "threshold": "1.5"}, "ok", 400, "threshold must be in"),
    ({"prompt": "x", "threshold": "nan"}, "ok", 400, "finite"),
    ({"prompt": "x", "mask_steps": "1,9"}, "ok", 400, "mask_steps"),
    ({"prompt": "x", "masked_steps": "a,b"}, "ok", 400, "'masked_steps' must be an integer"),
    ({"prompt": "x", "mask_token": "7"}, "ok", 400, "mask_token must be in"),
    ({"prompt": "x", "steps_final": "0"}, "ok", 400, "steps_final must be in"),
    ({"prompt": "x", "guidance_scale": "0.5"}, "ok", 400, "guidance_scale must be in"),
    ({"prompt": "x", "scale_final": "9"}, "ok", 400, "scale_final must be in"),
    ({"prompt": "x", "mask_layer": "down_blocks.0.attentions.0.transformer_blocks.0.attn2"}, "ok", 422, "attention map"),
    ({"prompt": "x", "baseline": "maybe"}, "ok", 400, "true or false"),
    ({"prompt": "x", "baseline_scale": "5"}, "ok", 400, "baseline_scale must be in"),
    ({"prompt": "   "}, "ok", 400, "prompt is empty"),
    ({"seed": "1"}, "ok", 400, "'prompt' is required"),
    ({"prompt": "x"}, None, 400, "'image'"),
    ({"prompt": "x", "colour": "red"}, "ok", 400, "unknown field 'colour'"),
    ({"prompt": "x"}, b"this is not an image", 400, "not a readable image"),
    ({"prompt": "x"}, "truncated", 400, "corrupt or truncated"),
    ({"prompt": "x"}, b"", 400, "empty"),
    ({"prompt": "x"}, "wide", 400, "at most 8192 px"),
    ({"prompt": "x" * 5000}, "ok", 400, "at most 4096"),
]


@pytest.mark.parametrize("fields, image, status, message", BAD_FORMS)
def test_bad_form_requests(server, subject_png, fields, image, status, message):
    data = {"ok": subject_png, "truncated": subject_png[: len(subject_png) // 2], "wide": _png((9000, 1), "L")}.get(image, image) \
        if isinstance(image, str) else image
    assert_one_error(post(server.client, data, **fields), status, message)


def test_bad_requests_of_other_shapes(server, subject_png):
    c = server.client
    b64 = base64.b64encode(subject_png).decode()
    cases = [
        (c.post("/v1/generate", content=b"{not json", headers={"content-type": "application/json"}), 400, "not valid JSON"),
        (c.post("/v1/generate", json=["a", "list"]), 400, "must be an object"),
        (c.post("/v1/generate", json={"prompt": "x", "image": "***"}), 400, "not valid base64"),
        (c.post("/v1/generate", json={"prompt": "x"}), 400, "'image'"),
        (c.post("/v1/generate", json={"prompt": "x", "image": b64, "seed": True}), 400, "'seed' must be an integer"),
        (c.post("/v1/generate", json={"prompt": 3, "image": b64}), 400, "'prompt' must be a string"),
        (c.post("/v1/generate", json={"prompt": "x", "image": b64, "mask_steps": "1,x"}), 400, "'mask_steps' must be an integer"),
        (c.post("/v1/generate", content=b"x", headers={"content-type": "text/plain"}), 415, "Content-Type"),
        (c.post("/v1/generate", files={"image": ("a.png", subject_png), "prompt": ("p.txt", b"x")}), 400, "plain form value"),
        (c.post("/v1/generate", files={"prompt": (None, "x"), "image": (None, "not a file")}), 400, "file upload"),
        (c.get("/v1/generate"), 405, "not allowed"),
        (c.get("/nothing-here"), 404, "not found"),
    ]
    for r, status, needle in cases:
        assert_one_error(r, status, needle)
    # A body over the limit is refused on its Content-Length, before a byte of it is read. Sent as headers only:
    # a client still sending the body may meet a connection reset when the server answers and closes (timing luck).
    reply = _headers_only(server.url, b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                          b"boundary=b\r\nContent-Length: %d\r\n\r\n" % (2 * 2**20))
    assert reply.startswith(b"HTTP/1.1 413") and b"larger than the 1 MiB limit" in reply, reply[:300]


def _headers_only(url: str, head: bytes) -> bytes:
    """Send `head` (a request's headers, no body) and read the answer until the server closes."""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(url)
    reply = b""
    with socket.create_connection((u.hostname, u.port), timeout=20) as sock:
        sock.sendall(head)
        while data := sock.recv(65536):  # the answer carries Connection: close
            reply += data
    return reply


def _count(metrics: str, status: str) -> float:
    m = re.search(r'^monkey_requests_total\{status="%s"\} ([0-9.e+]+)$' % status, metrics, re.M)
    return float(m.group(1)) if m else 0.0


def test_oversized_chunked_body_is_refused_while_reading(server):
    """No Content-Length, a body that never ends: the 413 must come once the limit (1 MiB) is passed.

    The server answers and closes while the client is still sending: the client's next send, or its read, may
    meet a connection reset (under load the reset can even discard the answer already received), so sending
    stops at the first refusal and, when the answer was lost that way, the server's own count of 413s says
    whether it refused the body. No timing luck either way."""
    import socket
    from urllib.parse import urlsplit

    before = _count(server.client.get("/metrics").text, "413")
    u = urlsplit(server.url)
    reply = b""
    with socket.create_connection((u.hostname, u.port), timeout=20) as sock:
        try:
            sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            chunk = b"\0" * 2**16
            for _ in range(24):  # 1.5 MiB, and the final empty chunk is never sent
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused and closed: read what it answered
        try:
            while not reply.rstrip().endswith(b"}"):  # the status line, headers, then the JSON error
                data = sock.recv(65536)
                if not data:
                    break
                reply += data
        except ConnectionResetError:
            pass
    if reply.rstrip().endswith(b"}"):
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert b"larger than the 1 MiB limit" in reply
    else:  # the answer was lost to the reset: the server's count says what it answered
        assert reply == b"" or reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert _count(server.client.get("/metrics").text, "413") == before + 1
    assert server.client.get("/readyz").status_code == 200


def test_healthy_after_bad_requests(server, subject_png):
    r = post(server.client, subject_png, prompt="still here", **FAST)
    assert r.status_code == 200 and r.json()["mask"]["coverage"] >= 0
    metrics = server.client.get("/metrics").text
    assert 'monkey_requests_total{status="400"}' in metrics and 'monkey_requests_total{status="422"}' in metrics


# -- several subjects (issue 22) ---------------------------------------------------------------------
def _second_png(subject_png: bytes) -> bytes:
    """A second subject unlike the first (mirrored, red and blue swapped), as PNG bytes."""
    from PIL import ImageOps

    r, g, b = ImageOps.mirror(Image.open(io.BytesIO(subject_png)).convert("RGB")).split()
    buf = io.BytesIO()
    Image.merge("RGB", (b, g, r)).save(buf, format="png")
    return buf.getvalue()


def post_images(client, images: list[tuple[str, bytes]], background: tuple[str, bytes] | None = None, **fields):
    """multipart/form-data with one `image` part per subject (in order) and an optional `background_image` part."""
    parts = [("image", (name, data, "image/png")) for name, data in images]
    if background is not None:
        parts.append(("background_image", (background[0], background[1], "image/png")))
    parts += [(k, (None, str(v))) for k, v in fields.items()]
    return client.post("/v1/generate", files=parts)


def test_two_subjects_and_a_background_equal_cli_generate(server, subject_png, engine_dir, tmp_path):
    second, beach = _second_png(subject_png), _png((40, 48))
    for name, data in (("toy.png", subject_png), ("robot.png", second), ("beach.png", beach)):
        (tmp_path / name).write_bytes(data)
    knobs = {"seed": 5, "subject_scales": "1,0.8", "background_scale": "0.5", **FAST}
    argv = ["generate", "--engine-dir", str(engine_dir), "--image", str(tmp_path / "toy.png"), "--image", str(tmp_path / "robot.png"),
            "--background-image", str(tmp_path / "beach.png"), "--prompt", "a toy and a robot", "--out", str(tmp_path / "cli")]
    for k, v in knobs.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    assert main(argv) == 0
    r = post_images(server.client, [("toy.png", subject_png), ("robot.png", second)], ("beach.png", beach), prompt="a toy and a robot", **knobs)
    assert r.status_code == 200, r.text
    body = r.json()
    cli = json.loads((tmp_path / "cli" / "result.json").read_text())
    assert [(s["index"], s["image"], s["scale"]) for s in body["subjects"]] == [(1, "toy.png", 1.0), (2, "robot.png", 0.8)]
    for got, want in zip(body["subjects"], cli["subjects"]):
        assert got["coverage"] == want["coverage"] and got["lost_to_overlap"] == want["lost_to_overlap"]
        assert base64.b64decode(got["mask_png"]) == (tmp_path / "cli" / f"mask_{got['index']}.png").read_bytes()
    assert body["overlap"] == cli["overlap"] and body["background"]["image"] == "beach.png" and body["background"]["scale"] == 0.5
    assert base64.b64decode(body["background"]["mask_png"]) == (tmp_path / "cli" / "background_mask.png").read_bytes()
    assert base64.b64decode(body["image_png"]) == (tmp_path / "cli" / "monkey.png").read_bytes()
    assert base64.b64decode(body["mask_png"]) == (tmp_path / "cli" / "mask.png").read_bytes()  # the union

    # the same as JSON: `image` a list of base64 strings (order kept), `background_image` one
    doc = {"prompt": "a toy and a robot", "image": [base64.b64encode(x).decode() for x in (subject_png, second)],
           "background_image": base64.b64encode(beach).decode(), **knobs, "subject_scales": [1, 0.8], "background_scale": 0.5,
           "seed": 5, "steps_mask_pass": 2, "mask_steps": [1], "steps_final": 3, "masked_steps": [1, 2]}
    j = server.client.post("/v1/generate", json=doc)
    assert j.status_code == 200, j.text
    assert j.json()["image_png"] == body["image_png"] and [s["image"] for s in j.json()["subjects"]] == [None, None]
    swapped = post_images(server.client, [("robot.png", second), ("toy.png", subject_png)], prompt="a toy and a robot", seed=5, **FAST)
    assert [s["image"] for s in swapped.json()["subjects"]] == ["robot.png", "toy.png"]  # the parts' order is the subjects'
    ready = server.client.get("/readyz").json()
    assert ready["max_subjects"] == 4
    image = server.client.get("/openapi.json").json()["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]["image"]
    assert image["type"] == "array" and image["maxItems"] == 4


def test_bad_several_subject_requests(server, subject_png):
    c, ok = server.client, ("a.png", subject_png)
    bad = ("cat.png", subject_png[: len(subject_png) // 2])
    b64 = base64.b64encode(subject_png).decode()
    cases = [
        (post_images(c, [ok] * 5, prompt="x"), 422, "at most 4 subject"),
        (post_images(c, [ok] * 7, prompt="x"), 422, "image parts"),  # refused while the form is read
        (post_images(c, [ok, bad], prompt="x"), 400, "subject 2 (cat.png): "),
        (post_images(c, [ok, ok], bad, prompt="x"), 400, "background (cat.png): "),
        (post_images(c, [ok, ok], prompt="x", subject_scales="1,1,1"), 400, "subject_scales has 3 entries for 2"),
        (post_images(c, [ok], prompt="x", background_scale="0.5"), 400, "background_scale applies to a background image"),
        (post_images(c, [], ("bg.png", subject_png), prompt="x"), 400, "beside subject images"),
        (post_images(c, [ok], [("bg.png", subject_png)][0], prompt="x", subject_scales="9"), 400, "subject_scales[0] must be in"),
        (c.post("/v1/generate", files=[("image", ok), ("background_image", ok), ("background_image", ok), ("prompt", (None, "x"))]),
         400, "'background_image' is given more than once"),
        (c.post("/v1/generate", json={"prompt": "x", "image": []}), 400, "empty list"),
        (c.post("/v1/generate", json={"prompt": "x", "image": [b64, 3]}), 400, "base64 string"),
        (c.post("/v1/generate", json={"prompt": "x", "image": [b64] * 5}), 422, "at most 4 subject"),
        (c.post("/v1/generate", json={"prompt": "x", "background_image": b64}), 400, "beside subject images"),
    ]
    for r, status, needle in cases:
        assert_one_error(r, status, needle)


# -- cache ----------------------------------------------------------------------------------------
def test_repeated_subject_skips_the_image_encoder(server, tiny_model_dir):
    subject = Image.open(tiny_model_dir / "subject.png").convert("RGB").rotate(90)  # not seen by this server yet
    buf = io.BytesIO()
    subject.save(buf, format="png")
    data = buf.getvalue()

    def hits() -> float:
        line = next(x for x in server.client.get("/metrics").text.splitlines() if x.startswith('monkey_cache_hits_total{cache="subject"}'))
        return float(line.split()[-1])

    h0 = hits()
    first = post(server.client, data, prompt="a toy in the snow", seed=3, **FAST).json()
    second = post(server.client, data, prompt="a toy in the jungle", seed=3, **FAST).json()
    third = post(server.client, data, prompt="a toy in the snow", seed=3, **FAST).json()
    assert first["cache"] == {"subject": "miss", "prompt": "miss"}
    assert second["cache"] == {"subject": "hit", "prompt": "miss"}
    assert third["cache"] == {"subject": "hit", "prompt": "hit"}
    assert hits() == h0 + 2
    assert third["timings_s"]["encode_subject"] < first["timings_s"]["encode_subject"]
    assert third["image_png"] == first["image_png"] and third["mask_png"] == first["mask_png"]  # hit == miss, bit for bit


def test_cached_encoders_equal_uncached(engine_dir, subject):
    """Issue 13 defect 9: the caches wrap the backend's networks; the pipeline object is not changed."""
    from monkey_trt.core.config import MonkeyConfig, Request
    from monkey_trt.runtime.pipeline import MonkeyPipeline
    from monkey_trt.serve.encoder_cache import with_encoder_caches

    req = Request("a toy on the beach", 64, 64, seed=11, config=MonkeyConfig(steps_final=4, masked_steps=(1, 2)))
    with MonkeyPipeline.from_engine_dir(engine_dir) as pipe:
        before = dict(vars(pipe))
        cached = with_encoder_caches(pipe, subject_capacity=2, prompt_capacity=2)
        ref = pipe(req, subject)
        for _ in range(2):
            out = cached(req, subject)
            np.testing.assert_array_equal(out.image, ref.image)
            np.testing.assert_array_equal(out.mask.mask, ref.mask.mask)
        assert cached.caches.counters() == {"subject": (1, 1), "prompt": (1, 1)}
        again = pipe(req, subject)  # the pipeline itself still runs uncached
        np.testing.assert_array_equal(again.image, ref.image)
        assert cached.caches.counters() == {"subject": (1, 1), "prompt": (1, 1)}
        assert vars(pipe).keys() == before.keys() and all(vars(pipe)[k] is v for k, v in before.items() if k != "_size")
        assert "encode_subject" not in vars(pipe) and "encode_prompt" not in vars(pipe)  # no method patched in
        assert cached.manifest is pipe.manifest  # everything else is the pipeline's
        for i in range(3):  # LRU bound
            cached.encode_prompt(f"prompt {i}")
        assert len(cached.caches.prompt) == 2


# -- bounded load, memory -------------------------------------------------------------------------
def test_bounded_load_only_429_besides_200(server, subject_png):
    """4 clients x 6 requests against --max-queue 2: every answer is a 200 or a 429 with Retry-After."""

    def client(i):
        out = []
        with httpx.Client(base_url=server.url, timeout=120) as c:
            for j in range(6):
                r = post(c, subject_png, prompt=f"a toy number {i}", seed=j, **FAST)
                out.append((r.status_code, r.headers.get("retry-after"), r.json()))
        return out

    with cf.ThreadPoolExecutor(4) as pool:
        results = [x for f in [pool.submit(client, i) for i in range(4)] for x in f.result()]
    codes = [s for s, _, _ in results]
    assert set(codes) <= {200, 429} and codes.count(200) >= 4, codes
    for status, retry_after, body in results:
        if status == 429:
            assert int(retry_after) >= 1 and "busy" in body["error"]
        else:
            assert png_array(base64.b64decode(body["image_png"])).shape == (64, 64, 3)


def test_memory_is_flat_over_200_requests(server, subject_png):
    def burst(n):
        with cf.ThreadPoolExecutor(2) as pool:
            codes = list(pool.map(lambda j: post(server.client, subject_png, prompt=f"a toy {j % 7}", seed=j, **TINY).status_code, range(n)))
        assert set(codes) == {200}

    burst(20)
    after_20 = server.rss_kib()
    burst(180)
    after_200 = server.rss_kib()
    assert after_200 <= 1.05 * after_20, (after_20, after_200)


# -- the service in process: internal errors, timeouts --------------------------------------------
class ThreadServer:
    """uvicorn in a thread of this process (to reach into the service)."""

    def __init__(self, app):
        import uvicorn

        from monkey_trt.serve.run import bind

        self.sock = bind("127.0.0.1", 0)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="critical"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.sock.getsockname()[1]}", timeout=60)
        while not self.server.started:
            time.sleep(0.02)

    def stop(self):
        self.client.close()
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


@pytest.fixture()
def inproc(engine_dir):
    from monkey_trt.serve.app import create_app
    from monkey_trt.serve.service import MonkeyService, ServeConfig

    service = MonkeyService(ServeConfig(engine_dir, max_queue=0, timeout_s=2.0, warmup=False)).load()
    s = ThreadServer(create_app(service))
    s.service = service
    deadline = time.monotonic() + 30
    while s.client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield s
    s.stop()
    assert service.pipe is None  # closed by the app's shutdown


def test_internal_error_is_500_and_the_server_keeps_serving(inproc, subject_png, caplog):
    original = inproc.service.pipe.decode

    def broken(latents):
        raise RuntimeError("boom")

    inproc.service.pipe.decode = broken
    with caplog.at_level("ERROR", logger="monkey_trt.serve"):
        r = post(inproc.client, subject_png, prompt="x", **FAST)
    assert_one_error(r, 500, "internal error")
    assert r.json()["request_id"] in r.json()["error"]
    assert any(r.json()["request_id"] in rec.getMessage() for rec in caplog.records)
    inproc.service.pipe.decode = original
    assert post(inproc.client, subject_png, prompt="x", **FAST).status_code == 200


def test_timeout_is_504_and_queue_full_is_429(inproc, subject_png):
    original = inproc.service.pipe.decode
    release = threading.Event()

    def slow(latents):
        release.wait(10)
        return original(latents)

    inproc.service.pipe.decode = slow
    with cf.ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, inproc.client, subject_png, prompt="x", **FAST)
        time.sleep(0.2)  # the first one is running; --max-queue 0 leaves no room
        second = post(inproc.client, subject_png, prompt="y", **FAST)
        assert_one_error(second, 429, "busy")
        assert int(second.headers["retry-after"]) >= 1
        assert_one_error(first.result(), 504, "timeout")
    release.set()
    inproc.service.pipe.decode = original
    deadline = time.monotonic() + 10
    while inproc.service.worker.depth:  # the running step ends, then the slot frees
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert post(inproc.client, subject_png, prompt="x", **FAST).status_code == 200


# -- graceful shutdown, CLI errors ------------------------------------------------------------------
def test_sigterm_finishes_in_flight_requests_and_refuses_new_ones(engine_dir, subject_png):
    s = Server(engine_dir, "--max-queue", "8")
    slow = {"steps_final": "20", "masked_steps": "2,3"}  # ~3x the default work: still running at SIGTERM
    with cf.ThreadPoolExecutor(3) as pool:
        inflight = [pool.submit(post, httpx.Client(base_url=s.url, timeout=120), subject_png, prompt="a toy", seed=i, **slow)
                    for i in range(3)]
        time.sleep(0.5)
        s.terminate()
        time.sleep(0.3)
        with pytest.raises(httpx.TransportError):
            httpx.get(s.url + "/healthz", timeout=5)  # no longer accepting
        results = [f.result() for f in inflight]
    assert [r.status_code for r in results] == [200, 200, 200]
    assert all(png_array(base64.b64decode(r.json()["image_png"])).shape == (64, 64, 3) for r in results)
    assert s.stop() == 0


def test_serve_cli_errors(engine_dir, tmp_path, capsys):
    assert main(["serve", "--engine-dir", str(tmp_path / "missing")]) == 2
    assert main(["serve", "--engine-dir", str(engine_dir), "--max-queue", "-1"]) == 2
    assert main(["serve", "--engine-dir", str(engine_dir), "--replicas", "2"]) == 2
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", "--engine-dir", str(engine_dir), "--port", str(taken.getsockname()[1])]) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 4 and all(x.startswith("error: ") for x in lines), lines
    assert "cannot listen" in lines[-1]
