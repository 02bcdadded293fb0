"""The evaluation run: check everything cheap, then generate what is missing and score it in batches.

    plan    subjects x seeds x prompts x methods, for each precision (fp32 first: the others are
            compared with it); one noise plan per seed, so every method and precision of a
            (subject, prompt, seed) starts from the same latents and step noises. The authors'
            protocol (eval.protocols) gives each subject one prompt: its index modulo the prompt count
    resume  a case in rows.csv is done; a case whose image is on disk (ours, from an interrupted
            run) is only scored; everything else is generated
    models  the backend once per precision (only if something is left to generate there), the
            judges once per run (only if something is left to score)
    scoring every `judge_batch` images: CLIP and DINO embeddings in one batch each, subject and
            prompt embeddings once; then the rows are written (store.add_rows)
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from monkey_trt.core.config import MonkeyConfig, Request
from monkey_trt.core.errors import MonkeyError
from monkey_trt.eval.generation import EvalBackend, Generated, open_generator
from monkey_trt.eval.judges import Judges, JudgeSource, judge_device, resolve_judge
from monkey_trt.eval.options import MONKEY, Method, check_precisions
from monkey_trt.eval.metrics import cosines, mask_iou, psnr_u8
from monkey_trt.eval.prompts import DEFAULT_TEMPLATE, build_prompt, check_template, load_prompts
from monkey_trt.eval.protocols import get_protocol
from monkey_trt.eval.store import EvalStore, Key, Row, image_name
from monkey_trt.eval.subjects import Subject, discover_subjects
from monkey_trt.runtime.noise import NoisePlan

REFERENCE_PRECISION = "fp32"


@dataclass(frozen=True)
class EvalJob:
    subjects_dir: Path
    out: Path
    spec: EvalBackend
    height: int
    width: int
    methods: tuple[Method, ...]
    precisions: tuple[str, ...]  # fp32 first
    seeds: tuple[int, ...] = (0,)
    prompts: str = "paper"
    clip: str = "openai/clip-vit-base-patch32"
    dino: str = "facebook/dino-vits16"
    judge_device: str = "auto"
    judge_batch: int = 32
    config: MonkeyConfig = field(default_factory=MonkeyConfig)
    protocol: str = "paper"  # eval.protocols: paper (every prompt per subject) | authors (one, cycled)
    prompt_template: str = DEFAULT_TEMPLATE  # eval.prompts: how the subject word and the prompt line join


@dataclass(frozen=True)
class Unit:
    """One image: a case (subject, prompt, seed) x method x precision."""

    subject: Subject
    template: str  # the prompt file's line (or the paper's location)
    prompt: str  # the exact text
    seed: int
    method: Method
    precision: str

    @property
    def key(self) -> Key:
        return (self.subject.id, self.prompt, self.seed, self.method.name, self.precision)

    def ref_key(self) -> Key:
        return (self.subject.id, self.prompt, self.seed, self.method.name, REFERENCE_PRECISION)


@dataclass
class Plan:
    job: EvalJob
    subjects: list[Subject]
    templates: tuple[str, ...]
    clip: JudgeSource
    dino: JudgeSource
    settings: dict  # what every row depends on (the store refuses a folder made with others)
    precision_digests: dict[str, str]
    warnings: list[str] = field(default_factory=list)

    def subject_templates(self, index: int) -> tuple[str, ...]:
        """The prompt lines of subject number `index`: all of them, or (authors) the one its index picks."""
        if get_protocol(self.job.protocol).cycle_prompts:
            return (self.templates[index % len(self.templates)],)
        return self.templates

    def prompt(self, subject: Subject, template: str) -> str:
        return build_prompt(subject.word, template, self.job.prompt_template)

    def units(self, precision: str | None = None) -> list[Unit]:
        out = []
        for p in self.job.precisions if precision is None else (precision,):
            for k, s in enumerate(self.subjects):
                for seed in self.job.seeds:
                    for t in self.subject_templates(k):
                        out += [Unit(s, t, self.prompt(s, t), seed, m, p) for m in self.job.methods]
        return out


@dataclass
class EvalResult:
    out: Path
    rows: list[Row]  # this plan's rows, in plan order
    generated: int = 0
    rescored: int = 0  # images an interrupted run had written: scored, not generated again
    reused: int = 0  # rows already in rows.csv
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    summary: list = field(default_factory=list)  # report.SummaryRow per method x precision


def _graph_files(m, network: str, precision: str) -> dict:
    """sha256 per file of the graphs `precision` may run for `network`: an 8-bit UNet's graphs of every base the
    directory has (the CPU and the GPU graph; one base: exactly the digests recorded before bases existed)."""
    from monkey_trt.enginedir.manifest import QUANTIZED_PRECISIONS

    bases = m.bases(network, precision) if precision in QUANTIZED_PRECISIONS else ()
    keys = [m.run_precision(network, precision, b) for b in bases] or [m.run_precision(network, precision)]
    return {f: d for k in keys for f, d in m.networks[network].files(k)[1].items()}


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _model_settings(job: EvalJob, warnings: list[str]) -> tuple[dict, dict[str, str]]:
    """(the models part of the settings, a digest per precision) — and the backend/precision checks."""
    spec = job.spec
    if not spec.spec.row.needs_engine_dir:  # a model backend (torch): its precisions are its dtypes
        check_precisions(job.precisions, spec.backend)
        norm = lambda s: str(Path(s).resolve()) if Path(s).expanduser().is_dir() else s  # noqa: E731
        models = {"base": norm(spec.base), "ip_adapter": norm(spec.ip_adapter), "ip_weight": spec.ip_weight}
        return models, {p: f"torch-{p}" for p in job.precisions}
    if spec.engine_dir is None:
        raise MonkeyError(f"--backend {spec.backend} needs --engine-dir (make one with `monkey-trt export`)")
    from monkey_trt.enginedir.load import load_manifest

    m = load_manifest(Path(spec.engine_dir), verify="size")
    check_precisions(job.precisions, spec.backend, m.precisions, spec.engine_dir)
    why = m.profile.check(1, job.height, job.width)
    if why:
        raise MonkeyError(f"engine directory {spec.engine_dir}: {why}")
    if m.mask_layer != job.config.mask_layer:
        raise MonkeyError(f"engine directory {spec.engine_dir} exports the map of {m.mask_layer}, not {job.config.mask_layer}")
    digests = {p: _digest({n: _graph_files(m, n, p) for n in sorted(m.networks)}) for p in job.precisions}
    return {"engine": m.source}, digests


def prepare(job: EvalJob, warn: Callable[[str], None] = lambda msg: None) -> Plan:
    """Every check that needs no model loaded: a bad input is one line before any work."""
    if not 1 <= job.judge_batch <= 1024:
        raise MonkeyError(f"--judge-batch must be in 1..1024, got {job.judge_batch}")
    Request("x", job.height, job.width, 0, job.config)  # size checks
    get_protocol(job.protocol)
    check_template(job.prompt_template)
    templates = load_prompts(job.prompts)
    warnings: list[str] = []
    subjects = discover_subjects(job.subjects_dir, warn=lambda m: (warnings.append(m), warn(m)), exclude=job.out)
    models, precision_digests = _model_settings(job, warnings)
    clip, dino = resolve_judge(job.clip, "clip"), resolve_judge(job.dino, "dino")
    judge_device(job.judge_device)
    settings = {"protocol": job.protocol, "backend": job.spec.backend, "models": models, "height": job.height, "width": job.width,
                "config": job.config.to_dict(), "judges": {"clip": clip.digest, "dino": dino.digest}}
    return Plan(job, subjects, templates, clip, dino, settings, precision_digests, warnings)


@dataclass
class _Pending:
    unit: Unit
    pixels: np.ndarray  # [H, W, 3] uint8
    mask: np.ndarray | None
    coverage: float | None
    seconds: float | None


class Scorer:
    """Collects finished images; scores and writes them `batch` at a time."""

    def __init__(self, store: EvalStore, plan: Plan, load_judges: Callable[[], Judges]):
        self.store, self.plan, self._load = store, plan, load_judges
        self.batch = plan.job.judge_batch
        self.judges: Judges | None = None
        self.pending: list[_Pending] = []
        self.text: dict[str, np.ndarray] = {}  # prompt -> CLIP text embedding
        self.subject: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # id -> (CLIP, DINO) embeddings

    def add(self, p: _Pending) -> None:
        self.pending.append(p)
        if len(self.pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        if self.judges is None:
            self.judges = self._load()
        j, pend = self.judges, self.pending
        new_subjects = list({p.unit.subject.id: p.unit.subject for p in pend if p.unit.subject.id not in self.subject}.values())
        if new_subjects:
            imgs = [s.image for s in new_subjects]
            for s, c, d in zip(new_subjects, j.clip.image_embeds(imgs), j.dino.image_embeds(imgs)):
                self.subject[s.id] = (c, d)
        new_prompts = list(dict.fromkeys(p.unit.prompt for p in pend if p.unit.prompt not in self.text))
        if new_prompts:
            self.text.update(zip(new_prompts, j.clip.text_embeds(new_prompts)))
        images = [Image.fromarray(p.pixels) for p in pend]
        clip_img, dino_img = j.clip.image_embeds(images), j.dino.image_embeds(images)
        clip_t = cosines(np.stack([self.text[p.unit.prompt] for p in pend]), clip_img)
        clip_i = cosines(np.stack([self.subject[p.unit.subject.id][0] for p in pend]), clip_img)
        dino = cosines(np.stack([self.subject[p.unit.subject.id][1] for p in pend]), dino_img)
        rows = [self._row(p, clip_t[i], clip_i[i], dino[i]) for i, p in enumerate(pend)]
        self.store.add_rows(rows)
        self.pending = []

    def _versus_reference(self, p: _Pending) -> tuple[float | None, float | None]:
        """(mask IoU, PSNR) against the fp32 image of the same case, when there is one."""
        u = p.unit
        if u.precision == REFERENCE_PRECISION or u.ref_key() not in self.store.rows:
            return None, None
        ref = self.store.read_png(image_name(u.ref_key()), u.ref_key(), "image")
        if ref is None:
            return None, None
        psnr = psnr_u8(ref[0], p.pixels)
        iou = None
        if p.mask is not None:
            ref_mask = self.store.read_png(image_name(u.ref_key(), mask=True), u.ref_key(), "mask")
            iou = None if ref_mask is None else mask_iou(ref_mask[0], p.mask)
        return iou, psnr

    def _row(self, p: _Pending, clip_t: float, clip_i: float, dino: float) -> Row:
        u = p.unit
        iou, psnr = self._versus_reference(p)
        return Row(subject=u.subject.id, word=u.subject.word, prompt=u.prompt, seed=u.seed, method=u.method.name,
                   precision=u.precision, image=image_name(u.key), mask=image_name(u.key, mask=True) if p.mask is not None else "",
                   clip_t=clip_t, clip_i=clip_i, dino=dino, mask_iou_vs_fp32=iou, psnr_vs_fp32=psnr,
                   mask_coverage=p.coverage, seconds=p.seconds)


class Progress:
    """What run_eval reports; the CLI draws it (eval.progress), tests may ignore it."""

    def start(self, total: int, rescore: int) -> None: ...
    def advance(self, unit: Unit, generated: Generated | None) -> None: ...
    def note(self, text: str) -> None: ...
    def close(self) -> None: ...


def run_eval(plan: Plan, progress: Progress | None = None, open_gen=open_generator,
             load_judges: Callable[[Plan], Judges] | None = None,
             on_image: Callable[[Unit], None] | None = None) -> EvalResult:
    """Generate and score everything of `plan` not yet in --out; return this plan's rows."""
    from monkey_trt.eval.report import write_reports

    job, t0 = plan.job, time.perf_counter()
    progress = progress or Progress()
    load_judges = load_judges or (lambda pl: Judges.load(pl.clip, pl.dino, judge_device(pl.job.judge_device)))
    subjects = {s.id: s.sha256 for s in plan.subjects}
    result = EvalResult(out=Path(job.out).absolute(), rows=[], warnings=list(plan.warnings))
    with EvalStore.open(job.out, plan.settings, plan.precision_digests, subjects) as store:
        todo, rescore = _classify(plan, store, result)
        scorer = Scorer(store, plan, lambda: load_judges(plan))
        noises: dict[int, NoisePlan] = {}
        progress.start(sum(1 for u in todo if u.key not in rescore), len(rescore))
        notes: set[str] = set()
        for precision in job.precisions:
            gen = None
            try:
                for u in (u for u in todo if u.precision == precision):
                    if u.key in rescore:
                        scorer.add(_read_back(store, u))
                        result.rescored += 1
                        continue
                    request = Request(u.prompt, job.height, job.width, u.seed, u.method.config(job.config))
                    if gen is None:
                        progress.note(f"loading the {job.spec.backend} backend ({precision})")
                        gen = open_gen(job.spec, precision, request)
                    if u.seed not in noises:
                        noises[u.seed] = NoisePlan.from_seed(u.seed, request.latent_shape(gen.dims), job.config.noise_steps)
                    g = gen(u.method, request, u.subject.image, noises[u.seed])
                    _write_images(store, u, g)
                    result.generated += 1
                    notes.update(g.warnings)
                    if on_image is not None:
                        on_image(u)
                    progress.advance(u, g)
                    scorer.add(_Pending(u, g.image, g.mask, g.coverage, g.seconds))
                scorer.flush()  # the next precision compares with these rows
            finally:
                if gen is not None:
                    gen.close()
        result.warnings += sorted(f"{n} (at least one image)" for n in notes)
        progress.close()
        result.rows = [store.rows[u.key] for u in plan.units()]
        result.files, result.summary = write_reports(store, plan, result.rows)
    result.seconds = time.perf_counter() - t0
    return result


