"""MONKEY's two passes, written once for every backend (docs/method.md).

A backend provides only networks (the `Networks` protocol): encoders, the guidance embedding, a UNet
call that may take a batch, and the VAE decode. The LCM steps (numpy, `runtime.scheduler`), the
pass schedule, mask extraction and every exact speed-up live here, so each backend gets them all.

    pass 1: IP scale `scale_mask_pass` at every step; record the mask layer's map at `mask_steps`;
            stop after the last mask step (later steps cannot change the mask); that last call
            runs the map-only UNet where the engine has one and nobody reads its noise_pred
    mask:   runtime.mask.extract_mask (several subjects: extract_subject_masks, each from its own columns, overlaps
            to the highest score)
    pass 2: the same noise; IP on, masked, at `masked_steps`; IP on, unmasked, at `adapter_steps`; scale 0
            elsewhere (per-step scales: MonkeyConfig.final_scales); one UNet session per run of steps
            that share a mask (masked | unmasked; a scale-0 step joins the run it is in)

Exact pass batching (`batch_passes`): pass 2's steps before its first masked step do not depend on
the mask and both passes start from the same latents, so pass-1 step i and pass-2 step i (i below
both the first masked step and pass 1's stop) run as one batch-2 UNet call: per-sample timestep,
`ip_scale = scale_mask_pass` shared by the batch, and a per-sample mask: none (= ones) for pass 1;
for pass 2 zeros at a scale-0 step (`text + s * (ip * 0) = text`, exact) or none at an unmasked IP
step whose scale equals `scale_mask_pass`. Any other pass-2 step ends the pairing.

Several subjects and a background (docs/method.md): the IP tokens of the N images (S subjects, then the background)
are joined into [1, N*T, D]; every UNet call takes one plane [N, H, W] per image per sample: plane_n = w_n * mask_n
(the image's scale folded into its plane; the graph's resize is linear). Pass 1: subjects w_s, background 0; pass 2's
masked steps: w_s * M_s, background w_bg * (1 - union); unmasked IP steps and the baseline: w_n. One subject of
scale 1 without a background sends exactly the planes it always did (None = ones, the mask itself).

Map-only last call: pass 1's last step needs only its map (the prediction it would give is read only to decode the
pass-1 image, `decode_mask_pass`). Run alone, that call goes to the session's `map_only` (the UNet cut after the mask
layer: the same map bits, export/map_graph.py) where the backend offers one; in a pass batch, or when the pass-1 image
is asked for, it runs the full UNet. Each call's record says which graph ran (`UNetCallTiming.graph`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from PIL import Image

from monkey_trt.core.config import MonkeyConfig, Request, knobs
from monkey_trt.core.errors import MonkeyError, NonFiniteOutput
from monkey_trt.enginedir.networks import ModelDims
from monkey_trt.runtime.images import check_image_options, check_subject_count
from monkey_trt.runtime.mask import MaskResult, SubjectMasks, extract_subject_masks, union_mask
from monkey_trt.runtime.noise import NoisePlan
from monkey_trt.runtime.outputs import request_record
from monkey_trt.runtime.result import MonkeyOutput, UNetCallTiming
from monkey_trt.runtime.scheduler import LCMSchedule


class UNetSession(Protocol):
    """UNet calls sharing text, IP tokens, guidance and per-sample masks (a GPU backend uploads them once)."""

    def __call__(self, latents: np.ndarray, timesteps: np.ndarray, ip_scale: float, want_map: bool
                 ) -> tuple[np.ndarray, np.ndarray | None]:
        """latents [B,4,h,w] f32, timesteps [B] -> (noise_pred [B,4,h,w] f32, map [B,Q,n_tokens] f32 or None)."""


class Networks(Protocol):
    """What a backend provides. Text, IP tokens and guidance stay in the backend's own type ([1, ...])."""

    backend: str
    dims: ModelDims  # the model's sizes (latents, text and IP token counts)
    schedule: LCMSchedule  # the LCM constants of this model (numpy steps)
    max_unet_batch: int  # largest UNet batch the backend accepts (1: no pass batching)
    batch_passes_default: bool  # whether batching pays off here (measured: GPUs yes, 2-core CPU no)

    max_subjects: int  # subject images a request may have (engine directories exported before several: 1)
    # optional `max_ip_images` (int): IP images a call takes (subjects + the background); default max_subjects + 1

    def prepare(self, request: Request) -> None: ...  # validate the request for this backend
    def encode_prompt(self, prompt: str) -> tuple[Any, bool]: ...  # (text [1,77,D], truncated)
    def encode_subject(self, subject: Image.Image) -> Any: ...  # IP tokens [1,T,D] of one image
    def guidance(self, guidance_scale: float) -> Any: ...  # timestep_cond [1, time_cond_dim]
    def unet_session(self, text: Any, ip_tokens: Any, w_emb: Any, masks: Sequence[np.ndarray | None]) -> UNetSession:
        """One session per batch layout: ip_tokens [1, N*T, D] (image n's tokens in rows n*T..n*T+T-1); masks[b] is
        sample b's planes [N, H, W] float32 (one per IP image, its scale folded in), None = ones."""
    def decode(self, latents: np.ndarray) -> np.ndarray: ...  # [1,4,h,w] -> [H, W, 3] float32 in [0, 1]
    def noise_for(self, request: Request) -> NoisePlan: ...
    def sync(self) -> None: ...  # wait for queued device work (timings); no-op on CPU


