"""`monkey-trt bench`: whole MONKEY generations per backend, in one process, every figure a user picks an engine by.

Per backend: load + first image (in this process), `warmup` untimed runs, `runs` timed runs (end-to-end
min/p50/p90, images/s, per-stage p50, every UNet call), the same number of plain 8-step IP-Adapter
runs on the same backend (two-pass overhead = MONKEY p50 / IP-Adapter p50), peak host RSS (VmHWM,
reset per backend where the kernel allows) and peak GPU memory (torch's allocator: torch and
published backends only), then `soak` more generations for memory drift, and last a real cold start:
open and first image timed apart in a fresh process (bench/coldstart.py), the user caches written by
then. Stage timings are wall time around each stage with a device synchronise (GPU) or plain perf
counters (CPU).

The JSON written by `--json` follows `schema.json` (shipped in this package). Speed is
measured here, never asserted in tests.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from PIL import Image

from monkey_trt.core.config import Request
from monkey_trt.core.errors import MonkeyError
from monkey_trt.runtime.backend import BACKEND_OPTIONS, CLI_OPTIONS, BackendSpec, backend_names, backend_row, is_default, specs_for

SCHEMA_PATH = Path(__file__).with_name("schema.json")
SCHEMA_VERSION = 1
REQUIRED_STAGES = ("encode_prompt", "encode_subject", "mask", "decode")  # + every UNet call in `unet_calls`


@dataclass(frozen=True)
class BenchSettings:
    """What bench measures: one BackendSpec per backend (in run order) and the request and run counts."""

    specs: tuple[BackendSpec, ...]
    height: int
    width: int
    runs: int = 3
    warmup: int = 1
    soak: int = 0
    prompt: str = "a dog on the beach"
    seed: int = 0
    workdir: str | None = None  # ort with an ORT graph cache: ORT's optimised graphs go to <workdir>/ort-optimized
    cold_process: bool = True  # also open each backend and make one image in a fresh process (bench/coldstart.py)
    subjects: int = 1  # subject images per generation (S; several: every backend but published)
    background: bool = False  # a background image beside them

    def __post_init__(self) -> None:
        if not 1 <= self.runs <= 1000 or not 0 <= self.warmup <= 100 or not 0 <= self.soak <= 100000:
            raise MonkeyError(f"need --runs in 1..1000, --warmup in 0..100, --soak in 0..100000, got {self.runs}, {self.warmup}, {self.soak}")
        object.__setattr__(self, "specs", tuple(self.specs))
        if not self.specs or not all(isinstance(sp, BackendSpec) for sp in self.specs):
            raise MonkeyError("bench needs one BackendSpec per backend")
        check_backend_list(self.backends)
        if isinstance(self.subjects, bool) or not isinstance(self.subjects, int) or self.subjects < 1:
            raise MonkeyError(f"bench needs at least one subject image, got {self.subjects!r}")
        if (self.subjects > 1 or self.background) and "published" in self.backends:
            raise MonkeyError("the published backend runs the authors' one-subject code: bench several subjects or a "
                              "background image on the other backends (--backends without published)")

    @classmethod
    def from_options(cls, backends: tuple[str, ...], height: int, width: int, options: Mapping[str, Any],
                     ort_cache: bool = True, **fields: Any) -> "BenchSettings":
        """One set of backend option values (named as in runtime.backend.BACKEND_OPTIONS) -> a spec per backend: each
        takes the options that apply to it; an option no listed backend takes is one line. `ort_cache`: ort keeps ORT's
        optimised graphs in <workdir>/ort-optimized (False: no cache at all)."""
        check_backend_list(backends)
        workdir = fields.get("workdir")
        cache = {}  # ort: <workdir>/ort-optimized; without a workdir the spec's default (the user cache where safe)
        for b in backends:
            if "ort_cache" in backend_row(b).options and (workdir or not ort_cache):
                cache[b] = {"ort_cache": Path(workdir) / "ort-optimized" if ort_cache else False}
        specs = specs_for(tuple(backends), {k: v for k, v in options.items() if not is_default(k, v)}, cache)
        return cls(tuple(specs[b] for b in backends), height, width, **fields)

    @property
    def backends(self) -> tuple[str, ...]:
        return tuple(sp.backend for sp in self.specs)

    def spec(self, backend: str) -> BackendSpec:
        return self.specs[self.backends.index(backend)]

    @property
    def engine_precision(self) -> str:
        """The precision the engine-directory backends run (what a --preset export must hold)."""
        return next((sp.precision for sp in self.specs if sp.row.needs_engine_dir), "fp32")

    def to_json(self) -> dict:
        """The report's settings: the run's own, each backend option as given (the value of the first backend it applies
        to), and every backend's whole spec."""
        d = {k: getattr(self, k) for k in ("height", "width", "runs", "warmup", "soak", "prompt", "seed", "workdir", "cold_process",
                                          "subjects", "background")}
        d["backends"] = list(self.backends)
        for name in CLI_OPTIONS:
            o = BACKEND_OPTIONS[name]
            field_name = "precision" if name == "dtype" else name
            got = [getattr(sp, field_name) for sp in self.specs if sp.backend in o.applies]
            value = got[0] if got else o.default
            d[name] = list(value) if name == "providers" else value
        d["providers"] = d["providers"] or []
        d["ort_cache"] = any(sp.ort_cache is not False for sp in self.specs if "ort_cache" in sp.row.options)
        d["specs"] = {sp.backend: sp.to_dict() for sp in self.specs}
        return d


