"""What several subjects cost: MONKEY with S = 1, 2, 4 subject images on one engine directory, in one process.

    python benchmarks/multi_subject.py --engine-dir E [--subjects 1,2,4] [--runs 5] [--size 256] [--threads 2]
                                       [--image a.png --image b.png ...] [--backend ort] [--json out.json]

One pipeline is opened once (its open time recorded); every S is warmed up once, then the timed runs alternate
between the S values (the order rotates each round), so a machine that slows down during the run slows every S
alike. Reported per S: end-to-end p50 (min/max), the UNet calls' p50 sum, the image encoder's p50, and the extra
time per added subject, (p50_S / p50_1 - 1) / (S - 1). The subjects are `--image` files in turn, or distinct
generated pictures (coloured shapes: only the cost is measured, not the picture). The machine's load is recorded
(the load averages before, and the cores other processes used while it ran: bench/machine_load.py); timings on a
busy machine do not compare. Prints a table and one JSON line (also written to --json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

from monkey_trt.bench.machine_load import LoadWatch
from monkey_trt.core.config import MonkeyConfig, Request
from monkey_trt.runtime.images import load_subjects

COLOURS = ((200, 60, 40), (40, 90, 200), (40, 160, 70), (220, 170, 30), (150, 60, 180), (30, 170, 170))


def drawn_subject(k: int, size: int = 256) -> Image.Image:
    """A distinct stand-in subject: shape and colour k on a light background."""
    img = Image.new("RGB", (size, size), (235, 235, 230))
    d = ImageDraw.Draw(img)
    c, box = COLOURS[k % len(COLOURS)], (size // 5, size // 5, 4 * size // 5, 4 * size // 5)
    (d.ellipse if k % 2 == 0 else d.rectangle)(box, fill=c)
    d.text((size // 2 - 4, size // 2 - 6), str(k + 1), fill=(255, 255, 255))
    return img


def subjects_for(images: list[Path], count: int) -> list[Image.Image]:
    """`count` subject images: the given files in turn, else drawn stand-ins."""
    if images:
        loaded, _ = load_subjects(images)
        return [loaded[k % len(loaded)] for k in range(count)]
    return [drawn_subject(k) for k in range(count)]


def measure(engine_dir: Path, counts: list[int], runs: int, size: int | None, threads: int, backend: str,
            images: list[Path], prompt: str, knobs: dict) -> dict:
    from monkey_trt.runtime.pipeline import MonkeyPipeline

    watch = LoadWatch.start()
    t0 = time.perf_counter()
    pipe = MonkeyPipeline.from_engine_dir(engine_dir, backend=backend, threads=threads)
    open_s = time.perf_counter() - t0
    try:
        p = pipe.manifest.profile
        h = w = size
        if size is None:
            h, w = p.height.opt, p.width.opt
        if max(counts) > pipe.max_subjects:
            raise SystemExit(f"error: this engine takes at most {pipe.max_subjects} subjects (manifest max_subjects); "
                             f"asked for {max(counts)}: re-export with --max-subjects")
        request = Request(prompt, h, w, 0, MonkeyConfig(**knobs))
        pool = subjects_for(images, max(counts))

        def one(n: int):
            t = time.perf_counter()
            out = pipe(request, pool[0] if n == 1 else pool[:n])
            return time.perf_counter() - t, out

        for n in counts:  # warm-up: first calls of each input shape (ORT allocations) are not timed
            one(n)
        seen: dict[int, list] = {n: [] for n in counts}
        for r in range(runs):
            order = counts[r % len(counts):] + counts[:r % len(counts)]
            for n in order:
                seen[n].append(one(n))
    finally:
        pipe.close()
    watch.stop()

    rows = []
    base = None
    for n in counts:
        totals = [t for t, _ in seen[n]]
        unet = [sum(c.seconds for c in o.unet_calls) for _, o in seen[n]]
        enc = [o.timings.get("encode_subject", 0.0) for _, o in seen[n]]
        p50 = statistics.median(totals)
        base = p50 if n == 1 else base
        rows.append({"subjects": n, "p50_s": p50, "min_s": min(totals), "max_s": max(totals),
                     "unet_p50_s": statistics.median(unet), "image_encoder_p50_s": statistics.median(enc),
                     "coverage": [m.coverage for m in seen[n][0][1].masks], "overlap": seen[n][0][1].overlap,
                     "extra_per_added_subject": None if base is None or n == 1 else (p50 / base - 1) / (n - 1)})
    return {"engine_dir": str(engine_dir), "backend": backend, "height": h, "width": w, "runs": runs, "threads": threads,
            "open_s": open_s, "knobs": knobs, "subjects_from": [str(p) for p in images] or "drawn", "results": rows,
            "load": watch.to_json(), "busy": watch.busy_warning()}


def table(doc: dict) -> str:
    lines = [f"MONKEY {doc['width']}x{doc['height']} on {doc['backend']}, {doc['runs']} alternating runs per S "
             f"(open {doc['open_s']:.2f} s; load average before {doc['load']['load_average_before']}, "
             f"other processes {doc['load']['others_cores']} cores)",
             f"{'S':>3} {'p50 s':>9} {'min/max s':>15} {'UNet p50 s':>11} {'img enc s':>10} {'per added subject':>18}"]
    for r in doc["results"]:
        extra = "-" if r["extra_per_added_subject"] is None else f"{100 * r['extra_per_added_subject']:+.1f} %"
        lines.append(f"{r['subjects']:>3} {r['p50_s']:>9.3f} {r['min_s']:>7.3f}/{r['max_s']:<7.3f} {r['unet_p50_s']:>11.3f} "
                     f"{r['image_encoder_p50_s']:>10.3f} {extra:>18}")
    if doc["busy"]:
        lines.append(f"warning: {doc['busy']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine-dir", type=Path, required=True)
    ap.add_argument("--subjects", default="1,2,4", help="comma list of S (each at most the engine's max_subjects); must hold 1")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per S, alternating")
    ap.add_argument("--size", type=int, default=None, help="image side (default: the engine's opt size)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--backend", default="ort", help="an engine-directory backend (ort, openvino, trt)")
    ap.add_argument("--image", type=Path, action="append", default=[], help="subject image(s), used in turn (default: drawn ones)")
    ap.add_argument("--prompt", default="a toy and a cup on the beach")
    ap.add_argument("--fast", action="store_true", help="2 + 3 UNet steps instead of the defaults (the smoke test)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    counts = sorted({int(x) for x in a.subjects.split(",") if x.strip()})
    if not counts or counts[0] != 1 or a.runs < 1:
        ap.error("--subjects must hold 1 (the baseline) and --runs must be >= 1")
    knobs = {"steps_mask_pass": 2, "mask_steps": (1,), "steps_final": 3, "masked_steps": (1, 2)} if a.fast else {}
    doc = measure(a.engine_dir, counts, a.runs, a.size, a.threads, a.backend, a.image, a.prompt, knobs)
    doc["knobs"] = {k: list(v) if isinstance(v, tuple) else v for k, v in knobs.items()}
    print(table(doc), flush=True)
    if a.json is not None:
        a.json.write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