def _unet_for(engine: Networks, role: str) -> None:
    """Which UNet graph runs the coming pass, for engines that hold more than one (runtime/unet_graphs.py)."""
    select = getattr(engine, "select_unet", None)
    if select is not None:
        select(role)


def finite(engine: Networks, stage: str, value: Any, detail: str = "") -> Any:
    """`value` (numpy, or a backend's own tensor with `isfinite`) unchanged, or NonFiniteOutput naming the stage."""
    check = getattr(value, "isfinite", None)  # torch tensors (the reference); numpy arrays have none
    ok = bool(check().all()) if callable(check) else bool(np.isfinite(value).all())
    if not ok:
        raise NonFiniteOutput(engine.backend, stage, detail)
    return value


RUN_OPTIONS = ("noise", "baseline_scale", "decode_mask_pass", "batch_passes", "progress", "steps", "background")


def check_run_options(options: dict) -> None:
    """A pipeline call's keyword options (run_monkey's), by name and type: MonkeyError, never a TypeError."""
    unknown = sorted(set(options) - set(RUN_OPTIONS))
    if unknown:
        raise MonkeyError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(RUN_OPTIONS)}")
    noise = options.get("noise")
    if noise is not None and not isinstance(noise, NoisePlan):
        raise MonkeyError(f"noise must be a monkey_trt NoisePlan (monkey_trt.runtime.noise.load_noise_file reads one), got {type(noise).__name__}")
    if not isinstance(options.get("decode_mask_pass", False), bool):
        raise MonkeyError(f"decode_mask_pass must be true or false, got {options['decode_mask_pass']!r}")
    if options.get("batch_passes") is not None and not isinstance(options["batch_passes"], bool):
        raise MonkeyError(f"batch_passes must be true, false or None, got {options['batch_passes']!r}")
    for name in ("progress", "steps"):
        if options.get(name) is not None and not callable(options[name]):
            raise MonkeyError(f"{name} must be a function or None, got {type(options[name]).__name__}")
    check_baseline_scale(options.get("baseline_scale"))
    background = options.get("background")
    if background is not None and not isinstance(background, Image.Image):
        raise MonkeyError(f"background must be a PIL image or None (monkey_trt.load_subject reads a file), got {type(background).__name__}")


def subject_list(subjects: Any) -> list[Image.Image]:
    """One PIL image or a sequence of them -> the list of subject images (MonkeyError for anything else or none)."""
    items = [subjects] if isinstance(subjects, Image.Image) else subjects
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise MonkeyError(f"subject must be a PIL image or a list of them (monkey_trt.load_subject reads a file), "
                          f"got {type(subjects).__name__}")
    if not items:
        raise MonkeyError("no subject image given: MONKEY needs at least one subject image")
    for k, im in enumerate(items, 1):
        what = "subject" if len(items) == 1 else f"subject {k}"
        if not isinstance(im, Image.Image):
            raise MonkeyError(f"{what} must be a PIL image (monkey_trt.load_subject reads a file), got {type(im).__name__}")
        if min(im.size) < 1:
            raise MonkeyError(f"{what} image is empty ({im.size[0]}x{im.size[1]})")
    return list(items)