def check_backend_list(backends: tuple[str, ...]) -> None:
    """`--backends`: bench's backends of the table, each once."""
    names = backend_names("bench")
    unknown = [b for b in backends if b not in names]
    if not backends or unknown:
        raise MonkeyError(f"--backends must be a comma list of {', '.join(names)}, got {','.join(backends) or '(none)'}")
    if len(set(backends)) != len(backends):
        raise MonkeyError("--backends names a backend twice")


@dataclass(frozen=True)
class Spread:
    min: float
    p50: float
    p90: float

    @classmethod
    def of(cls, xs: list[float]) -> "Spread":
        return cls(min(xs), statistics.median(xs), float(np.percentile(xs, 90)))


@dataclass
class BackendResult:
    backend: str
    info: dict
    cold_start_s: float  # load + first image
    load_s: float
    end_to_end_s: Spread
    images_per_s: float
    stages_s: dict[str, float]  # p50 per stage
    unet_calls: list[dict]  # [{label, passes, step, batch, graph, p50_s}]
    ip_adapter_s: Spread  # plain IP-Adapter, steps_final steps + decode, same backend
    two_pass_overhead: float  # MONKEY p50 / IP-Adapter p50
    peak_rss_mib: float
    peak_gpu_mib: float | None
    batched_steps: int
    mask_sha256: str
    ratio_to_published: float | None = None  # published p50 / this p50 (>1: faster)
    mask_equals_first: bool | None = None
    image_max_abs_diff_vs_first: float | None = None
    soak: dict | None = None
    trt_memory: dict | None = None  # trt: TensorRT's memory numbers (engine.trt.memory_report)
    cold: dict | None = None  # a fresh process's open_s, first_image_s, imports_s, total_s (bench/coldstart.py)


