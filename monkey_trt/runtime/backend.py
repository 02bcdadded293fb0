"""The backends and how to run one: the backend table (`BACKEND_TABLE`), the backend options' table
(`BACKEND_OPTIONS`) and `BackendSpec` (frozen, validated), the one object that says how to run MONKEY.

Every face opens a backend from a BackendSpec: `generate`, `bench`, `serve` (and Ray), `eval`, the Python API
(`MonkeyPipeline.from_engine_dir(root, backend=..., **fields)`) and the benchmarks. Each backend is one row of
`BACKEND_TABLE`: its name, its opener, the options that apply to it, whether it runs an engine directory, its
devices and the faces that offer it. Adding a backend is one row plus its opener (and its runner):

    engine-directory backends (ort, trt, openvino): opener(root, manifest, spec, networks, shared) -> {network: Runner},
        not yet activated (`shared`: what one pipeline's runners share, e.g. TensorRT's activation pool);
        runtime.pipeline.MonkeyPipeline drives them (no torch)
    model backends (torch, published): opener(spec, models) -> a pipeline on the model weights (torch, loaded lazily
        by commands.backends.open_backend)

`BACKEND_OPTIONS` is the one table of the backend options' flags, defaults and help: `cli.backend_option(name)`
makes the typer option of every command from it, and `spec_from_options` refuses, in one line, an option given
for a backend it does not apply to (`--device` with ort, `--providers` with trt).
"""

from __future__ import annotations

import os

import importlib
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping

from monkey_trt.core.config import check_threads
from monkey_trt.core.errors import MonkeyError
from monkey_trt.engine.ort import PROVIDER_NAMES
from monkey_trt.enginedir.digests import VERIFY_MODES
from monkey_trt.enginedir.manifest import PRECISIONS
from monkey_trt.runtime.unet_graphs import MASK_PASS_MODES, REDUCED_PRECISIONS, RUN_PRECISIONS

FACES = ("generate", "eval", "bench", "serve", "api", "demo")  # where a backend can be offered
TORCH_DTYPES = ("fp32", "fp16")  # the model backends' precisions (--dtype; fp16 changes the math: opt-in)


@dataclass(frozen=True)
class Backend:
    """One row of the backend table."""

    name: str  # --backend NAME
    opener: str  # "module:function" (see the module docstring), imported when the backend is opened
    options: tuple[str, ...]  # the BACKEND_OPTIONS (and option-less BackendSpec fields) that apply to it
    needs_engine_dir: bool  # True: runs an engine directory's graphs (lean: no torch); False: model weights (torch)
    devices: tuple[str, ...]  # where it runs
    precisions: tuple[str, ...]  # what its `precision` may be (model backends: their dtype, `--dtype`)
    faces: tuple[str, ...] = FACES  # the commands and APIs that offer it
    note: str = ""  # a word for help texts ("PyTorch reference")

    def open_function(self) -> Callable:
        """The opener, imported now (a backend's libraries load only when it is opened)."""
        module, _, name = self.opener.partition(":")
        return getattr(importlib.import_module(module), name)


