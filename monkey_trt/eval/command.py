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
from monkey_trt.eval.prompts import check_template
from monkey_trt.eval.protocols import Protocol, get_protocol, runs_on_gpu
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
    methods: str | None = None  # None: the protocol's
    engine_dir: Path | None = None
    precisions: str | None = None  # comma list, each compared with fp32; None: the protocol's (fp32; authors: fp16 on a GPU)
    base: str | None = None
    ip_adapter: str | None = None
    ip_weight: str = DEFAULT_IP_WEIGHT
    clip: str = DEFAULT_CLIP
    dino: str = DEFAULT_DINO
    seeds: str | None = None  # None: the protocol's (paper 0, authors 123)
    height: int | None = None
    width: int | None = None
    judge_device: str = "auto"
    judge_batch: int = 32
    protocol: str = "paper"  # eval.protocols: paper | authors
    prompt_template: str | None = None  # None: the protocol's ({a_word} {prompt} | {word} {prompt})


def build_job(o: EvalOptions) -> EvalJob:
    from monkey_trt.commands.generate import resolve_defaults

    proto = get_protocol(o.protocol)
    template = check_template(proto.template if o.prompt_template is None else o.prompt_template)
    methods = parse_methods(proto.methods if o.methods is None else o.methods)
    seeds = parse_seeds(proto.seeds if o.seeds is None else o.seeds)
    row = backend_row(o.spec.backend, "eval")
    height, width = (o.height or proto.side, o.width or proto.side) if proto.side else (o.height, o.width)
    d = resolve_defaults(o.engine_dir, o.spec.backend, height, width, o.base, o.ip_adapter)
    precisions = parse_precisions(o.precisions if o.precisions is not None else default_precision(proto, o.spec))
    spec = EvalBackend(o.spec, o.engine_dir if row.needs_engine_dir else None, ModelSource(d.base, d.ip_adapter, o.ip_weight))
    return EvalJob(subjects_dir=o.subjects, out=o.out, spec=spec, height=d.height, width=d.width, methods=methods,
                   precisions=precisions, seeds=seeds, prompts=o.prompts, clip=o.clip, dino=o.dino,
                   judge_device=o.judge_device, judge_batch=o.judge_batch, protocol=proto.name, prompt_template=template)


def default_precision(proto: Protocol, backend) -> str:
    """fp32; the authors' protocol: fp16 where a GPU runs the backend (they ran the whole pipeline in fp16)."""
    return "fp16" if proto.fp16_on_gpu and runs_on_gpu(backend) else "fp32"


def protocol_notes(o: EvalOptions, job: EvalJob) -> list[str]:
    """What a run of the authors' protocol does differently from the authors' own run, said before any work."""
    proto = get_protocol(o.protocol)
    notes = []
    if proto.fp16_on_gpu and o.precisions is None and job.precisions == ("fp32",):
        notes.append("the authors ran fp16 on a GPU; this backend runs on the CPU, so the images are fp32 (--precision fp16 to force)")
    return notes


def run_command(o: EvalOptions, console: Console, warn: Callable[[str], None]) -> EvalResult:
    """Check, run, print the summary table; a Ctrl-C says how to continue."""
    from monkey_trt.eval.progress import EtaProgress
    from monkey_trt.eval.report import TABLE_WIDTH, summary_tables

    job = build_job(o)
    for note in protocol_notes(o, job):
        warn(note)
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
    n_sub, n_prompt = len(plan.subjects), len(plan.subject_templates(0))
    title = (f"{job.protocol} protocol, {job.spec.backend} {job.width}x{job.height}: {n_sub} subject(s) x {n_prompt} prompt(s) x "
             f"{len(job.seeds)} seed(s); mean ±95% CI")
    table_console = Console(width=TABLE_WIDTH)  # not the pipe's 80 columns
    for table in summary_tables(result.summary, title):
        table_console.print(table)
    return result


def result_lines(result: EvalResult) -> list[str]:
    """The lines eval ends with (stdout)."""
    return [f"{len(result.rows)} rows: {result.generated} generated, {result.rescored} scored from images an interrupted run "
            f"left, {result.reused} already done; {result.seconds:.1f} s",
            f"wrote {result.out}/: rows.csv, {', '.join(result.files)}, images/"]