def max_ip_images(engine: Any) -> int:
    """IP images one UNet call of `engine` takes: subjects + the background slot (1 on an engine directory exported
    before several subjects)."""
    given = getattr(engine, "max_ip_images", None)
    return int(given) if given is not None else int(getattr(engine, "max_subjects", 1)) + 1


def check_subjects(engine: Any, subjects: Sequence[Image.Image], background: Image.Image | None) -> None:
    """The subject count against the engine's limit, and whether it takes a background (one line each)."""
    most = int(getattr(engine, "max_subjects", 1))  # the faces' check (runtime.images), with this engine's limits
    check_subject_count(len(subjects), background is not None, most, len(subjects) + 1 <= max_ip_images(engine))
    if background is not None and min(background.size) < 1:
        raise MonkeyError(f"background image is empty ({background.size[0]}x{background.size[1]})")


def request_images(engine: Any, request: Request, subjects: Any, background: Image.Image | None
                   ) -> tuple[list[Image.Image], "Planes"]:
    """A request's subject images checked against the engine and its knobs (as the CLI and HTTP faces check them:
    scales per subject, no idle background_scale) -> (subjects, their planes)."""
    subjects = subject_list(subjects)
    check_subjects(engine, subjects, background)
    c = request.config
    check_image_options(c, len(subjects), background is not None)
    planes = Planes(c.subject_weights(len(subjects)), None if background is None else c.background_scale,
                    request.height, request.width)
    return subjects, planes


@dataclass(frozen=True)
class Planes:
    """The per-image planes of one request (S subjects, then the background): what each UNet call's `masks[b]` is.

    `None` where it equals ones (one subject of scale 1, no background: today's calls, bit for bit)."""

    weights: tuple[float, ...]  # subject scales w_s
    background: float | None  # the background's scale w_bg (None: no background image)
    height: int
    width: int

    @property
    def n(self) -> int:
        """IP images per call (N)."""
        return len(self.weights) + (self.background is not None)

    @property
    def trivial(self) -> bool:
        return self.weights == (1.0,) and self.background is None

    def _constant(self, values: Sequence[float]) -> np.ndarray:
        return np.stack([np.full((self.height, self.width), v, np.float32) for v in values])  # [N, H, W]

    def mask_pass(self) -> np.ndarray | None:
        """Pass 1: subjects at w_s, unmasked; the background takes no part (0)."""
        if self.trivial:
            return None
        return self._constant([*self.weights, *([0.0] if self.background is not None else [])])

    def open(self) -> np.ndarray | None:
        """An unmasked IP step (pass 2's adapter steps, the baseline): every image at its scale."""
        if self.trivial:
            return None
        return self._constant([*self.weights, *([self.background] if self.background is not None else [])])

    def zeros(self) -> np.ndarray:
        """A scale-0 pass-2 step in pass 1's batch: `text + s * (ip * 0) = text`, exact."""
        return np.zeros((self.n, self.height, self.width), np.float32)

    def masked(self, masks: SubjectMasks) -> np.ndarray:
        """Pass 2's masked steps: w_s * M_s; the background w_bg * (1 - union of the M_s)."""
        planes = [m.mask if w == 1.0 else np.float32(w) * m.mask for w, m in zip(self.weights, masks.masks)]
        if self.background is not None:
            planes.append(np.float32(self.background) * (1.0 - masks.union))
        return np.stack(planes).astype(np.float32, copy=False)  # [N, H, W]


def check_baseline_scale(scale: Any) -> float | None:
    """baseline_scale: None (no baseline) or a finite number in [0, 4] (scale_final's range), like the CLI and HTTP."""
    if scale is None:
        return None
    k = replace(knobs(MonkeyConfig)["scale_final"], name="baseline_scale")
    value = k.coerce(scale)
    k.check(value)
    return value


@dataclass
class _Pass:
    """One pass's trajectory: its schedule, per-step scales and masks, and where it is."""

    name: str  # "p1" | "p2" | "ip"
    timesteps: np.ndarray  # [steps] int64
    scales: list[float]
    last: int  # index of the last step to run
    latents: np.ndarray  # [1,4,h,w] float32: the input of step `step`
    map_steps: tuple[int, ...] = ()
    map_only_at: int | None = None  # a step whose noise_pred nobody reads (pass 1's last, without decode_mask_pass)
    step: int = 0
    denoised: np.ndarray | None = None
    maps: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.step > self.last