_ENGINE_OPTIONS = ("precision", "cuda_graph", "batch_passes", "threads", "verify", "mask_pass", "map_only")
BACKEND_TABLE: dict[str, Backend] = {b.name: b for b in (
    Backend("published", "monkey_trt.baselines.published:open_published", ("device", "dtype", "threads"),
            needs_engine_dir=False, devices=("cpu", "cuda"), precisions=TORCH_DTYPES, faces=("bench",),
            note="the authors' published code"),
    Backend("torch", "monkey_trt.reference.pipeline:open_reference",
            ("device", "dtype", "tf32", "cuda_graph", "batch_passes", "threads"),
            needs_engine_dir=False, devices=("cpu", "cuda"), precisions=TORCH_DTYPES, faces=("generate", "eval", "bench", "api", "demo"),
            note="PyTorch reference"),
    Backend("ort", "monkey_trt.engine.ort.opener:open_ort_runners", (*_ENGINE_OPTIONS, "providers", "fp16", "tf32", "ort_cache", "cpu_arena"),
            needs_engine_dir=True, devices=("cpu", "cuda"), precisions=("fp32", "fp16", "int8")),
    Backend("trt", "monkey_trt.engine.trt.engine_dir:open_engine_dir_plans", _ENGINE_OPTIONS,
            needs_engine_dir=True, devices=("cuda",), precisions=PRECISIONS, faces=("generate", "eval", "bench", "serve", "api")),
    Backend("openvino", "monkey_trt.engine.openvino:open_openvino_runners",
            ("precision", "batch_passes", "threads", "verify", "mask_pass", "map_only"),
            needs_engine_dir=True, devices=("cpu",), precisions=("fp32", "int8", "bf16"),
            faces=("generate", "eval", "bench", "serve", "api", "demo"), note="OpenVINO CPU"),
)}


def backend_row(name: str, face: str | None = None) -> Backend:
    """The table's row of `name` (offered by `face`, when given); MonkeyError (one line) otherwise."""
    names = backend_names(face)
    if name not in names:
        raise MonkeyError(f"--backend must be one of {', '.join(names)}, got {name!r}")
    return BACKEND_TABLE[name]


def backend_names(face: str | None = None) -> tuple[str, ...]:
    """The backends `face` offers (every backend when None), in table order."""
    return tuple(b.name for b in BACKEND_TABLE.values() if face is None or face in b.faces)


def backend_choices(face: str, notes: bool = False, sep: str = " | ") -> str:
    """Help text: `torch | ort | trt` (with notes: `torch (PyTorch reference) | ort | trt`)."""
    return sep.join(f"{n} ({BACKEND_TABLE[n].note})" if notes and BACKEND_TABLE[n].note else n for n in backend_names(face))


def engine_dir_backends(face: str | None = None, sep: str = "/") -> str:
    """Help text: the backends that run an engine directory (`ort/trt/openvino`)."""
    return sep.join(n for n in backend_names(face) if BACKEND_TABLE[n].needs_engine_dir)


def applies_to(option: str) -> tuple[str, ...]:
    """The backends a backend option (or option-less BackendSpec field) applies to, in table order."""
    return tuple(b.name for b in BACKEND_TABLE.values() if option in b.options)


@dataclass(frozen=True)
class BackendOption:
    """One backend option: `flag` on every command that has it, with this help and default."""

    name: str  # the BackendSpec field (dtype: the model backends' precision)
    flags: tuple[str, ...]  # () for a spec field no command line sets (ort_cache, mask_pass, map_only, cpu_arena)
    default: Any
    help: str  # `{who}` stands for the backends it applies to, named by `who` (those the command offers)
    label: str = ""  # how a refusal names an option without a flag
    who: tuple[tuple[str, str], ...] = ()  # (backend, how the help names it)
    sep: str = "/"

    def help_for(self, face: str | None = None) -> str:
        """The help on a command (`face`): names only the backends that command offers."""
        names = dict(self.who)
        offered = [names[b] for b in backend_names(face) if b in names and b in self.applies]
        return self.help.replace("{who}", self.sep.join(offered))

    @property
    def flag(self) -> str:
        return self.flags[0].split("/")[0] if self.flags else self.label or self.name

    @property
    def applies(self) -> tuple[str, ...]:
        """The backends it means something for (the backend table's rows that list it)."""
        return applies_to(self.name)


