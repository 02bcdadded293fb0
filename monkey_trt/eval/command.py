"""`monkey-trt eval`'s plumbing: options -> an EvalJob (defaults from the engine directory like
`generate`), the run with progress, and what is printed at the end."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rich.console import Console

from monkey_trt.core.config import DEFAULT_IP_WEIGHT, ModelSource
from monkey_trt.eval.generation import EvalBackend
from monkey_trt.eval.judges import DEFAULT_CLIP, DEFAULT_DINO
from monkey_trt.eval.options import parse_methods, parse_precisions, parse_seeds
from monkey_trt.eval.protocol import EvalJob, EvalResult, prepare, run_eval
from monkey_trt.runtime.backend import BackendSpec, backend_row

@dataclass(frozen=True)
class EvalOptions:
    """The command line, as given (None: not given); how to run is the one BackendSpec (its precision is set per
    evaluated precision, `precisions`)."""

    subjects: Path
    out: Path
    spec: BackendSpec
    prompts: str = "paper"
    methods: str = "monkey,ipadapter@1.0"
    engine_dir: Path | None = None
    precisions: str = "fp32"  # comma list: each is evaluated and compared with fp32
    base: str | None = None
    ip_adapter: str | None = None
    ip_weight: str = DEFAULT_IP_WEIGHT
    clip: str = DEFAULT_CLIP
    dino: str = DEFAULT_DINO
    seeds: str = "0"
    height: int | None = None
    width: int | None = None
    judge_device: str = "auto"
    judge_batch: int = 32


def build_job(o: EvalOptions) -> EvalJob:
    from monkey_trt.commands.generate import resolve_defaults

    methods, precisions, seeds = parse_methods(o.methods), parse_precisions(o.precisions), parse_seeds(o.seeds)
    row = backend_row(o.spec.backend, "eval")
    d = resolve_defaults(o.engine_dir, o.spec.backend, o.height, o.width, o.base, o.ip_adapter)
    spec = EvalBackend(o.spec, o.engine_dir if row.needs_engine_dir else None, ModelSource(d.base, d.ip_adapter, o.ip_weight))
    return EvalJob(subjects_dir=o.subjects, out=o.out, spec=spec, height=d.height, width=d.width, methods=methods,
                   precisions=precisions, seeds=seeds, prompts=o.prompts, clip=o.clip, dino=o.dino,
                   judge_device=o.judge_device, judge_batch=o.judge_batch)


def run_command(o: EvalOptions, console: Console, warn: Callable[[str], None]) -> EvalResult:
    """Check, run, print the summary table; a Ctrl-C says how to continue."""
    from monkey_trt.eval.progress import EtaProgress
    from monkey_trt.eval.report import summary_table

    job = build_job(o)
    plan = prepare(job, warn=warn)
    progress = EtaProgress(console)
    try:
        result = run_eval(plan, progress)
    except KeyboardInterrupt:
        progress.close()
        sys.stderr.write(f"interrupted: everything finished so far is kept in {job.out}; run the same command to continue\n")
        raise
    finally:
        progress.close()
    for w in result.warnings[len(plan.warnings):]:
        warn(w)
    n_sub, n_prompt = len(plan.subjects), len(plan.templates)
    title = (f"{job.spec.backend} {job.width}x{job.height}: {n_sub} subject(s) x {n_prompt} prompt(s) x {len(job.seeds)} seed(s); "
             "mean ±95% CI")
    Console(width=max(Console().width, 180)).print(summary_table(result.summary, title))
    return result


def result_lines(result: EvalResult) -> list[str]:
    """The lines eval ends with (stdout)."""
    return [f"{len(result.rows)} rows: {result.generated} generated, {result.rescored} scored from images an interrupted run "
            f"left, {result.reused} already done; {result.seconds:.1f} s",
            f"wrote {result.out}/: rows.csv, {', '.join(result.files)}, images/"]