class _Clock:
    """Per-stage wall time; `sync` makes device work count against the stage that queued it."""

    def __init__(self, engine: Networks, progress: Callable[[str, int, int], None] | None, stages: list[str],
                 steps: Callable[[str, int, int], None] | None = None):
        self.engine, self.progress, self.stages, self.steps = engine, progress, stages, steps
        self.timings: dict[str, float] = {}
        self.calls: list[UNetCallTiming] = []

    def announce(self, stage: str) -> None:
        """Tell `progress` that `stage` starts (stages outside the plan are not announced)."""
        if self.progress is not None and stage in self.stages:
            self.progress(stage, self.stages.index(stage), len(self.stages))

    def add(self, stage: str, seconds: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds

    def __call__(self, stage: str, fn, *args, **kwargs):
        self.announce(stage)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.engine.sync()
        self.add(stage, time.perf_counter() - t0)
        return out

    def checked(self, stage: str, fn, *args, **kwargs):
        """Like calling the clock, and the stage's array output (or first item) must be finite."""
        out = self(stage, fn, *args, **kwargs)
        finite(self.engine, stage, out[0] if isinstance(out, tuple) else out)
        return out


def _pairable_p2(c: MonkeyConfig, use: str, scale: float) -> bool:
    """Whether a pass-2 step can ride in pass 1's batch exactly: mask-independent, and its scale is 0
    (a zeros mask) or the shared `scale_mask_pass` (no mask)."""
    return use == "off" or (use == "open" and scale == c.scale_mask_pass)


def pairable_steps(c: MonkeyConfig) -> int:
    """How many leading steps of the two passes can share one batch-2 UNet call (exactly)."""
    n = 0
    for use, scale in zip(c.final_mask_use(), c.final_scales()):
        if n >= c.mask_pass_steps_needed or not _pairable_p2(c, use, scale):
            break
        n += 1
    return n


def _paired_runs(uses: Sequence[str], paired: int) -> list[tuple[int, str]]:
    """The paired steps 0..paired-1 as runs of one pass-2 mask: [(first step past the run, off | open)]; never
    merged (in the batch an `off` step needs its zeros mask: the shared scale is pass 1's)."""
    runs: list[tuple[int, str]] = []
    for i in range(paired):
        if runs and runs[-1][1] == uses[i]:
            runs[-1] = (i + 1, uses[i])
        else:
            runs.append((i + 1, uses[i]))
    return runs


def _runs(uses: Sequence[str], start: int, stop: int) -> list[tuple[int, str]]:
    """Steps start..stop-1 as runs that share one mask: [(first step past the run, masked | open)]; a scale-0
    step (`off`) joins the run it is in (the mask cannot change it), leading ones the first run."""
    runs: list[tuple[int, str]] = []
    for i in range(start, stop):
        kind = uses[i] if uses[i] != "off" else (runs[-1][1] if runs else None)
        if kind is None:
            kind = next((u for u in uses[i:stop] if u != "off"), "masked")
        if runs and runs[-1][1] == kind:
            runs[-1] = (i + 1, kind)
        else:
            runs.append((i + 1, kind))
    return runs


@dataclass
class _Run:
    """What every pass of one request shares: the engine, its clock, the noise and the encoded conditioning."""

    engine: Networks
    clock: _Clock
    noise: NoisePlan
    text: Any
    ip_tokens: Any
    w_emb: Any

    def new_pass(self, name: str, steps: int, scales: Sequence[float], last: int | None = None,
                 map_steps: Sequence[int] = ()) -> _Pass:
        """A pass of `steps` LCM steps from the initial latents; it runs steps 0..last (default: all)."""
        return _Pass(name, self.engine.schedule.timesteps(steps), list(scales), steps - 1 if last is None else last,
                     self.noise.latents.astype(np.float32, copy=True), tuple(map_steps))

    def lockstep(self, passes: list[_Pass], masks: Sequence[np.ndarray | None], stage: str, until: int,
                 role: str) -> None:
        """Steps of `passes` in lockstep (one UNet call per step, batch = len(passes)) while step < until;
        masks[b] is pass b's planes [N, H, W] (None: ones, unmasked); `role` (mask | final | baseline) picks the UNet graph
        on engines that hold more than one (8-bit engines run pass 1 on the fp32 graph)."""
        self.clock.announce(stage)
        engine, clock, noise = self.engine, self.clock, self.noise
        _unet_for(engine, role)
        session = engine.unet_session(self.text, self.ip_tokens, self.w_emb, masks)
        first = passes[0].step
        n_calls = min(until, *(p.last + 1 for p in passes)) - first  # UNet calls of this stage
        while all(not p.done and p.step < until for p in passes):
            i = passes[0].step
            want_map = any(i in p.map_steps for p in passes)
            latents = np.concatenate([p.latents for p in passes]) if len(passes) > 1 else passes[0].latents
            timesteps = np.array([p.timesteps[p.step] for p in passes], np.float32)  # [B]
            scale = passes[0].scales[i]
            map_only = getattr(session, "map_only", None) if len(passes) == 1 and passes[0].map_only_at == i and want_map else None
            t0 = time.perf_counter()
            if map_only is not None:
                eps, maps = None, map_only(latents, timesteps, scale)  # [1,Q,n_tokens]: no noise_pred
            else:
                eps, maps = session(latents, timesteps, scale, want_map)
            engine.sync()
            if eps is not None:
                finite(engine, stage, eps, f" (UNet noise_pred, step {i})")
            if want_map:
                finite(engine, stage, maps, f" (attention map, step {i})")
            seconds = time.perf_counter() - t0
            clock.calls.append(UNetCallTiming("+".join(p.name for p in passes), i, len(passes), seconds,
                                              "unet" if map_only is None else "unet_map"))
            clock.add(stage, seconds)
            t0 = time.perf_counter()
            for b, p in enumerate(passes):
                if i in p.map_steps:
                    p.maps[i] = maps[b]  # [Q, n_tokens]
                if eps is None:  # the map-only call: the pass ends here, its latents unread
                    p.step, p.denoised = p.step + 1, None
                else:
                    _advance(engine, p, noise, eps[b : b + 1])
            clock.add("scheduler", time.perf_counter() - t0)
            if clock.steps is not None:
                clock.steps(stage, i + 1 - first, n_calls)

    def finish(self, p: _Pass, mask: np.ndarray | None, stage: str, role: str) -> _Pass:
        """Pass `p` alone (batch 1, `mask` or unmasked) from where it is to its last step."""
        self.lockstep([p], [mask], stage, until=p.last + 1, role=role)
        return p

    def plain_pass(self, name: str, steps: int, scales: Sequence[float], stage: str, role: str,
                   mask: np.ndarray | None = None, map_steps: Sequence[int] = (), last: int | None = None) -> _Pass:
        """One plain pass (no batching) from the initial latents, run to `last`."""
        return self.finish(self.new_pass(name, steps, scales, last, map_steps), mask, stage, role)


def _advance(engine: Networks, p: _Pass, noise: NoisePlan, eps: np.ndarray) -> None:
    """One LCM step of pass `p` with its noise_pred [1,4,h,w]."""
    steps = len(p.timesteps)
    step_noise = noise.step_noise[p.step] if p.step < steps - 1 else None
    p.latents, p.denoised = engine.schedule.step(eps, p.step, p.timesteps, p.latents, step_noise)
    p.step += 1


def _prepare(engine: Networks, request: Request, noise: NoisePlan | None) -> NoisePlan:
    """Validate `request` for this backend; the noise to run on (the backend's own for the seed by default)."""
    engine.prepare(request)
    return noise if noise is not None else engine.noise_for(request)


def join_ip_tokens(engine: Any, tokens: list) -> Any:
    """Each image's IP tokens [1, T, D] -> [1, N*T, D] (image n in rows n*T..n*T+T-1), in the backend's own type:
    numpy here, or the engine's `join_ip_tokens` (the torch reference's tensors); one image is passed as it is."""
    if len(tokens) == 1:
        return tokens[0]
    join = getattr(engine, "join_ip_tokens", None)
    if join is not None:
        return join(tokens)
    if all(isinstance(t, np.ndarray) for t in tokens):
        return np.concatenate(tokens, axis=1)
    import sys  # another array library's tensors (torch's): its own concatenation, never imported here

    lib = sys.modules.get(type(tokens[0]).__module__.split(".")[0])
    if lib is None or not callable(getattr(lib, "cat", None)):
        raise MonkeyError(f"{engine.backend}: cannot join IP tokens of type {type(tokens[0]).__name__}")
    return lib.cat(tokens, 1)


def _encode(engine: Networks, clock: _Clock, request: Request, images: Sequence[Image.Image], noise: NoisePlan
            ) -> tuple[_Run, bool]:
    """Prompt, the IP images (subjects, then the background) and guidance encoded once for every pass:
    (the run, prompt truncated)."""
    text, truncated = clock.checked("encode_prompt", engine.encode_prompt, request.prompt)

    def encode_all() -> list:  # each [1, T, D]; one stage for every image (progress announces it once)
        named = len(images) > 1
        return [finite(engine, "encode_subject", engine.encode_subject(im), f" (IP image {k})" if named else "")
                for k, im in enumerate(images, 1)]

    tokens = clock("encode_subject", encode_all)
    w_emb = finite(engine, "guidance", engine.guidance(request.config.guidance_scale))
    return _Run(engine, clock, noise, text, join_ip_tokens(engine, tokens), w_emb), truncated


def _mask_notes(masks: SubjectMasks, mask_steps: Sequence[int]) -> list[str]:
    """The warnings about constant maps (one subject: exactly today's lines; several: one per subject)."""
    notes = []
    for k, m in enumerate(masks.masks, 1):
        who = "" if len(masks.masks) == 1 else f"subject {k}: "
        if len(m.degenerate_steps) == len(mask_steps):
            notes.append(f"{who}attention map was constant at every mask step {list(m.degenerate_steps)}: full mask (plain IP-Adapter)")
        elif m.degenerate:
            notes.append(f"{who}attention map was constant at mask steps {list(m.degenerate_steps)}: those steps were skipped")
    return notes


def run_monkey(
    engine: Networks,
    request: Request,
    subjects: Image.Image | Sequence[Image.Image],
    noise: NoisePlan | None = None,
    baseline_scale: float | None = None,
    decode_mask_pass: bool = False,
    batch_passes: bool | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    steps: Callable[[str, int, int], None] | None = None,
    background: Image.Image | None = None,
) -> MonkeyOutput:
    """Both passes (+ the optional plain IP-Adapter baseline from the same noise).

    subjects: one subject image or a list of them (1..engine.max_subjects); background: one more IP image acting
    where no subject is (pass 2), at `background_scale`. baseline_scale: also run plain IP-Adapter (no mask) at this scale; decode_mask_pass: also decode
    pass 1's prediction at its last mask step; batch_passes: exact pass batching (None: the backend's
    measured default). `progress(stage, index, total)` is called before each stage (CLI progress bar);
    `steps(stage, done, total)` after each UNet call of a pass stage (the service's streamed progress).
    Neither changes what is computed.
    """
    check_run_options({"noise": noise, "decode_mask_pass": decode_mask_pass, "batch_passes": batch_passes,
                       "progress": progress, "steps": steps, "background": background})
    subjects, planes = request_images(engine, request, subjects, background)
    c = request.config
    explicit_noise = noise is not None
    baseline_scale = check_baseline_scale(baseline_scale)
    noise = _prepare(engine, request, noise)
    batch = engine.batch_passes_default if batch_passes is None else batch_passes
    paired = pairable_steps(c) if batch else 0
    if paired and c.scale_mask_pass == 0.0:
        paired = 0  # both passes are plain text steps: nothing masked to batch for (and scale 0 is cheaper)
    if paired and engine.max_unet_batch < 2:
        raise MonkeyError(f"{engine.backend}: this engine takes UNet batch 1 only; pass batching needs batch 2 "
                          "(re-export with --batch 2, or use --no-batch-passes)")
    stages = ["encode_prompt", "encode_subject"] + (["batched_passes"] if paired else [])
    stages += ["mask_pass", "mask", "final_pass", "decode"]
    stages += ["decode_mask_pass"] if decode_mask_pass else []
    stages += ["baseline_pass", "decode_baseline"] if baseline_scale is not None else []
    clock = _Clock(engine, progress, stages, steps)
    notes: list[str] = []

    run, truncated = _encode(engine, clock, request, [*subjects, *([background] if background is not None else [])], noise)
    if truncated:
        notes.append(f"prompt is longer than {engine.dims.text_len} tokens and was truncated")

    p1 = run.new_pass("p1", c.steps_mask_pass, [c.scale_mask_pass] * c.steps_mask_pass, c.mask_pass_steps_needed - 1, c.mask_steps)
    if not decode_mask_pass:  # nobody reads pass 1's last prediction: the map-only UNet may run that call
        p1.map_only_at = p1.last
    p2 = run.new_pass("p2", c.steps_final, c.final_scales())
    uses = c.final_mask_use()
    p1_planes, open_planes = planes.mask_pass(), planes.open()
    for until, kind in _paired_runs(uses, paired):  # pass 2 rides at pass 1's scale: zeros at its scale-0 steps
        run.lockstep([p1, p2], [p1_planes, open_planes if kind == "open" else planes.zeros()], "batched_passes",
                     until=until, role="mask")  # these calls compute pass 1

    run.finish(p1, p1_planes, "mask_pass", role="mask")
    try:
        found = clock("mask", extract_subject_masks, p1.maps, request.height, request.width, c.mask_token, c.threshold,
                      len(subjects), engine.dims.n_ip_tokens)
    except FloatingPointError as e:
        raise MonkeyError(f"{engine.backend}: {e}") from None
    mask = union_mask(found)
    notes += _mask_notes(found, c.mask_steps)
    masked_planes = planes.masked(found)
    background_mask = None if background is None else 1.0 - found.union  # [H, W]

    for until, kind in _runs(uses, p2.step, c.steps_final):
        run.lockstep([p2], [masked_planes if kind == "masked" else open_planes], "final_pass", until=until, role="final")
    image = clock.checked("decode", engine.decode, p2.denoised)
    mask_pass_image = clock.checked("decode_mask_pass", engine.decode, p1.denoised) if decode_mask_pass else None

    baseline = None
    if baseline_scale is not None:
        pb = run.plain_pass("ip", c.steps_final, [baseline_scale] * c.steps_final, "baseline_pass", role="baseline",
                            mask=open_planes)
        baseline = clock.checked("decode_baseline", engine.decode, pb.denoised)
    info = getattr(engine, "info", None)
    record = request_record(request, seed=None if explicit_noise else request.seed, baseline_scale=baseline_scale,
                            batched_steps=paired, models=info() if callable(info) else {})
    return MonkeyOutput(
        image=image, mask=mask, timings=clock.timings, backend=engine.backend, mask_pass_image=mask_pass_image,
        baseline_image=baseline, prompt_truncated=truncated, warnings=tuple(notes), unet_calls=tuple(clock.calls),
        batched_steps=paired, record=record, masks=found.masks, overlap=found.overlap, lost=found.lost,
        background_mask=background_mask, subjects=len(subjects), scales=planes.weights, background_scale=planes.background,
    )


def run_pass(engine: Networks, text: Any, ip_tokens: Any, w_emb: Any, noise: NoisePlan, steps: int, scales: list[float],
             mask: np.ndarray | None = None, map_steps: tuple[int, ...] = (), stop_after: int | None = None
             ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """One plain LCM pass (no batching): (last denoised latents [1,4,h,w], maps step -> [Q, n_tokens])."""
    run = _Run(engine, _Clock(engine, None, []), noise, text, ip_tokens, w_emb)
    p = run.plain_pass("p", steps, scales, "pass", "mask" if map_steps else "final", mask, map_steps, last=stop_after)
    return p.denoised, p.maps


def run_ip_adapter(engine: Networks, request: Request, subjects: Image.Image | Sequence[Image.Image], scale: float,
                   noise: NoisePlan | None = None, background: Image.Image | None = None) -> MonkeyOutput:
    """Plain IP-Adapter (`steps_final` steps at `scale`, no mask; every image, the background too, at its own scale)
    + decode: the denominator of the two-pass overhead."""
    check_run_options({"background": background})
    subjects, planes = request_images(engine, request, subjects, background)
    c = request.config
    noise = _prepare(engine, request, noise)
    clock = _Clock(engine, None, [])
    run, truncated = _encode(engine, clock, request, [*subjects, *([background] if background is not None else [])], noise)
    p = run.plain_pass("ip", c.steps_final, [scale] * c.steps_final, "baseline_pass", role="baseline", mask=planes.open())
    image = clock.checked("decode", engine.decode, p.denoised)
    full = MaskResult.full(request.height, request.width)
    return MonkeyOutput(image=image, mask=full, timings=clock.timings, backend=engine.backend, prompt_truncated=truncated,
                        unet_calls=tuple(clock.calls), masks=(full,) * len(subjects), subjects=len(subjects),
                        scales=planes.weights, background_scale=planes.background)