BACKEND_OPTIONS: dict[str, BackendOption] = {o.name: o for o in (
    BackendOption("device", ("--device",), "cpu", "{who}: cpu, cuda or cuda:N", who=(("published", "published"), ("torch", "torch"))),
    BackendOption("dtype", ("--dtype",), "fp32", "{who}: fp32 | fp16 (fp16 changes the math; opt-in)",
                  who=(("published", "published"), ("torch", "torch"))),
    BackendOption("precision", ("--precision",), "fp32",
                  "ort/trt/openvino: the engine directory's fp32, fp16, int8 or fp8 graphs; openvino: bf16 = the fp32 "
                  "UNet and VAE decoder on bf16 kernels (int8/fp8/bf16: the mask pass stays fp32)"),
    BackendOption("providers", ("--providers",), "",
                  "ort backend: cpu, cuda, tensorrt (comma list; default: cuda if installed, else cpu)"),
    BackendOption("fp16", ("--fp16",), False, "ort TensorRT EP: fp16 kernels (changes the math; opt-in)"),
    BackendOption("tf32", ("--tf32",), False,
                  "{who}: allow TF32 for fp32 math (changes the math; opt-in; trt: `build --tf32`)",
                  who=(("torch", "torch (cuda)"), ("ort", "ort CUDA/TensorRT EP")), sep=", "),
    BackendOption("cuda_graph", ("--cuda-graph",), False, "{who}: replay UNet steps as CUDA graphs",
                  who=(("torch", "torch (cuda)"), ("ort", "ort CUDA/TensorRT EP"), ("trt", "trt")), sep=", "),
    BackendOption("batch_passes", ("--batch-passes/--no-batch-passes",), None,
                  "Run the mask-independent leading steps of both passes as one batch-2 UNet call "
                  "(exact; default: on for GPUs, off on CPU)"),
    BackendOption("threads", ("--threads",), 0, "CPU threads for {who} (0 = library default)",
                  who=(("published", "published"), ("torch", "torch"), ("ort", "each ORT session"), ("openvino", "OpenVINO")), sep=" / "),
    BackendOption("verify", ("--verify",), "sha256",
                  "Engine-dir check before loading: sha256 (every file's digest; a check of an unchanged file is remembered "
                  "in your cache) | rehash (every file hashed on every load) | size (sizes; small files hashed)"),
    BackendOption("ort_cache", ("--ort-cache/--no-ort-cache",), None,
                  "ort: keep ORT's optimised graphs for faster starts (default: on for the CPU provider, in the user cache; "
                  "bench: WORKDIR/ort-optimized); --no-ort-cache: off",
                  label="the ORT graph cache"),
    BackendOption("mask_pass", (), "exact", "ort/trt/openvino int8/fp8/bf16: exact = pass 1 (the mask) on the fp32 UNet; "
                  "same = every call reduced; fp16 (ort/trt int8/fp8, for GPUs) = pass 1 on the fp16 UNet",
                  label="mask_pass"),
    BackendOption("map_only", (), True, "ort/trt/openvino: pass 1's last call on the map-only UNet where the engine directory "
                  "has one (same mask; its weights are loaded beside the UNet's: False saves that memory)", label="map_only"),
    BackendOption("cpu_arena", (), True, "ort CPU provider: ONNX Runtime's memory arena (False: activations freed as they "
                  "die; the export's calibration recordings, where the arena grows with the image size)", label="cpu_arena"),
)}
CLI_OPTIONS = tuple(n for n, o in BACKEND_OPTIONS.items() if o.flags)  # what commands take on the command line


def _only(backends: tuple[str, ...]) -> str:
    return f"--backend {backends[0]}" if len(backends) == 1 else f"the {'/'.join(backends)} backends"


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise MonkeyError(msg)


