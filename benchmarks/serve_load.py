"""Load test of `monkey-trt serve`: a real server on loopback, C clients x N requests each.

    python benchmarks/serve_load.py --engine-dir E --image subject.png [--clients 8 --requests 25 --size 64 --max-queue 4] [--stream]

Prints one JSON object: status counts (only 200 and 429 are expected), p50/p99 latency of the 200s,
throughput, and the server's RSS after the first 20 and after all requests. `--stream`: the same requests
to /v1/generate/stream, each read to its last event (latency: until the answer; a 200 whose last event is
`error` counts under that event's status). A client that gets
429 waits a little (at most Retry-After, capped at 0.1 s) and moves on to its next request.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures as cf
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine-dir", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=25, help="per client")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--max-queue", type=int, default=4)
    ap.add_argument("--backend", default="ort")
    ap.add_argument("--stream", action="store_true", help="POST /v1/generate/stream (server-sent events) instead")
    args = ap.parse_args()

    cmd = [sys.executable, "-m", "monkey_trt.cli", "serve", "--engine-dir", args.engine_dir, "--backend", args.backend,
           "--port", "0", "--max-queue", str(args.max_queue), "--log-level", "warning"]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        if not line.startswith("monkey-trt serve: http://"):
            raise SystemExit(f"server did not start: {line!r}")
        url = line.split()[2]
        with httpx.Client(base_url=url) as c:
            while c.get("/readyz").status_code != 200:
                time.sleep(0.1)
        subject = Path(args.image).read_bytes()
        lock = threading.Lock()
        done = 0
        rss_20 = None
        records: list[tuple[int, float]] = []

        def client(i: int) -> None:
            nonlocal done, rss_20
            with httpx.Client(base_url=url, timeout=300) as c:
                for j in range(args.requests):
                    files = {"image": ("subject.png", subject, "image/png"), "prompt": (None, f"a toy, client {i}"),
                             "seed": (None, str(j)), "height": (None, str(args.size)), "width": (None, str(args.size))}
                    t0 = time.perf_counter()
                    r = c.post("/v1/generate/stream" if args.stream else "/v1/generate", files=files)
                    latency = time.perf_counter() - t0
                    status = r.status_code
                    if status == 200 and args.stream:
                        name, _, data = r.text.rstrip("\n").rpartition("\n\n")[2].partition("\n")
                        answer = json.loads(data.removeprefix("data: "))
                        status = 200 if name == "event: result" else answer["status"]
                    elif status == 200:
                        answer = r.json()
                    if status == 200:
                        base64.b64decode(answer["image_png"])
                    with lock:
                        records.append((status, latency))
                        done += 1
                        if done == 20:
                            rss_20 = rss_mib(server.pid)
                    if status == 429:
                        time.sleep(min(float(r.headers.get("retry-after", 1)), 0.1))

        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(client, range(args.clients)))
        wall = time.perf_counter() - t0
        rss_end = rss_mib(server.pid)
        ok = np.array([lat for s, lat in records if s == 200])
        statuses: dict[str, int] = {}
        for s, _ in records:
            statuses[str(s)] = statuses.get(str(s), 0) + 1
        report = {
            "clients": args.clients, "requests_per_client": args.requests, "size": args.size, "max_queue": args.max_queue,
            "backend": args.backend, "endpoint": "/v1/generate/stream" if args.stream else "/v1/generate", "statuses": statuses, "wall_s": round(wall, 2),
            "throughput_rps": round(len(ok) / wall, 2),
            "latency_200_s": {"p50": round(float(np.percentile(ok, 50)), 3), "p99": round(float(np.percentile(ok, 99)), 3),
                              "min": round(float(ok.min()), 3), "max": round(float(ok.max()), 3)} if len(ok) else None,
            "rss_mib": {"after_20": round(rss_20, 1) if rss_20 else None, "after_all": round(rss_end, 1)},
            "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(), "python": platform.python_version()},
        }
        print(json.dumps(report, indent=1))
        return 0 if set(statuses) <= {"200", "429"} else 1
    finally:
        server.terminate()
        server.wait(60)


if __name__ == "__main__":
    sys.exit(main())