def _classify(plan: Plan, store: EvalStore, result: EvalResult) -> tuple[list[Unit], set[Key]]:
    """(units not in rows.csv, the keys among them whose images are already on disk). Checks every
    image name first: a file at one of them that this run did not write stops the run before any work."""
    todo, rescore = [], set()
    for u in plan.units():
        if u.key in store.rows:
            result.reused += 1
            continue
        todo.append(u)
        mask_meta = store.probe(image_name(u.key, mask=True), u.key, "mask") if u.method.kind == MONKEY else {}
        meta = store.probe(image_name(u.key), u.key, "image")
        if meta is not None and mask_meta is not None:
            rescore.add(u.key)
    return todo, rescore


def _write_images(store: EvalStore, u: Unit, g: Generated) -> None:
    """Mask first, image last: an image on disk means its case is complete."""
    if g.mask is not None:
        store.write_png(image_name(u.key, mask=True), g.mask, u.key, "mask")
    store.write_png(image_name(u.key), g.image, u.key, "image", coverage=g.coverage, seconds=round(g.seconds, 4))


def _read_back(store: EvalStore, u: Unit) -> _Pending:
    pixels, meta = store.read_png(image_name(u.key), u.key, "image")
    mask = store.read_png(image_name(u.key, mask=True), u.key, "mask")[0] if u.method.kind == MONKEY else None
    return _Pending(u, pixels, mask, meta.get("coverage"), meta.get("seconds"))