@dataclass(frozen=True)
class BackendSpec:
    """How to run: which backend, on what, in which precision, with which options. Frozen; every field checked.

    precision: ort/trt: the engine directory's graphs (fp32 | fp16 | int8 | fp8; openvino: fp32 | int8 | bf16, bf16 =
    the fp32 UNet and VAE decoder on bf16 kernels); torch/published: the dtype
    (fp32 | fp16, `--dtype`). A field set away from its default for a backend it does not apply to is refused.
    """

    backend: str = "ort"  # a row of BACKEND_TABLE: torch | ort | trt | openvino (| published: bench only)
    device: str = "cpu"  # torch/published: cpu | cuda | cuda:N (ort/trt: the providers decide)
    precision: str = "fp32"
    providers: tuple[str, ...] = ()  # ort: cpu | cuda | tensorrt in priority order; () = best installed (cuda, else cpu)
    fp16: bool = False  # ort TensorRT EP: allow fp16 kernels (changes the math: opt-in)
    tf32: bool = False  # torch on cuda, ort CUDA/TensorRT EP: TF32 for fp32 math (changes the math: opt-in; engine/tf32.py)
    cuda_graph: bool = False  # torch on cuda, ort CUDA/TensorRT EP, trt: replay UNet steps as CUDA graphs
    batch_passes: bool | None = None  # exact pass batching; None: the backend's measured default
    threads: int = 0  # CPU threads for torch / each ORT session (intra-op); 0 = the library default
    verify: str = "sha256"  # engine-dir check: sha256 (remembered per file state) | rehash (always hashed) | size
    ort_cache: Path | bool | None = None  # ort: ORT's optimised graphs kept: None = user cache where safe (CPU), True, False, a folder
    mask_pass: str = "exact"  # int8/fp8/bf16: exact = pass 1 (the mask) on the fp32 UNet; same = every call reduced; fp16 = on fp16
    map_only: bool = True  # engine backends: pass 1's last call on the map-only UNet (export/map_graph.py), when there is one
    cpu_arena: bool = True  # ort CPU provider: ONNX Runtime's memory arena (off: the export's calibration recordings)

    def __post_init__(self) -> None:
        b = self.backend
        _need(isinstance(b, str) and b in BACKEND_TABLE, f"--backend must be one of {', '.join(backend_names('api'))}, got {b!r}")
        row = BACKEND_TABLE[b]
        if isinstance(self.providers, str):  # "cuda,cpu" from a config file
            object.__setattr__(self, "providers", tuple(p.strip() for p in self.providers.split(",") if p.strip()))
        _need(isinstance(self.providers, (tuple, list)) and all(isinstance(p, str) for p in self.providers),
              f"--providers must be a list of names, got {self.providers!r}")
        object.__setattr__(self, "providers", tuple(p.strip().lower() for p in self.providers))
        for name, kind in (("fp16", bool), ("tf32", bool), ("cuda_graph", bool), ("map_only", bool), ("cpu_arena", bool)):
            _need(isinstance(getattr(self, name), kind), f"{name} must be true or false, got {getattr(self, name)!r}")
        _need(self.batch_passes is None or isinstance(self.batch_passes, bool),
              f"batch_passes must be true, false or None, got {self.batch_passes!r}")
        check_threads(self.threads)
        # options for other backends: refused, one line (the defaults mean "not given")
        for o in BACKEND_OPTIONS.values():
            if o.name not in ("dtype", "precision") and b not in o.applies and not is_default(o.name, getattr(self, o.name)):
                raise MonkeyError(f"{o.flag} applies to {_only(o.applies)} only, not --backend {b}")
        if self.ort_cache is not None and not isinstance(self.ort_cache, bool):
            _need(isinstance(self.ort_cache, (str, os.PathLike)) and str(self.ort_cache) != "",
                  f"ort_cache must be true, false, None or a folder path, got {self.ort_cache!r}")
            object.__setattr__(self, "ort_cache", Path(self.ort_cache))
        # values
        if not row.needs_engine_dir:  # a model backend: its precision is its dtype
            _need(self.precision in row.precisions, f"--dtype must be fp32 or fp16, got {self.precision!r}")
            _need(isinstance(self.device, str) and re.fullmatch(r"cpu|cuda(:\d+)?", self.device) is not None,
                  f"--device must be cpu, cuda or cuda:N, got {self.device!r}")
            _need(not self.cuda_graph or self.device.startswith("cuda"), "--cuda-graph with the torch backend needs --device cuda")
            return
        _need(self.precision in RUN_PRECISIONS, f"--precision must be one of {', '.join(RUN_PRECISIONS)}, got {self.precision!r}")
        _need(self.precision != "fp8" or "fp8" in row.precisions,
              "--precision fp8 runs as TensorRT plans only (--backend trt, GPU compute capability >= 8.9): "
              f"{'ONNX Runtime' if b == 'ort' else f'--backend {b}'} has no fp8 kernels; on the CPU use --precision int8")
        _need(self.precision in row.precisions, f"--backend {b} runs {', '.join(row.precisions)} graphs, not {self.precision}")
        _need(self.verify in VERIFY_MODES, f"--verify must be one of {', '.join(VERIFY_MODES)}, got {self.verify!r}")
        _need(self.mask_pass in MASK_PASS_MODES, f"mask_pass must be one of {', '.join(MASK_PASS_MODES)}, got {self.mask_pass!r}")
        _need(self.mask_pass == "exact" or self.precision in REDUCED_PRECISIONS,
              f"mask_pass={self.mask_pass!r} applies to the reduced precisions ({', '.join(REDUCED_PRECISIONS)}), not --precision "
              f"{self.precision}: its passes all run one graph already (drop mask_pass)")
        _need(self.mask_pass != "fp16" or ("fp16" in row.precisions and self.precision != "bf16"),
              f"mask_pass='fp16' runs pass 1 on the fp16 UNet: an int8/fp8 engine on the ort or trt backend, not "
              f"--backend {b} --precision {self.precision}")
        if "providers" in row.options:  # ONNX Runtime's execution providers
            bad = [p for p in self.providers if p not in PROVIDER_NAMES]
            _need(not bad, f"unknown execution provider {bad[0] if bad else ''!r} (choose among {', '.join(PROVIDER_NAMES)})")
            _need(len(set(self.providers)) == len(self.providers), "--providers names a provider twice")
            _need(not self.fp16 or "tensorrt" in self.providers, "--fp16 applies to ORT's TensorRT EP only (--providers tensorrt)")
            _need(not (self.cuda_graph and self.providers and self.providers[0] == "cpu"),
                  "--cuda-graph needs a GPU provider first (--providers cuda or tensorrt), not cpu")
            _need(not (self.cuda_graph and self.precision == "int8" and self.providers[:1] != ("tensorrt",)),
                  "--cuda-graph with --precision int8 is refused on ORT's CUDA EP: it may run per-channel DequantizeLinear "
                  "on the CPU (onnxruntime issue 15260), which a CUDA-graph session cannot; use --providers tensorrt, "
                  "--backend trt, or no --cuda-graph")

    @property
    def row(self) -> Backend:
        """This backend's row of the backend table."""
        return BACKEND_TABLE[self.backend]

    @property
    def dtype(self) -> str:
        """The model backends' dtype (their precision)."""
        return self.precision

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["providers"] = list(self.providers)
        d["ort_cache"] = self.ort_cache if self.ort_cache is None or isinstance(self.ort_cache, bool) else str(self.ort_cache)
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
    _need(backend in BACKEND_TABLE, f"--backend must be one of {', '.join(backend_names('api'))}, got {backend!r}")
    for name in _given(values):
        o = BACKEND_OPTIONS[name]
        if backend not in o.applies:
            hint = " (the torch backend takes --dtype fp32|fp16)" if name == "precision" else ""
            raise MonkeyError(f"{o.flag} applies to {_only(o.applies)} only, not --backend {backend}{hint}")
    kw = {k: v for k, v in values.items() if k in BACKEND_OPTIONS and backend in BACKEND_OPTIONS[k].applies}
    precision = kw.pop("precision", None) if BACKEND_TABLE[backend].needs_engine_dir else kw.pop("dtype", None)
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

