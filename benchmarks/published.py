"""The published MONKEY code's way of running (diffusers LCM pipeline, two full passes, every IP layer's
attention weights kept) next to our backends, in one process: a thin wrapper over `monkey-trt bench`.

    python benchmarks/published.py --preset sd15 --height 256 --width 256 --backends published,ort --runs 1 --warmup 0
    python benchmarks/published.py --preset sd15 --height 512 --width 512 --device cuda --dtype fp16 --backends published,torch

Any `monkey-trt bench` option may be given; `--backends` defaults to published,torch,ort.
"""

from __future__ import annotations

import sys

from monkey_trt.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if not any(a == "--backends" or a.startswith("--backends=") for a in args):
        args += ["--backends", "published,torch,ort"]
    sys.exit(main(["bench", *args]))
