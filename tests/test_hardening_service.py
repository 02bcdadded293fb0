"""Issue 25, class 9: the service's accounting. A client that hangs up while its generation is queued is counted
as 499 and its job never runs. (/healthz while idle connections fill the cap: tests/test_serve_hostile.py.)"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def subject_png(tiny_model_dir) -> bytes:
    return (tiny_model_dir / "subject.png").read_bytes()


def test_client_that_hangs_up_while_queued_is_499_and_its_job_never_runs(engine_dir, subject_png):
    pytest.importorskip("fastapi")
    import socket
    import threading
    import time
    import uuid

    from monkey_trt.serve.app import create_app
    from monkey_trt.serve.service import MonkeyService, ServeConfig
    from tests.test_serve import FAST, ThreadServer, _count, post

    service = MonkeyService(ServeConfig(engine_dir, warmup=False, max_queue=2)).load()
    s = ThreadServer(create_app(service))
    original, release, decodes = service.pipe.decode, threading.Event(), []

    def slow(latents):
        decodes.append(1)
        release.wait(30)
        return original(latents)

    try:
        while s.client.get("/readyz").status_code != 200:
            time.sleep(0.05)
        before = _count(s.client.get("/metrics").text, "499")
        service.pipe.decode = slow
        t = threading.Thread(target=post, args=(s.client, subject_png), kwargs={"prompt": "first", **FAST})
        t.start()
        while not decodes:  # the first generation is running (in its decode)
            time.sleep(0.02)
        boundary = uuid.uuid4().hex
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in
                 {"prompt": "second", **FAST}.items()]
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="s.png"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + subject_png + f"\r\n--{boundary}--\r\n".encode())
        body = b"".join(parts)
        port = s.sock.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as c:  # queued behind the first, then gone
            c.sendall(f"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            deadline = time.monotonic() + 10
            while service.worker.depth < 2:  # admitted and queued
                assert time.monotonic() < deadline
                time.sleep(0.02)
        deadline = time.monotonic() + 10
        while _count(s.client.get("/metrics").text, "499") < before + 1:
            assert time.monotonic() < deadline, "the hang-up was not counted as 499"
            time.sleep(0.05)
        release.set()
        t.join(60)
        time.sleep(0.5)
        assert len(decodes) == 1  # the second generation never ran
        service.pipe.decode = original
        assert post(s.client, subject_png, prompt="x", **FAST).status_code == 200
    finally:
        release.set()
        service.pipe.decode = original
        s.stop()
