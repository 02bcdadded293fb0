"""`monkey-trt serve --ray` on a local CPU Ray instance: 2 replicas, spread, one killed mid-load.

One module, one Ray start (about 30 s on 2 cores): every check shares the deployment.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

FIELDS = {"prompt": "a toy on the beach", "seed": "5", "steps_mask_pass": "2", "mask_steps": "1", "steps_final": "3", "masked_steps": "1,2"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_url(engine_dir):
    from monkey_trt.serve.ray_app import RayOptions, build_deployment
    from monkey_trt.serve.service import ServeConfig

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_deployment(ServeConfig(engine_dir, max_queue=4), RayOptions(replicas=2, cpus_per_replica=0.5)),
                  name="monkey-trt", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _generate(client: httpx.Client, subject: bytes):
    """-> (status, replica, image PNG bytes or None); a transport failure is status 0."""
    files = {k: (None, v) for k, v in FIELDS.items()} | {"image": ("subject.png", subject, "image/png")}
    try:
        r = client.post("/v1/generate", files=files)
    except httpx.TransportError:
        return 0, None, None
    if r.status_code != 200:
        return r.status_code, r.headers.get("x-replica"), None
    body = r.json()
    assert body["replica"] == r.headers["x-replica"]
    return 200, body["replica"], base64.b64decode(body["image_png"])


def _replica_actors() -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("SERVE_REPLICA::")]


def test_two_replicas_share_the_load_and_survive_a_killed_one(ray_url, tiny_model_dir):
    subject = (tiny_model_dir / "subject.png").read_bytes()
    with httpx.Client(base_url=ray_url, timeout=60) as c:
        assert c.get("/readyz").json()["status"] == "ready"
        status, _, expected = _generate(c, subject)
        assert status == 200
        # several subjects through Serve's proxy: one `image` part each, in order, and a background (issue 22)
        from tests.test_serve import _second_png

        parts = [("image", ("toy.png", subject, "image/png")), ("image", ("robot.png", _second_png(subject), "image/png")),
                 ("background_image", ("bg.png", subject, "image/png")), *((k, (None, v)) for k, v in FIELDS.items())]
        r = c.post("/v1/generate", files=parts)
        assert r.status_code == 200, r.text
        body = r.json()
        assert [s["image"] for s in body["subjects"]] == ["toy.png", "robot.png"] and body["background"]["image"] == "bg.png"
        too_many = c.post("/v1/generate", files=[("image", ("s.png", subject, "image/png"))] * 5 + [("prompt", (None, "x"))])
        assert too_many.status_code == 422 and "at most 4 subject" in too_many.json()["error"]

    def worker(n: int, out: list):
        with httpx.Client(base_url=ray_url, timeout=60) as c:
            for _ in range(n):
                out.append((time.monotonic(), *_generate(c, subject)))

    # 1. spread: 3 clients x 4 requests reach both replicas, every answer the same image
    results: list = []
    with cf.ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda _: worker(4, results), range(3)))
    assert [s for _, s, _, _ in results] == [200] * 12
    assert len({rep for _, _, rep, _ in results}) == 2
    assert all(img == expected for _, _, _, img in results)

    # 2. kill one replica under load: the rest is served, nothing comes back half-done. Each client goes
    #    on until 4 of its requests sent after the kill were answered (bounded), whatever the machine's speed.
    killed = threading.Event()
    results = []

    def worker_through_kill(out: list):
        with httpx.Client(base_url=ray_url, timeout=60) as c:
            served_after = 0
            for _ in range(20):
                after = killed.is_set()
                r = (after, *_generate(c, subject))
                out.append(r)
                served_after += after and r[1] == 200
                if served_after >= 4:
                    return

    victim = _replica_actors()[0]
    with cf.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(worker_through_kill, results) for _ in range(3)]
        deadline = time.monotonic() + 60
        while len(results) < 3 and time.monotonic() < deadline:  # load is flowing
            time.sleep(0.05)
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        killed.set()
        for f in futures:
            f.result()
    ok = [r for r in results if r[1] == 200]
    failed = [r for r in results if r[1] != 200]
    assert all(img == expected for _, _, _, img in ok)  # every 200 is the complete, correct image
    assert len(failed) <= 3, failed  # at most the requests in flight on the killed replica
    assert all(status in (0, 500, 502, 503) for _, status, _, _ in failed), failed
    assert sum(1 for after, s, _, _ in ok if after) >= 12  # served on after the kill: 4 per client
    with httpx.Client(base_url=ray_url, timeout=60) as c:  # and still (Serve replaces the dead replica)
        assert _generate(c, subject)[0] == 200


def test_cluster_config_file_and_app_builder(tmp_path):
    """examples/ray-serve.yaml is a valid Serve config whose import path builds our deployment."""
    from pathlib import Path

    import yaml
    from ray.serve.schema import ServeDeploySchema

    from monkey_trt.core.errors import MonkeyError
    from monkey_trt.serve.ray_app import app_builder

    doc = yaml.safe_load((Path(__file__).parents[1] / "examples" / "ray-serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(doc) if hasattr(ServeDeploySchema, "model_validate") else ServeDeploySchema.parse_obj(doc)
    app = schema.applications[0]
    assert app.import_path == "monkey_trt.serve.ray_app:app_builder" and app.deployments[0].name == "monkey"
    assert app_builder({**app.args, "engine_dir": str(tmp_path)}) is not None  # builds lazily: no engine needed yet
    with pytest.raises(MonkeyError, match="max_queue|--max-queue"):
        app_builder({"engine_dir": str(tmp_path), "max_queue": -1})
    with pytest.raises(MonkeyError, match="engine_dir"):
        app_builder({"replicas": 2})
