"""Peak resident memory of a command, step by step: runs it, reads its progress lines, samples its RSS.

    python benchmarks/export_memory.py [--json out.json] -- monkey-trt export --out E --precision fp32,fp16,int8 ...

Prints one row per progress line the command printed (off a terminal `monkey-trt export` prints one line per
step): the peak RSS (VmRSS sampled every 50 ms from /proc, the process and its children) while that step ran
and its seconds; then the whole run's peak (the kernel's VmHWM of the process, read just before it exits via
`/usr/bin/time`-like wait4 rusage: ru_maxrss). tracemalloc sees neither protobuf's nor ONNX Runtime's memory,
so RSS it is. Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path


def _rss_kib(pid: int) -> int:
    """VmRSS of `pid` and its descendants, KiB (0 once gone)."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
            for t in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (t / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def measure(cmd: list[str], interval: float = 0.05, live: bool = False) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    steps: list[dict] = [{"step": "(start)", "t0": 0.0, "peak_kib": 0}]
    lock = threading.Lock()
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            kib = _rss_kib(proc.pid)
            with lock:
                steps[-1]["peak_kib"] = max(steps[-1]["peak_kib"], kib)
            time.sleep(interval)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    tail: list[str] = []
    for line in proc.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-20:]
        with lock:
            now = time.monotonic() - t0
            last = steps[-1]
            if live:  # the step just ended, as it ends (a long run can be read while it goes)
                print(f"{last['peak_kib'] / 2**20:7.2f} GiB {now - last['t0']:8.1f} s  {last['step']}", flush=True)
            steps.append({"step": line[:110], "t0": now, "peak_kib": 0})
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    th.join()
    wall = time.monotonic() - t0
    for a, b in zip(steps, steps[1:] + [{"t0": wall}]):
        a["seconds"] = round(b["t0"] - a["t0"], 1)
    return {"cmd": cmd, "rc": proc.returncode, "wall_s": round(wall, 1), "peak_rss_kib": usage.ru_maxrss,
            "steps": [{k: v for k, v in s.items() if k != "t0"} for s in steps], "tail": tail}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the result here too")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        ap.error("give the command after --")
    r = measure(cmd, live=True)
    last = r["steps"][-1]
    print(f"{last['peak_kib'] / 2**20:7.2f} GiB {last['seconds']:8.1f} s  {last['step']}")
    print(f"peak {r['peak_rss_kib'] / 2**20:.2f} GiB (ru_maxrss), {r['wall_s']} s, exit {r['rc']}")
    if a.json:
        a.json.write_text(json.dumps(r, indent=1))
    return r["rc"]


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.exit(main())
