"""MONKEY's knobs (the defaults of docs/method.md) and the generation request, as frozen dataclasses.

Every user-facing field carries a `Knob` (dataclasses field metadata): its type, range and help.
The one list drives the range checks here, the `generate` command's options (`monkey_trt.cli`), the
HTTP fields and their OpenAPI schema (`monkey_trt.serve.schema`). A range the model sets (the IP
token count bounds `mask_token`) is checked where the model is known: `MonkeyConfig.check_model`.

Pure Python: imported by the reference, the exporter and the lean runtime alike.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import MISSING, asdict, dataclass, field, fields
from functools import lru_cache
from typing import Any, Callable, Protocol

from monkey_trt.core.errors import MonkeyError

DEFAULT_BASE = "SimianLuo/LCM_Dreamshaper_v7"
DEFAULT_IP_ADAPTER = "h94/IP-Adapter"
DEFAULT_IP_WEIGHT = "ip-adapter_sd15"  # .safetensors preferred, .bin accepted
DEFAULT_MASK_LAYER = "up_blocks.1.attentions.1.transformer_blocks.0.attn2"
MIN_SIDE, MAX_SIDE = 64, 2048
STEP_RULES = ("fixed", "quarters")  # MonkeyConfig.step_rule


@dataclass(frozen=True)
class ModelSource:
    """Where a model backend (the torch reference, the published baseline) and the exporter load their weights
    from: hub ids or local folders (diffusers layout; h94/IP-Adapter layout), plus the IP-Adapter weight name."""

    base: str = DEFAULT_BASE
    ip_adapter: str = DEFAULT_IP_ADAPTER
    ip_weight: str = DEFAULT_IP_WEIGHT  # file stem or name under `models/`


class ModelSizes(Protocol):
    """The model sizes a request depends on: enginedir.networks.ModelDims (core cannot import it)."""

    latent_channels: int
    vae_factor: int
    n_ip_tokens: int


@dataclass(frozen=True)
class Knob:
    """One user-facing field: `name` is the HTTP field and, dashed, the CLI option (`--mask-steps`).

    kind: int, float, str, or tuple (a list of `item`s, ints unless given; `1,2` on the command line and in forms).
    lo/hi: the valid range (both ends included unless `hi_open`), None = unchecked here;
    `shown` replaces the range's text in messages; `model_bound` names the ModelSizes count that
    sets the upper end instead of `hi` (checked by `MonkeyConfig.check_model`).
    """

    name: str
    kind: type
    default: Any  # dataclasses.MISSING: required
    help: str
    lo: int | float | None = None
    hi: int | float | None = None
    hi_open: bool = False
    shown: str | None = None
    model_bound: str | None = None
    item: type = int  # tuple knobs: the type of each entry (int or float)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def required(self) -> bool:
        return self.default is MISSING

    def range_text(self, hi: int | float | None = None) -> str:
        """`1..50` (ints), `[0, 1)` (floats), or `shown`."""
        hi = self.hi if hi is None else hi
        if self.shown is not None:
            return self.shown
        if self.kind is int:
            return f"{self.lo}..{hi}"
        return f"[{self.lo:g}, {hi:g}{')' if self.hi_open else ']'}"

    def coerce(self, value: Any) -> Any:
        """`value` as this knob's type, or MonkeyError: the Python API gets the CLI's strictness
        (`seed=1.5`, `height=64.0`, `mask_steps='12'` are errors, not silently converted)."""
        def integral(v: Any) -> bool:
            return isinstance(v, numbers.Integral) and not isinstance(v, bool)

        if self.kind is int:
            if not integral(value):
                raise MonkeyError(f"{self.name} must be an integer, got {value!r}")
            return int(value)
        if self.kind is float:
            if not (integral(value) or isinstance(value, numbers.Real)) or isinstance(value, bool) or not math.isfinite(value):
                raise MonkeyError(f"{self.name} must be a finite number, got {value!r}")
            return float(value)
        if self.kind is str:
            if not isinstance(value, str):
                raise MonkeyError(f"{self.name} must be a string, got {value!r}")
            return value
        if self.item is float:
            def number(v: Any) -> bool:
                return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)

            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not all(number(v) for v in value):
                raise MonkeyError(f"{self.name} must be a list of finite numbers, got {value!r}")
            return tuple(float(v) for v in value)
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not all(integral(v) for v in value):
            raise MonkeyError(f"{self.name} must be a list of integers, got {value!r}")
        return tuple(int(v) for v in value)

    def check(self, value: Any, hi: int | float | None = None) -> None:
        """MonkeyError `<name> must be in <range>, got <value>` when `value` is outside [lo, hi] (hi: `self.hi`)."""
        hi = self.hi if hi is None else hi
        if self.lo is None or hi is None:
            return
        ok = self.lo <= value < hi if self.hi_open else self.lo <= value <= hi
        if not ok:
            raise MonkeyError(f"{self.name} must be in {self.range_text(hi)}, got {value}")


def knob(default: Any = MISSING, *, help: str, kind: type | None = None, lo: int | float | None = None,
         hi: int | float | None = None, hi_open: bool = False, shown: str | None = None, model_bound: str | None = None,
         item: type = int):
    """A dataclass field with a Knob (kind: the default's type unless given; item: a tuple knob's entry type)."""
    spec = {"kind": kind or type(default), "help": help, "lo": lo, "hi": hi, "hi_open": hi_open, "shown": shown,
            "model_bound": model_bound, "item": item}
    return field(default=default, metadata={"knob": spec})


@lru_cache(maxsize=None)
def knobs(cls: type) -> dict[str, Knob]:
    """The Knobs of a dataclass (MonkeyConfig, Request), in field order."""
    return {f.name: Knob(f.name, default=f.default, **f.metadata["knob"]) for f in fields(cls) if "knob" in f.metadata}


def check_threads(threads: int, flag: str = "--threads") -> int:
    """CPU threads for torch / each ORT session: 0 (the library default) or a positive count."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise MonkeyError(f"{flag} must be >= 0 (an integer; 0 = library default), got {threads!r}")
    import os

    most = 4 * (os.cpu_count() or 1)  # the machine's cores x 4: beyond that, threads only contend
    if threads > most:
        raise MonkeyError(f"{flag} must be at most {most} (4 x the {os.cpu_count() or 1} CPU cores), got {threads}")
    return threads