# -- memory ----------------------------------------------------------------------------------
def _proc_status_mib(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM (Linux: write 5 to /proc/self/clear_refs). False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """Peak resident set of this process (VmHWM; ru_maxrss elsewhere). Process-wide, not per backend."""
    v = _proc_status_mib("VmHWM")
    if v is None:
        import resource

        v = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return float(v)


def rss_mib() -> float:
    return float(_proc_status_mib("VmRSS") or 0.0)


def _torch_cuda():
    import sys

    torch = sys.modules.get("torch")
    return torch if torch is not None and torch.cuda.is_available() else None


def _gpu_mib(peak: bool) -> float | None:
    torch = _torch_cuda()
    if torch is None:
        return None
    return (torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated()) / 2**20


# -- one backend -----------------------------------------------------------------------------
def _plain_ip_adapter(pipe, request: Request, subject, background: Image.Image | None = None):
    """Plain IP-Adapter with every image of the request (the subjects, the background), unmasked."""
    several = isinstance(subject, (list, tuple)) or background is not None
    if hasattr(pipe, "ip_adapter") and not several:
        return pipe.ip_adapter(request, subject, request.config.scale_final)
    from monkey_trt.runtime.method import run_ip_adapter

    return run_ip_adapter(pipe, request, subject, request.config.scale_final, background=background)


def _call_labels(out) -> list[str]:
    return [f"unet {c.passes} s{c.step}" for c in out.unet_calls]


def bench_backend(name: str, load: Callable[[], object], request: Request, subject, s: BenchSettings,
                  status: Callable[[str], None] = lambda msg: None,
                  fresh: Callable[[], dict] | None = None, background: Image.Image | None = None) -> tuple[BackendResult, object]:
    """Everything measured for one backend. Returns (result, the first timed output). `subject`: one image or the
    list of them (several subjects), `background`: the background image or None. `fresh`: measures a fresh
    process's open and first image (bench/coldstart.py), run last, when this process has let go of the backend."""
    import hashlib

    reset_peak_rss()
    torch = _torch_cuda()
    if torch is not None:
        torch.cuda.reset_peak_memory_stats()
    spec = s.spec(name)
    kwargs = {"batch_passes": spec.batch_passes} if "batch_passes" in spec.row.options else {}
    if background is not None:
        kwargs["background"] = background
    status(f"{name}: loading + first image")
    t0 = time.perf_counter()
    pipe = load()
    load_s = time.perf_counter() - t0
    pipe(request, subject, **kwargs)
    cold = time.perf_counter() - t0
    for i in range(s.warmup):
        status(f"{name}: warm-up {i + 1}/{s.warmup}")
        pipe(request, subject, **kwargs)
    totals, outs = [], []
    for i in range(s.runs):
        status(f"{name}: run {i + 1}/{s.runs}")
        t = time.perf_counter()
        outs.append(pipe(request, subject, **kwargs))
        totals.append(time.perf_counter() - t)
    ip_totals = []
    for i in range(s.runs):
        status(f"{name}: plain IP-Adapter {i + 1}/{s.runs}")
        t = time.perf_counter()
        _plain_ip_adapter(pipe, request, subject, background)
        ip_totals.append(time.perf_counter() - t)
    stage_names = sorted({k for o in outs for k in o.timings})
    stages = {k: statistics.median(o.timings.get(k, 0.0) for o in outs) for k in stage_names}
    calls = []
    for j, c in enumerate(outs[0].unet_calls):
        calls.append({"label": c.label, "passes": c.passes, "step": c.step, "batch": c.batch, "graph": c.graph,
                      "p50_s": statistics.median(o.unet_calls[j].seconds for o in outs)})
    e2e, ip = Spread.of(totals), Spread.of(ip_totals)
    result = BackendResult(
        backend=name, info=pipe.info() if hasattr(pipe, "info") else {}, cold_start_s=cold, load_s=load_s,
        end_to_end_s=e2e, images_per_s=1.0 / e2e.p50, stages_s=stages, unet_calls=calls, ip_adapter_s=ip,
        two_pass_overhead=e2e.p50 / ip.p50, peak_rss_mib=peak_rss_mib(), peak_gpu_mib=_gpu_mib(peak=True),
        batched_steps=outs[0].batched_steps, mask_sha256=hashlib.sha256(outs[0].mask.mask.tobytes()).hexdigest(),
    )
    result.trt_memory = trt_memory(pipe)  # None unless the pipeline runs TensorRT plans
    if s.soak:
        result.soak = _soak(name, pipe, request, subject, s.soak, kwargs, status)
    close = getattr(pipe, "close", None)
    if close is not None:
        close()
    if fresh is not None and s.cold_process:
        status(f"{name}: open + first image in a fresh process")
        result.cold = fresh()
    return result, outs[0]


def trt_memory(pipe) -> dict | None:
    """TensorRT's own memory numbers for a trt pipeline's runners (plan, weights, activations per network), or None."""
    runners = getattr(pipe, "runners", None)
    if not runners:
        return None
    try:
        from monkey_trt.engine.trt.engine_dir import memory_report

        from monkey_trt.enginedir.networks import MAP_NETWORK

        maps = getattr(pipe, "map_runners", None) or {}  # the map-only UNet's plan (at most one) counts too
        report = memory_report({**runners, **{MAP_NETWORK: r for r in maps.values()}})
    except Exception:  # a figure we cannot get is left out, never a failed bench
        return None
    return report if report.get("networks") else None


def memory_lines(results: list[BackendResult]) -> list[str]:
    """One line per trt result: `trt memory: unet: plan ..., activations ...; ... activations shared ...`."""
    from monkey_trt.commands.doctor import memory_detail

    return [f"{r.backend} memory: {memory_detail(r.trt_memory)}" for r in results if r.trt_memory]


def _soak(name, pipe, request, subject, n, kwargs, status) -> dict:
    rss0, gpu0 = rss_mib(), _gpu_mib(peak=False)
    t = time.perf_counter()
    for i in range(n):
        if i % 10 == 0:
            status(f"{name}: soak {i + 1}/{n}")
        pipe(request, subject, **kwargs)
    rss1, gpu1 = rss_mib(), _gpu_mib(peak=False)
    return {"generations": n, "seconds": time.perf_counter() - t, "rss_start_mib": rss0, "rss_end_mib": rss1,
            "rss_drift_mib": rss1 - rss0, "gpu_start_mib": gpu0, "gpu_end_mib": gpu1,
            "gpu_drift_mib": None if gpu0 is None else gpu1 - gpu0}


def compare_to_first(results: list[BackendResult], outputs: list) -> None:
    """Ratios to `published` (when it ran) and mask/image agreement with the first backend."""
    pub = next((r for r in results if r.backend == "published"), None)
    first = outputs[0]
    for r, out in zip(results, outputs):
        if pub is not None:
            r.ratio_to_published = pub.end_to_end_s.p50 / r.end_to_end_s.p50
        r.mask_equals_first = bool(np.array_equal(out.mask.mask, first.mask.mask))
        r.image_max_abs_diff_vs_first = float(np.abs(out.image - first.image).max())


# -- report ------------------------------------------------------------------------------------
def machine_info() -> dict:
    import importlib.metadata as md

    def version(mod: str) -> str | None:
        try:
            return md.version(mod)
        except md.PackageNotFoundError:
            return None

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    torch = _torch_cuda()
    mem = _proc_meminfo_gib()
    return {
        "cpu": cpu, "cpu_count": os.cpu_count(), "memory_gib": mem, "os": platform.platform(),
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name() if torch is not None else None,
        "versions": {m: version(m) for m in ("monkey-trt", "numpy", "onnxruntime", "onnxruntime-gpu", "torch", "diffusers",
                                              "transformers", "tensorrt")},
    }


def _proc_meminfo_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def report(settings: BenchSettings, results: list[BackendResult], source: dict) -> dict:
    """The JSON document (schema.json)."""
    return {
        "schema": "monkey-trt-bench", "schema_version": SCHEMA_VERSION, "created_unix": time.time(),
        "machine": machine_info(), "settings": settings.to_json(),
        "source": source, "results": [_jsonable(asdict(r)) for r in results],
    }


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def validate_report(doc: dict) -> None:
    """Raise jsonschema.ValidationError if `doc` does not follow schema.json (needs jsonschema)."""
    import jsonschema

    jsonschema.validate(doc, json.loads(SCHEMA_PATH.read_text()))


STAGE_GROUPS = ("text encoder", "image encoder", "UNet", "LCM scheduler", "mask", "VAE decode", "between stages")


def stage_groups(r: BackendResult) -> dict[str, float]:
    """p50 seconds per chart/table group (STAGE_GROUPS). Every UNet call counts as UNet, the numpy LCM steps
    as the scheduler; "between stages" is what no stage timed (host code between the stages: the UNet
    session's per-pass set-up, copies, Python), so the groups add up to the end-to-end p50."""
    st = r.stages_s
    unet = sum(c["p50_s"] for c in r.unet_calls)
    groups = {"text encoder": st.get("encode_prompt", 0.0), "image encoder": st.get("encode_subject", 0.0), "UNet": unet,
              "LCM scheduler": st.get("scheduler", 0.0), "mask": st.get("mask", 0.0),
              "VAE decode": st.get("decode", 0.0) + st.get("decode_mask_pass", 0.0)}
    groups["between stages"] = max(r.end_to_end_s.p50 - sum(groups.values()), 0.0)
    return groups
