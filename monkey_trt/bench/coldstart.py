"""A real cold start: one backend opened in a fresh Python process, its open and first image timed apart.

    cold = cold_start(spec, engine_dir, models, request, subject_path)
    # {"process": "fresh", "open_s": ..., "first_image_s": ..., "imports_s": ..., "total_s": ...}

The child (`python -m monkey_trt.bench.coldstart`, the spec and request as JSON on stdin) imports monkey-trt, opens
the backend (`open_s`: the engine directory verified, sessions created or loaded from the user's caches), makes one
image (`first_image_s`) and prints its figures as one JSON line. `total_s` is the parent's clock from the spawn to
the end of that first image (interpreter start and imports included: what a user waits for). Nothing of the
parent's process is warm; the page cache is whatever the machine has. A child that fails is one line naming it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from monkey_trt.core.errors import MonkeyError, first_line

CHILD_TIMEOUT_S = 1800  # an sd15-size published baseline opens in about a minute on 2 cores


def cold_start(spec, engine_dir: str | None, models, request, subject_path, warm_up: bool = False,
               again: bool = False, background: str | None = None) -> dict:
    """Open `spec` and make one image of `request` in a fresh process; returns its figures (see the module docstring).
    `subject_path`: a path, a list of them (several subjects) or None (a grey square); `background`: a background image.
    `warm_up`: the pipeline's warm-up after open (`warm_up_s`, counted in `total_s`); `again`: a second image
    (`second_image_s`, after `total_s`): what the first image paid more is the first-call work."""
    job = {"spec": spec.to_dict(), "engine_dir": engine_dir, "models": asdict(models) if models is not None else None,
           "request": {"prompt": request.prompt, "height": request.height, "width": request.width, "seed": request.seed},
           "subject": subject_path, "background": background, "spawned": time.time(), "warm_up": warm_up, "again": again}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[2]),
                                                                   os.environ.get("PYTHONPATH")) if p)}
    try:
        done = subprocess.run([sys.executable, "-m", "monkey_trt.bench.coldstart"], input=json.dumps(job), env=env,
                              capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise MonkeyError(f"{spec.backend}: the cold-start process took over {CHILD_TIMEOUT_S} s") from None
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        why = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise MonkeyError(f"{spec.backend}: the cold-start process failed: {first_line(why)}")
    return json.loads(lines[-1])


def _child() -> int:
    t_start = time.perf_counter()
    job = json.loads(sys.stdin.read())
    from PIL import Image

    from monkey_trt.commands.backends import ModelSource, open_backend
    from monkey_trt.core.config import Request
    from monkey_trt.runtime.backend import BackendSpec
    from monkey_trt.runtime.images import load_subject, load_subjects

    spec_fields = dict(job["spec"])
    spec = BackendSpec(**spec_fields)
    request = Request(**job["request"])
    paths = job["subject"] if isinstance(job["subject"], list) else [job["subject"]] if job["subject"] else []
    if len(paths) > 1 or job.get("background"):
        subjects, background = load_subjects(paths, job.get("background"))
        subject = subjects if len(subjects) > 1 else subjects[0] if subjects else Image.new("RGB", (256, 256), (128, 128, 128))
    else:
        subject = load_subject(Path(paths[0])) if paths else Image.new("RGB", (256, 256), (128, 128, 128))
        background = None
    models = ModelSource(**job["models"]) if job["models"] else None
    imports_s = time.perf_counter() - t_start
    t0 = time.perf_counter()
    pipe = open_backend(spec, job["engine_dir"], models, face="bench")
    open_s = time.perf_counter() - t0
    out = {"process": "fresh", "imports_s": imports_s, "open_s": open_s}
    if job.get("warm_up"):
        t = time.perf_counter()
        pipe.warm_up()
        out["warm_up_s"] = time.perf_counter() - t
    kwargs = {"batch_passes": spec.batch_passes} if "batch_passes" in spec.row.options else {}
    if background is not None:
        kwargs["background"] = background
    t1 = time.perf_counter()
    pipe(request, subject, **kwargs)
    out["first_image_s"] = time.perf_counter() - t1
    out["total_s"] = time.time() - job["spawned"]
    if job.get("again"):
        t = time.perf_counter()
        pipe(request, subject, **kwargs)
        out["second_image_s"] = time.perf_counter() - t
    getattr(pipe, "close", lambda: None)()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(_child())
    except MonkeyError as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        sys.exit(2)
