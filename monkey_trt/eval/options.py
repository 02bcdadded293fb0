"""`--methods`, `--precision` and `--seeds`: parsed and checked before any work.

Methods: `monkey` (both passes, the paper's defaults), `monkey-all-steps` (the authors' script's
variant: the same mask at every pass-2 step, IP scale 1.0 at every step) and `ipadapter@SCALE` (plain
IP-Adapter, `steps_final` steps at SCALE, no mask: the paper's baseline; `ipadapter` alone is scale 1.0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from monkey_trt.core.config import MonkeyConfig
from monkey_trt.core.errors import MonkeyError

MONKEY = "monkey"
IPADAPTER = "ipadapter"
# Names a precision can have; which ones run depends on the backend and the engine directory.
KNOWN_PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")
MAX_SEEDS = 1000


ALL_STEPS = "all-steps"  # the MONKEY variant `monkey-all-steps`


@dataclass(frozen=True)
class Method:
    kind: str  # monkey | ipadapter
    scale: float | None = None  # ipadapter: the IP-Adapter scale at every step
    variant: str = ""  # monkey: "" (the run's schedule) | all-steps

    @property
    def name(self) -> str:
        """The `method` column: monkey, monkey-all-steps, ipadapter@1.0, ipadapter@0.5 ..."""
        if self.kind == MONKEY:
            return f"{MONKEY}-{self.variant}" if self.variant else MONKEY
        return f"{IPADAPTER}@{float(self.scale)!r}"

    def config(self, base: MonkeyConfig) -> MonkeyConfig:
        """The knobs this method runs with: `base`, or for all-steps the mask at every pass-2 step, scale 1.0."""
        if self.variant != ALL_STEPS:
            return base
        return replace(base, masked_steps=tuple(range(base.steps_final)), adapter_steps=(), final_step_scales=(), scale_final=1.0)

    @property
    def file_tag(self) -> str:
        return self.name.replace("@", "-")


def parse_methods(text: str) -> tuple[Method, ...]:
    methods: list[Method] = []
    for item in (x.strip().lower() for x in text.split(",")):
        if not item:
            continue
        if item == MONKEY:
            m = Method(MONKEY)
        elif item == f"{MONKEY}-{ALL_STEPS}":
            m = Method(MONKEY, variant=ALL_STEPS)
        elif item == IPADAPTER or item.startswith(IPADAPTER + "@"):
            raw = item.partition("@")[2] or "1.0"
            try:
                scale = float(raw)
            except ValueError:
                raise MonkeyError(f"--methods: {item!r} needs a number after @, e.g. ipadapter@0.5") from None
            if not math.isfinite(scale) or not 0.0 <= scale <= 4.0:
                raise MonkeyError(f"--methods: the IP-Adapter scale of {item!r} must be in [0, 4]")
            m = Method(IPADAPTER, scale)
        else:
            raise MonkeyError(f"--methods: unknown method {item!r} (known: monkey, monkey-all-steps, ipadapter@SCALE)")
        if m not in methods:
            methods.append(m)
    if not methods:
        raise MonkeyError("--methods names no method (e.g. monkey,ipadapter@1.0)")
    return tuple(methods)


def parse_precisions(text: str) -> tuple[str, ...]:
    """Known names, unique, fp32 first (the other precisions are compared with it)."""
    items = list(dict.fromkeys(p.strip().lower() for p in text.split(",") if p.strip()))
    unknown = [p for p in items if p not in KNOWN_PRECISIONS]
    if not items or unknown:
        raise MonkeyError(f"--precision must be a comma list of {', '.join(KNOWN_PRECISIONS)}, got {text!r}")
    return tuple(sorted(items, key=lambda p: p != "fp32"))


def check_precisions(precisions: tuple[str, ...], backend: str, exported: tuple[str, ...] = (), engine_dir=None) -> None:
    """Refuse what the backend cannot run, naming the command that makes it possible."""
    from monkey_trt.runtime.backend import backend_row

    row = backend_row(backend)
    if not row.needs_engine_dir:  # a model backend: its precisions are its dtypes
        bad = [p for p in precisions if p not in row.precisions]
        if bad:
            raise MonkeyError(f"the {backend} backend runs {' and '.join(row.precisions)} only, not {', '.join(bad)}: export an "
                              f"engine directory (monkey-trt export --precision fp32,{bad[0]} --out DIR) and pass --engine-dir DIR")
        return
    if "bf16" in precisions and "bf16" not in row.precisions:  # not a graph: kernels only some backends have
        raise MonkeyError(f"--backend {backend} has no bf16 kernels: bf16 runs on --backend openvino (the fp32 graphs)")
    missing = [p for p in precisions if p not in exported and not (p == "bf16" and "fp32" in exported)]
    if missing:
        raise MonkeyError(f"engine directory {engine_dir} has no {', '.join(missing)} graphs (it has {', '.join(exported)}): "
                          f"monkey-trt export --precision {','.join(dict.fromkeys(('fp32', *missing)))} --out {engine_dir}")


def parse_seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(dict.fromkeys(int(x) for x in text.replace(" ", "").split(",") if x != ""))
    except ValueError:
        raise MonkeyError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or len(seeds) > MAX_SEEDS or any(not 0 <= s < 2**63 for s in seeds):
        raise MonkeyError(f"--seeds must name 1..{MAX_SEEDS} seeds in 0..2**63-1, got {text!r}")
    return seeds
