"""One description of how to run MONKEY: `BackendSpec` (frozen, validated), and the CLI options that fill it.

Every face opens a backend from a BackendSpec: `generate`, `bench`, `serve` (and Ray), `eval`, the Python API
(`MonkeyPipeline.from_engine_dir(root, backend=..., **fields)`) and the benchmarks. `jobs.backends.open_backend`
opens any of them (the torch reference lazily); `runtime.pipeline.open_engine` opens the lean ones (ort, trt) without torch.

`BACKEND_OPTIONS` is the one table of the backend options' flags, defaults, help and the backends they apply
to: `cli.backend_option(name)` makes the typer option of every command from it, and `spec_from_options` refuses,
in one line, an option given for a backend it does not apply to (`--device` with ort, `--providers` with trt).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from monkey_trt.core.config import check_threads
from monkey_trt.core.errors import MonkeyError
from monkey_trt.enginedir.manifest import PRECISIONS

BACKENDS = ("torch", "ort", "trt")  # what `generate` / the API open; bench adds "published"
ALL_BACKENDS = ("published", "torch", "ort", "trt")
TORCH_BACKENDS = ("torch", "published")  # run in PyTorch: device and dtype
ENGINE_BACKENDS = ("ort", "trt")  # run an engine directory: precision, verify
PROVIDERS = ("cpu", "cuda", "tensorrt")  # engine.ort.PROVIDER_NAMES' keys (not imported: that module loads onnxruntime)
TORCH_DTYPES = ("fp32", "fp16")
VERIFY_MODES = ("sha256", "size")
MASK_PASS_MODES = ("exact", "same")  # runtime.unet_graphs


@dataclass(frozen=True)
class BackendOption:
    """One backend option: `flag` on every command that has it, with this help and default."""

    name: str  # the BackendSpec field (dtype: the torch backends' precision)
    flags: tuple[str, ...]
    default: Any
    help: str
    applies: tuple[str, ...]  # the backends it means something for

    @property
    def flag(self) -> str:
        return self.flags[0].split("/")[0]


BACKEND_OPTIONS: dict[str, BackendOption] = {o.name: o for o in (
    BackendOption("device", ("--device",), "cpu", "torch/published backends: cpu, cuda or cuda:N", TORCH_BACKENDS),
    BackendOption("dtype", ("--dtype",), "fp32", "torch/published backends: fp32 | fp16 (fp16 changes the math; opt-in)",
                  TORCH_BACKENDS),
    BackendOption("precision", ("--precision",), "fp32",
                  "ort/trt: the engine directory's fp32, fp16, int8 or fp8 graphs (int8/fp8: the mask pass stays fp32)",
                  ENGINE_BACKENDS),
    BackendOption("providers", ("--providers",), "",
                  "ort backend: cpu, cuda, tensorrt (comma list; default: cuda if installed, else cpu)", ("ort",)),
    BackendOption("fp16", ("--fp16",), False, "ort TensorRT EP: fp16 kernels (changes the math; opt-in)", ("ort",)),
    BackendOption("tf32", ("--tf32",), False,
                  "torch (cuda), ort CUDA/TensorRT EP: allow TF32 for fp32 math (changes the math; opt-in; trt: `build --tf32`)",
                  ("torch", "ort")),
    BackendOption("cuda_graph", ("--cuda-graph",), False,
                  "torch (cuda), ort CUDA/TensorRT EP, trt: replay UNet steps as CUDA graphs", ("torch", "ort", "trt")),
    BackendOption("batch_passes", ("--batch-passes/--no-batch-passes",), None,
                  "Run the mask-independent leading steps of both passes as one batch-2 UNet call "
                  "(exact; default: on for GPUs, off on CPU)", ("torch", "ort", "trt")),
    BackendOption("threads", ("--threads",), 0, "CPU threads for torch / each ORT session (0 = library default)", ALL_BACKENDS),
    BackendOption("verify", ("--verify",), "sha256",
                  "Engine-dir check before loading: sha256 (every file hashed) | size (sizes; small files hashed)",
                  ENGINE_BACKENDS),
)}


def _only(backends: tuple[str, ...]) -> str:
    return f"--backend {backends[0]}" if len(backends) == 1 else f"the {'/'.join(backends)} backends"


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise MonkeyError(msg)


@dataclass(frozen=True)
class BackendSpec:
    """How to run: which backend, on what, in which precision, with which options. Frozen; every field checked.

    precision: ort/trt: the engine directory's graphs (fp32 | fp16 | int8 | fp8); torch/published: the dtype
    (fp32 | fp16, `--dtype`). A field set away from its default for a backend it does not apply to is refused.
    """

    backend: str = "ort"  # torch | ort | trt (| published: bench only)
    device: str = "cpu"  # torch/published: cpu | cuda | cuda:N (ort/trt: the providers decide)
    precision: str = "fp32"
    providers: tuple[str, ...] = ()  # ort: cpu | cuda | tensorrt in priority order; () = best installed (cuda, else cpu)
    fp16: bool = False  # ort TensorRT EP: allow fp16 kernels (changes the math: opt-in)
    tf32: bool = False  # torch on cuda, ort CUDA/TensorRT EP: TF32 for fp32 math (changes the math: opt-in; engine/tf32.py)
    cuda_graph: bool = False  # torch on cuda, ort CUDA/TensorRT EP, trt: replay UNet steps as CUDA graphs
    batch_passes: bool | None = None  # exact pass batching; None: the backend's measured default
    threads: int = 0  # CPU threads for torch / each ORT session (intra-op); 0 = the library default
    verify: str = "sha256"  # ort/trt engine-dir check: sha256 (every file hashed) | size (sizes; small files hashed)
    ort_cache: Path | None = None  # ort: keep ORT's optimised graphs here, keyed by digest (faster cold start)
    mask_pass: str = "exact"  # ort/trt int8/fp8: exact = pass 1 (the mask) on the fp32 UNet; same = every call 8-bit

    def __post_init__(self) -> None:
        b = self.backend
        _need(isinstance(b, str) and b in ALL_BACKENDS, f"--backend must be one of {', '.join(BACKENDS)}, got {b!r}")
        torch_like = b in TORCH_BACKENDS
        if isinstance(self.providers, str):  # "cuda,cpu" from a config file
            object.__setattr__(self, "providers", tuple(p.strip() for p in self.providers.split(",") if p.strip()))
        _need(isinstance(self.providers, (tuple, list)) and all(isinstance(p, str) for p in self.providers),
              f"--providers must be a list of names, got {self.providers!r}")
        object.__setattr__(self, "providers", tuple(p.strip().lower() for p in self.providers))
        for name, kind in (("fp16", bool), ("tf32", bool), ("cuda_graph", bool)):
            _need(isinstance(getattr(self, name), kind), f"{name} must be true or false, got {getattr(self, name)!r}")
        _need(self.batch_passes is None or isinstance(self.batch_passes, bool),
              f"batch_passes must be true, false or None, got {self.batch_passes!r}")
        check_threads(self.threads)
        # options for other backends: refused, one line (the defaults mean "not given")
        for o in BACKEND_OPTIONS.values():
            if o.name in ("dtype", "precision"):
                continue
            if b not in o.applies and not is_default(o.name, getattr(self, o.name)):
                raise MonkeyError(f"{o.flag} applies to {_only(o.applies)} only, not --backend {b}")
        _need(self.ort_cache is None or b == "ort", f"the ORT graph cache applies to --backend ort only, not --backend {b}")
        if self.ort_cache is not None:
            object.__setattr__(self, "ort_cache", Path(self.ort_cache))
        # values
        if torch_like:
            _need(self.precision in TORCH_DTYPES, f"--dtype must be fp32 or fp16, got {self.precision!r}")
            _need(isinstance(self.device, str) and re.fullmatch(r"cpu|cuda(:\d+)?", self.device) is not None,
                  f"--device must be cpu, cuda or cuda:N, got {self.device!r}")
            _need(not self.cuda_graph or self.device.startswith("cuda"), "--cuda-graph with the torch backend needs --device cuda")
            _need(self.mask_pass == "exact", f"mask_pass applies to {_only(ENGINE_BACKENDS)} only, not --backend {b}")
            return
        _need(self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        _need(self.verify in VERIFY_MODES, f"--verify must be sha256 or size, got {self.verify!r}")
        _need(self.mask_pass in MASK_PASS_MODES, f"mask_pass must be one of {', '.join(MASK_PASS_MODES)}, got {self.mask_pass!r}")
        if b == "ort":
            bad = [p for p in self.providers if p not in PROVIDERS]
            _need(not bad, f"unknown execution provider {bad[0] if bad else ''!r} (choose among {', '.join(PROVIDERS)})")
            _need(len(set(self.providers)) == len(self.providers), "--providers names a provider twice")
            _need(self.precision != "fp8", "--precision fp8 runs as TensorRT plans only (--backend trt, GPU compute capability "
                                           ">= 8.9): ONNX Runtime has no fp8 kernels; on the CPU use --precision int8")
            _need(not self.fp16 or "tensorrt" in self.providers, "--fp16 applies to ORT's TensorRT EP only (--providers tensorrt)")
            _need(not (self.cuda_graph and self.providers and self.providers[0] == "cpu"),
                  "--cuda-graph needs a GPU provider first (--providers cuda or tensorrt), not cpu")
            _need(not (self.cuda_graph and self.precision == "int8" and self.providers[:1] != ("tensorrt",)),
                  "--cuda-graph with --precision int8 is refused on ORT's CUDA EP: it may run per-channel DequantizeLinear "
                  "on the CPU (onnxruntime issue 15260), which a CUDA-graph session cannot; use --providers tensorrt, "
                  "--backend trt, or no --cuda-graph")

    @property
    def dtype(self) -> str:
        """The torch backends' dtype (their precision)."""
        return self.precision

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["providers"] = list(self.providers)
        d["ort_cache"] = None if self.ort_cache is None else str(self.ort_cache)
        return d


