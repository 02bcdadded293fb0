"""Time to the first image of a new process, before and after issue 21's cold-start work, each start a fresh process.

    python benchmarks/cold_start.py --engine-dir E [--precision int8] [--repeats 3] [--threads 2] [--json OUT]

Configurations, run in turns (A B C A B C ...) so machine load hits them alike, after one priming start each
(the user caches written, the page cache warm):
  before  --verify rehash, no ORT graph cache: every start hashes every file and optimises every graph (the old default)
  after   the defaults: sha256 checks remembered, ORT's optimised graphs from the user cache
  warm    the defaults + MonkeyPipeline.warm_up() after open (what a service pays before its first request)
Per start: imports, open, (warm-up), first image, total (spawn to the end of the first image), and a second
image in the same process (first - second = what the first generation pays more). Medians per configuration.
The user cache is $MONKEY_TRT_CACHE (set it to a folder of your own to measure from scratch).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
from dataclasses import replace
from pathlib import Path

from monkey_trt.bench.coldstart import cold_start
from monkey_trt.core.config import Request
from monkey_trt.enginedir.load import read_manifest
from monkey_trt.runtime.backend import BackendSpec

KEYS = ("imports_s", "open_s", "warm_up_s", "first_image_s", "total_s", "second_image_s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine-dir", required=True, type=Path)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--subject", default=None)
    ap.add_argument("--configs", default="before,after,warm")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    m = read_manifest(a.engine_dir)
    request = Request("a dog on the beach", m.profile.height.opt, m.profile.width.opt, 0)
    base = BackendSpec("ort", precision=a.precision, threads=a.threads, providers=("cpu",))
    configs = {"before": (replace(base, verify="rehash", ort_cache=False), False),
               "after": (base, False), "warm": (base, True)}
    names = [c for c in a.configs.split(",") if c]
    load = lambda: os.getloadavg()[0]  # noqa: E731
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("Model name")), platform.processor())
    runs: dict[str, list[dict]] = {n: [] for n in names}
    load_before = load()
    for n in names:  # priming: caches written, page cache warm
        spec, warm = configs[n]
        cold_start(spec, str(a.engine_dir), None, request, a.subject, warm_up=warm)
    for i in range(a.repeats):
        for n in names:
            spec, warm = configs[n]
            r = cold_start(spec, str(a.engine_dir), None, request, a.subject, warm_up=warm, again=True)
            runs[n].append(r)
            print(f"{i + 1}/{a.repeats} {n:6s} " + "  ".join(f"{k[:-2]} {r[k]:.2f}" for k in KEYS if k in r), flush=True)
    medians = {n: {k: statistics.median(r[k] for r in rs) for k in KEYS if k in rs[0]} for n, rs in runs.items()}
    doc = {"cpu": model, "load_average": [load_before, load()], "engine_dir": str(a.engine_dir), "precision": a.precision,
           "size": [request.height, request.width], "threads": a.threads, "repeats": a.repeats,
           "medians": medians, "runs": runs}
    print(f"{model}; load average {load_before:.1f} -> {load():.1f}; {request.height}x{request.width} {a.precision}, "
          f"median of {a.repeats} fresh processes")
    for n, med in medians.items():
        print(f"  {n:6s} " + "  ".join(f"{k[:-2]} {v:.2f} s" for k, v in med.items()))
    if a.json:
        a.json.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