@dataclass(frozen=True)
class MonkeyConfig:
    """Every knob of the method. Steps are 0-based indices into each pass's LCM schedule."""

    steps_mask_pass: int = knob(4, lo=1, hi=50, help="LCM steps of pass 1 (the mask pass)")
    mask_steps: tuple[int, ...] = knob((1, 2), help="0-based steps of pass 1 whose maps are combined")
    mask_layer: str = knob(DEFAULT_MASK_LAYER, help="Cross-attention layer whose IP attention map gives the mask")
    mask_token: int = knob(1, lo=0, model_bound="n_ip_tokens", help="0-based IP token whose attention column is the subject map")
    threshold: float = knob(0.5, lo=0.0, hi=1.0, hi_open=True, help="Threshold on the min-max normalised map, in [0, 1)")
    scale_mask_pass: float = knob(1.0, lo=0.0, hi=4.0, help="IP-Adapter scale at every step of pass 1")
    steps_final: int = knob(8, lo=1, hi=50, help="LCM steps of pass 2 (the final pass)")
    masked_steps: tuple[int, ...] = knob((2, 3, 4, 5), help="0-based steps of pass 2 with IP on (masked)")
    scale_final: float = knob(1.0, lo=0.0, hi=4.0, help="IP-Adapter scale at the IP steps of pass 2")
    guidance_scale: float = knob(8.5, lo=1.0, hi=30.0, help="LCM embedded guidance (w = guidance_scale - 1)")
    adapter_steps: tuple[int, ...] = knob((), help="0-based steps of pass 2 with IP on, unmasked (beside masked_steps)")
    final_step_scales: tuple[float, ...] = knob((), item=float, help="IP scale at each of the steps_final steps of pass 2 "
                                                "(replaces scale_final; 0 at steps in neither step list)")
    step_rule: str = knob("fixed", help="fixed: step lists as given; quarters: mask_steps/masked_steps left at their "
                                        "defaults become range(n)[n//4 : n - n//4] of their pass (the authors' code)")
    subject_scales: tuple[float, ...] = knob((), item=float, help="IP scale of each subject image, in order (empty: 1.0 "
                                             "each; else one per subject, each in [0, 4]); multiplies its planes")
    background_scale: float = knob(1.0, lo=0.0, hi=4.0, help="IP scale of the background image (with one), in [0, 4]")

    def __post_init__(self) -> None:
        for k in knobs(MonkeyConfig).values():  # types first (frozen: set through object.__setattr__)
            object.__setattr__(self, k.name, k.coerce(getattr(self, k.name)))
        if self.step_rule not in STEP_RULES:
            raise MonkeyError(f"step_rule must be one of {', '.join(STEP_RULES)}, got {self.step_rule!r}")
        if self.step_rule == "quarters":
            self._derive_quarter_steps()
        # Normalise list inputs (CLI, JSON) to sorted unique tuples.
        for name in ("mask_steps", "masked_steps", "adapter_steps"):
            object.__setattr__(self, name, tuple(sorted(set(getattr(self, name)))))
        self.validate()

    def _derive_quarter_steps(self) -> None:
        """step_rule=quarters: each step list left at its default becomes range(n)[n//4 : -(n//4)] of its pass."""
        defaults = knobs(MonkeyConfig)
        for name, steps_name in (("mask_steps", "steps_mask_pass"), ("masked_steps", "steps_final")):
            if tuple(getattr(self, name)) != defaults[name].default:
                continue  # given: kept as it is
            n = getattr(self, steps_name)
            defaults[steps_name].check(n)
            if n < 4:
                raise MonkeyError(f"step_rule quarters derives {name} from {steps_name} >= 4 (range(n)[n//4 : -(n//4)] is "
                                  f"empty below 4), got {steps_name}={n}: give {name}")
            object.__setattr__(self, name, tuple(range(n // 4, n - n // 4)))

    def validate(self) -> None:
        """The model-independent rules: the Knob ranges (step counts first: the step lists are checked
        against them), then the rules between fields."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise MonkeyError(msg)

        ranged = [k for k in knobs(MonkeyConfig).values() if k.model_bound is None]
        for k in ranged:
            if k.kind is int:
                k.check(getattr(self, k.name))
        need(len(self.mask_steps) > 0, "mask_steps must name at least one step")
        need(
            all(0 <= s < self.steps_mask_pass for s in self.mask_steps),
            f"mask_steps {list(self.mask_steps)} must lie in 0..{self.steps_mask_pass - 1} (steps_mask_pass={self.steps_mask_pass})",
        )
        for name in ("masked_steps", "adapter_steps"):
            steps = getattr(self, name)
            need(all(0 <= s < self.steps_final for s in steps),
                 f"{name} {list(steps)} must lie in 0..{self.steps_final - 1} (steps_final={self.steps_final})")
        both = sorted(set(self.masked_steps) & set(self.adapter_steps))
        need(not both, f"steps {both} are in both masked_steps and adapter_steps: a step's IP-Adapter is masked or unmasked, not both")
        self._validate_step_scales(need)
        rng = knobs(MonkeyConfig)["scale_final"]  # a subject's scale: the range of every IP scale
        for i, w in enumerate(self.subject_scales):
            need(rng.lo <= w <= rng.hi, f"subject_scales[{i}] must be in {rng.range_text()}, got {w:g}")
        for k in ranged:
            if k.kind is not int:
                k.check(getattr(self, k.name))
        need(self.mask_layer.endswith("attn2"), f"mask_layer must be a cross-attention (attn2) layer, got {self.mask_layer!r}")

    def _validate_step_scales(self, need: Callable[[bool, str], None]) -> None:
        """final_step_scales: one scale per pass-2 step, each in scale_final's range, 0 where the IP-Adapter is off."""
        scales = self.final_step_scales
        if not scales:
            return
        need(len(scales) == self.steps_final,
             f"final_step_scales has {len(scales)} entries; steps_final is {self.steps_final}: give one scale per step")
        need(self.scale_final == 1.0, "give scale_final or final_step_scales, not both (final_step_scales sets every step)")
        rng = knobs(MonkeyConfig)["scale_final"]
        for i, s in enumerate(scales):
            need(rng.lo <= s <= rng.hi, f"final_step_scales[{i}] must be in {rng.range_text()}, got {s:g}")
        on = set(self.masked_steps) | set(self.adapter_steps)
        off = [i for i, s in enumerate(scales) if s != 0.0 and i not in on]
        need(not off, f"final_step_scales gives steps {off} a scale, but they are in neither masked_steps nor adapter_steps")

    def check_model(self, dims: ModelSizes) -> None:
        """The ranges the model sets (`mask_token` in 0..n_ip_tokens-1), where the model is known:
        the pipelines' prepare(), or earlier from an engine directory's manifest."""
        for k in knobs(MonkeyConfig).values():
            if k.model_bound is not None:
                k.check(getattr(self, k.name), hi=getattr(dims, k.model_bound) - 1)

    @property
    def mask_pass_steps_needed(self) -> int:
        """Pass 1 may stop after its last mask step: later steps cannot change the mask."""
        return max(self.mask_steps) + 1

    @property
    def noise_steps(self) -> int:
        """Steps of the longer pass: a noise plan holds its latents and noise_steps - 1 step noises."""
        return max(self.steps_mask_pass, self.steps_final)

    def final_scales(self) -> list[float]:
        """IP-Adapter scale per step of pass 2: at masked and adapter steps `final_step_scales[i]` (given) or
        `scale_final`; 0 elsewhere."""
        on = set(self.masked_steps) | set(self.adapter_steps)
        per_step = self.final_step_scales or (self.scale_final,) * self.steps_final
        return [per_step[i] if i in on else 0.0 for i in range(self.steps_final)]

    def final_mask_use(self) -> list[str]:
        """Per step of pass 2: `masked` (IP on, times the mask), `open` (IP on, no mask) or `off` (scale 0:
        the mask cannot matter, `text + 0 * ip = text`)."""
        return ["off" if s == 0.0 else "masked" if i in self.masked_steps else "open" for i, s in enumerate(self.final_scales())]

    def subject_weights(self, subjects: int) -> tuple[float, ...]:
        """The IP scale of each of `subjects` subject images: `subject_scales`, or 1.0 each when it is empty;
        MonkeyError when it names another number of subjects (the count is known only with the images)."""
        if not self.subject_scales:
            return (1.0,) * subjects
        if len(self.subject_scales) != subjects:
            raise MonkeyError(f"subject_scales has {len(self.subject_scales)} entries for {subjects} subject image(s): "
                              "give one scale per subject, in order")
        return self.subject_scales

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in ("mask_steps", "masked_steps", "adapter_steps", "final_step_scales", "subject_scales"):
            d[name] = list(getattr(self, name))
        return d


def check_side(name: str, side: int, flag: str | None = None) -> int:
    """An image side (`height`, `width`): a multiple of 8 in MIN_SIDE..MAX_SIDE, else MonkeyError naming
    `flag` (the CLI option; default: the field's name). 0 and negative values are errors, never 'the default'."""
    what = flag or name
    if isinstance(side, bool) or not isinstance(side, numbers.Integral):
        raise MonkeyError(f"{what} must be an integer, got {side!r}")
    if side % 8 != 0:
        raise MonkeyError(f"{what} must be a multiple of 8, got {side}")
    if not MIN_SIDE <= side <= MAX_SIDE:
        raise MonkeyError(f"{what} must be in {MIN_SIDE}..{MAX_SIDE}, got {side}")
    return int(side)


@dataclass(frozen=True)
class Request:
    """One generation: what to draw, from which subject, at which size, with which noise."""

    prompt: str = knob(kind=str, help="Text prompt; it owns the background")
    height: int = knob(512, lo=MIN_SIDE, hi=MAX_SIDE, help="Image height, multiple of 8")
    width: int = knob(512, lo=MIN_SIDE, hi=MAX_SIDE, help="Image width, multiple of 8")
    seed: int = knob(0, lo=0, hi=2**63 - 1, shown="0..2**63-1", help="Seed (diffusers LCM semantics: torch CPU generator)")
    config: MonkeyConfig = field(default_factory=MonkeyConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise MonkeyError(f"prompt must be a string, got {type(self.prompt).__name__}")
        if not self.prompt.strip():
            raise MonkeyError("prompt is empty: MONKEY needs a text prompt for the background")
        try:
            self.prompt.encode("utf-8")
        except UnicodeEncodeError:  # undecodable bytes from the command line arrive as lone surrogates
            raise MonkeyError("prompt is not valid UTF-8 text") from None
        k = knobs(Request)
        for name in ("height", "width", "seed"):
            object.__setattr__(self, name, k[name].coerce(getattr(self, name)))
        if not isinstance(self.config, MonkeyConfig):
            raise MonkeyError(f"config must be a MonkeyConfig, got {type(self.config).__name__}")
        for name in ("height", "width"):
            check_side(name, getattr(self, name))
        k["seed"].check(self.seed)

    def latent_shape(self, dims: ModelSizes) -> tuple[int, int, int, int]:
        """[1, C, h, w] of this request's latents for a model of `dims` (latent channels, VAE factor)."""
        return (1, dims.latent_channels, self.height // dims.vae_factor, self.width // dims.vae_factor)
