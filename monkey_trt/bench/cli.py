"""The `bench` command's plumbing: where models come from, loading each backend, the table and the files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from PIL import Image
from rich.console import Console
from rich.table import Table

from monkey_trt.bench.chart import PNG_TAG
from monkey_trt.bench.measure import (
    STAGE_GROUPS,
    BackendResult,
    BenchSettings,
    bench_backend,
    compare_to_first,
    memory_lines,
    report,
    stage_groups,
)
from monkey_trt.core.config import (
    DEFAULT_BASE,
    DEFAULT_IP_ADAPTER,
    DEFAULT_IP_WEIGHT,
    Request,
)
from monkey_trt.core.errors import MonkeyError
from monkey_trt.runtime.backend import backend_row, engine_dir_backends


def check_output_path(path: Path | None, flag: str, kind: str) -> None:
    """Before any work: the folder exists and is writable; an existing file there must be an earlier bench output."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise MonkeyError(f"{flag} {path} is a folder; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise MonkeyError(f"{flag} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MonkeyError(f"{flag} {path}: folder {parent} is not writable")
    if path.exists() and not _is_our_output(path, kind):
        raise MonkeyError(f"{flag} {path} exists and was not written by monkey-trt bench; choose another name")


def _is_our_output(path: Path, kind: str) -> bool:
    try:
        if kind == "json":
            return json.loads(path.read_text()).get("schema") == "monkey-trt-bench"
        with Image.open(path) as im:
            return im.format == "PNG" and im.info.get("Software") == PNG_TAG
    except Exception:
        return False


def _resolve_source(preset, engine_dir, names, base, ip_adapter, images, height, width, workdir, console, background=None) -> dict:
    """-> {base, ip_adapter, ip_weight, engine_dir, subject, subjects, background_image, height, width, preset, max_subjects,
    background_slot}: `subject` the first subject's path (None: a grey square), `subjects` every one's."""
    from monkey_trt.enginedir.networks import MAX_SUBJECTS_DEFAULT

    images = [str(p) for p in images or ()]
    src = {"preset": preset, "engine_dir": None, "base": base, "ip_adapter": ip_adapter, "ip_weight": DEFAULT_IP_WEIGHT,
           "subject": images[0] if images else None, "subjects": images or None,
           "background_image": None if background is None else str(background),
           "max_subjects": MAX_SUBJECTS_DEFAULT, "background_slot": True}
    needs_engine = any(backend_row(n).needs_engine_dir for n in names)
    if preset is not None:
        from monkey_trt.embedded.workdir import ensure_preset
        from monkey_trt.embedded.presets import PRESETS

        if preset not in PRESETS:
            raise MonkeyError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        default = 128 if preset == "tiny" else 256
        height, width = (default if height is None else height), (default if width is None else width)
        with console.status(f"preparing the {preset} preset") as status:
            model_dir, edir = ensure_preset(preset, Path(workdir), height, width, engine=needs_engine, status=status.update)
        src.update(base=src["base"] or str(model_dir / "base"), ip_adapter=src["ip_adapter"] or str(model_dir / "ip-adapter"),
                   engine_dir=str(edir) if needs_engine else None, subject=src["subject"] or str(model_dir / "subject.png"),
                   subjects=src["subjects"] or [str(model_dir / "subject.png")])
        if needs_engine:
            from monkey_trt.enginedir.load import read_manifest

            m = read_manifest(edir)
            src.update(max_subjects=m.max_subjects, background_slot=m.background_slot)
    elif engine_dir is not None:
        from monkey_trt.enginedir.load import load_manifest

        m = load_manifest(Path(engine_dir), verify="size")
        height = m.profile.height.opt if height is None else height
        width = m.profile.width.opt if width is None else width
        src.update(engine_dir=str(engine_dir), base=src["base"] or m.source.get("base") or DEFAULT_BASE,
                   ip_adapter=src["ip_adapter"] or m.source.get("ip_adapter") or DEFAULT_IP_ADAPTER,
                   ip_weight=m.source.get("ip_weight", DEFAULT_IP_WEIGHT))
        if needs_engine:
            src.update(max_subjects=m.max_subjects, background_slot=m.background_slot)
    else:
        if needs_engine:
            raise MonkeyError(f"--backends {engine_dir_backends('bench')} need --engine-dir or --preset")
        height, width = (512 if height is None else height), (512 if width is None else width)
        src.update(base=src["base"] or DEFAULT_BASE, ip_adapter=src["ip_adapter"] or DEFAULT_IP_ADAPTER)
    src.update(height=height, width=width, workdir=str(workdir))
    return src


def _loader(name: str, src: dict, s: BenchSettings) -> Callable[[], object]:
    spec = s.spec(name)

    def load():
        from monkey_trt.commands.backends import ModelSource, open_backend

        return open_backend(spec, src["engine_dir"], ModelSource(src["base"], src["ip_adapter"], src["ip_weight"]), face="bench")

    return load


def _cold(name: str, src: dict, s: BenchSettings, request: Request) -> Callable[[], dict]:
    def cold() -> dict:
        from monkey_trt.bench.coldstart import cold_start
        from monkey_trt.commands.backends import ModelSource

        models = ModelSource(src["base"], src["ip_adapter"], src["ip_weight"])
        return cold_start(s.spec(name), src["engine_dir"], models, request, src["subjects"], background=src["background_image"])

    return cold


def run_bench(preset, engine_dir, names, base, ip_adapter, images, height, width, workdir, json_out, plot,
              console: Console, settings: Callable[[int, int], BenchSettings],
              warn: Callable[[str], None] = lambda msg: None, background: Path | None = None) -> list[BackendResult]:
    """`images`: the subject image paths (none: the preset's subject, else a grey square); `background`: a background image."""
    from monkey_trt.bench.machine_load import LoadWatch
    from monkey_trt.commands.progress import status
    from monkey_trt.runtime.images import check_subject_count, load_subject, load_subjects

    images = list(images or ())
    settings(64, 64)  # validate every setting (backends, runs, dtype, precision, threads) before any work
    src = _resolve_source(preset, engine_dir, names, base, ip_adapter, images, height, width, workdir, console, background)
    s = settings(src["height"], src["width"])
    check_subject_count(s.subjects, s.background, src["max_subjects"], src["background_slot"])  # before any backend loads
    if preset is not None and src["engine_dir"] is not None:
        from monkey_trt.embedded.workdir import ensure_precision

        ensure_precision(Path(src["engine_dir"]), s.engine_precision, console)
    request = Request(prompt=s.prompt, height=s.height, width=s.width, seed=s.seed)
    if src["subjects"] and (len(src["subjects"]) > 1 or background is not None):
        subjects, bg = load_subjects(src["subjects"], background)
        subject = subjects if len(subjects) > 1 else subjects[0]
    else:
        subject = load_subject(Path(src["subject"])) if src["subject"] else Image.new("RGB", (256, 256), (128, 128, 128))
        bg = None if background is None else load_subjects([], background)[1]
    results, outputs = [], []
    watch = LoadWatch.start()
    with status(console, "bench") as update:  # off a terminal: one line per step (a minute is never silent)
        for name in s.backends:
            r, out = bench_backend(name, _loader(name, src, s), request, subject, s,
                                   status=lambda msg, name=name: update(f"bench: {msg.replace(name, label(name, s), 1)}"),
                                   fresh=_cold(name, src, s, request), background=bg)
            results.append(r)
            outputs.append(out)
    watch.stop()
    compare_to_first(results, outputs)
    table_console = Console(width=TABLE_WIDTH)  # not the pipe's 80 columns: backend names stay whole in logs
    for t in results_tables(results, s):
        table_console.print(t)
    for line in memory_lines(results):  # trt: TensorRT's own memory numbers
        print(line, flush=True)
    doc = report(s, results, src)
    doc["machine"]["load"] = watch.to_json()
    busy = watch.busy_warning()
    if busy:
        warn(busy)
    if json_out is not None:
        from monkey_trt.core.atomic import write_json_atomic

        write_json_atomic(json_out, doc)
    if plot is not None:
        from monkey_trt.bench.chart import write_chart

        write_chart(plot, results, f"MONKEY {s.width}x{s.height}, p50 per stage ({doc['machine']['gpu'] or doc['machine']['cpu']})",
                    labels=[label(r.backend, s) for r in results])
    return results


def label(backend: str, s: BenchSettings) -> str:
    """A backend as the tables and the chart name it: with the precision it ran (`ort fp16`, `torch fp32`)."""
    return f"{backend} {s.spec(backend).precision}"


TABLE_WIDTH = 100  # the tables fit a 100-column terminal (and a log)


def results_tables(results: list[BackendResult], s: BenchSettings) -> list[Table]:
    """Two tables of at most TABLE_WIDTH columns: end-to-end figures per backend, then p50 seconds per stage
    (the stages add up to the end-to-end p50: see `stage_groups`)."""
    from rich import box

    e2e = Table(title=f"MONKEY {s.width}x{s.height}, {s.runs} run(s): end to end", box=box.SIMPLE_HEAD, title_justify="left")
    for col in ("backend", "p50 s", "min/p90 s", "img/s", "vs pub", "2-pass", "open+1st", "RSS MiB", "mask ="):
        e2e.add_column(col, justify="left" if col == "backend" else "right")
    for r in results:
        e = r.end_to_end_s
        e2e.add_row(
            label(r.backend, s), f"{e.p50:.3f}", f"{e.min:.2f}/{e.p90:.2f}", f"{r.images_per_s:.2f}",
            "-" if r.ratio_to_published is None else f"{r.ratio_to_published:.2f}x", f"{r.two_pass_overhead:.2f}x",
            cold_text(r), f"{r.peak_rss_mib:.0f}",
            "-" if r.mask_equals_first is None else ("yes" if r.mask_equals_first else "NO"),
        )
    stages = Table(title="p50 seconds per stage (they add up to p50)", box=box.SIMPLE_HEAD, title_justify="left")
    short = {"text encoder": "text", "image encoder": "image", "LCM scheduler": "sched", "VAE decode": "VAE", "between stages": "between"}
    stages.add_column("backend")
    for g in STAGE_GROUPS:
        stages.add_column(short.get(g, g), justify="right")
    for r in results:
        g = stage_groups(r)
        stages.add_row(label(r.backend, s), *(f"{g[k]:.4f}" if k in ("mask", "LCM scheduler") else f"{g[k]:.3f}" for k in STAGE_GROUPS))
    return [e2e, stages]


def cold_text(r: BackendResult) -> str:
    """`open+1st` (seconds): a fresh process's open + first image (`2.1+0.9`), else this process's load + first image."""
    if r.cold:
        return f"{r.cold['open_s']:.1f}+{r.cold['first_image_s']:.1f}"
    return f"{r.load_s:.1f}+{r.cold_start_s - r.load_s:.1f}*"


def results_table(results: list[BackendResult], s: BenchSettings) -> Table:
    """Both tables of `results_tables` in one renderable (a grid of one column)."""
    grid = Table.grid()
    for t in results_tables(results, s):
        grid.add_row(t)
    return grid