def split_list(text: str) -> tuple[str, ...]:
    """`cuda,cpu` -> ("cuda", "cpu")."""
    return tuple(p.strip() for p in text.split(",") if p.strip())


def is_default(name: str, value: Any) -> bool:
    """Whether a backend option's value is its default (`--providers`: "" on the command line, () in a spec)."""
    default = BACKEND_OPTIONS[name].default
    return value == default or (name == "providers" and not value)


def _given(values: Mapping[str, Any]) -> dict[str, Any]:
    """The backend options set away from their defaults."""
    return {k: v for k, v in values.items() if k in BACKEND_OPTIONS and not is_default(k, v)}


def spec_from_options(backend: str, values: Mapping[str, Any], **extra: Any) -> BackendSpec:
    """A command's backend option values (named as in BACKEND_OPTIONS) -> the spec of `backend`.

    An option given for a backend it does not apply to is one line (`--device applies to the published/torch
    backends only, not --backend ort`). `extra`: spec fields no option sets (ort_cache, mask_pass)."""
    _need(backend in ALL_BACKENDS, f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    for name in _given(values):
        o = BACKEND_OPTIONS[name]
        if backend not in o.applies:
            hint = " (the torch backend takes --dtype fp32|fp16)" if name == "precision" else ""
            raise MonkeyError(f"{o.flag} applies to {_only(o.applies)} only, not --backend {backend}{hint}")
    kw = {k: v for k, v in values.items() if k in BACKEND_OPTIONS and backend in BACKEND_OPTIONS[k].applies}
    precision = kw.pop("dtype", None) if backend in TORCH_BACKENDS else kw.pop("precision", None)
    if isinstance(kw.get("providers"), str):
        kw["providers"] = split_list(kw["providers"])
    return BackendSpec(backend=backend, **({"precision": precision} if precision is not None else {}), **kw, **extra)


def specs_for(backends: tuple[str, ...], values: Mapping[str, Any], extra: Mapping[str, Mapping[str, Any]] | None = None
              ) -> dict[str, BackendSpec]:
    """`bench`: one spec per backend from one set of options; each backend takes the options that apply to it.
    An option that applies to none of `backends` is one line."""
    for name in _given(values):
        o = BACKEND_OPTIONS[name]
        if not any(b in o.applies for b in backends):
            raise MonkeyError(f"{o.flag} applies to {_only(o.applies)} only, not --backends {','.join(backends)}")
    specs = {}
    for b in backends:
        mine = {k: v for k, v in values.items() if k in BACKEND_OPTIONS and b in BACKEND_OPTIONS[k].applies}
        specs[b] = spec_from_options(b, mine, **dict((extra or {}).get(b, {})))
    return specs

