"""`monkey-trt` command line (typer + rich).

Every user error is printed as one plain line `error: ...` on stderr with exit code 2, no traceback,
no half-written output: MonkeyError, click usage errors (with click's hints), OSError (permissions,
a full disk, ...) and undecodable text. Set MONKEY_TRT_DEBUG=1 to see tracebacks of unexpected failures.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
import typing
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console

from monkey_trt.core import __version__
from monkey_trt.core.config import (DEFAULT_BASE, DEFAULT_IP_ADAPTER, DEFAULT_IP_WEIGHT, DEFAULT_MASK_LAYER, Knob,
                                    MonkeyConfig, Request, check_side, knobs)
from monkey_trt.core.errors import MonkeyError, first_line
from monkey_trt.enginedir.networks import profile_from_options
from monkey_trt.jobs.progress import status

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="MONKEY (masked IP-Adapter personalization, SD1.5/LCM) inference engine.")
console = Console(stderr=True)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"monkey-trt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                       help="Print the version and exit")) -> None:
    """MONKEY (masked IP-Adapter personalization, SD1.5/LCM) inference engine."""

DEMO_PROMPT = "a toy on the beach"


# -- options from the Knobs of core.config ---------------------------------------------------
def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.replace(" ", "").split(",") if x != "")
    except ValueError:
        raise MonkeyError(f"{flag} must be comma-separated integers, got {text!r}") from None


def _cli_type(k: Knob) -> type:
    """A list of ints is typed as text on the command line (`1,2`)."""
    return str if k.kind is tuple else k.kind


_KNOB_DEFAULT = object()


def _knob_option(k: Knob, default: Any = _KNOB_DEFAULT, help_suffix: str = "") -> Any:
    """typer.Option of a Knob: its flag, help (+ `help_suffix`) and default (`...` when required) unless `default` is given."""
    if default is _KNOB_DEFAULT:
        default = ... if k.required else (",".join(map(str, k.default)) if k.kind is tuple else k.default)
    return typer.Option(default, k.flag, help=k.help + help_suffix)


def with_config_options(command: Callable) -> Callable:
    """Append one option per MonkeyConfig knob (in field order) to `command`'s options; the command
    receives them as `knob_values`, a dict of the raw option values, and builds the config with `config_from_options`.

    typer reads a command's options from inspect.signature, so the wrapper carries the extended signature."""
    signature = inspect.signature(command)
    hints = typing.get_type_hints(command)
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values() if p.name != "knob_values"]
    config_knobs = knobs(MonkeyConfig)
    params += [inspect.Parameter(k.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=_knob_option(k), annotation=_cli_type(k))
               for k in config_knobs.values()]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name in config_knobs}
        return command(knob_values=values, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


def config_from_options(values: dict[str, Any]) -> MonkeyConfig:
    """The raw option values of `with_config_options` -> MonkeyConfig (lists parsed from `1,2`)."""
    k = knobs(MonkeyConfig)
    return MonkeyConfig(**{name: _int_list(v, k[name].flag) if k[name].kind is tuple else v for name, v in values.items()})


def backend_option(name: str, default: Any = _KNOB_DEFAULT) -> Any:
    """typer.Option of a backend option (runtime.backend.BACKEND_OPTIONS): the same flag, help and default on
    every command that has it."""
    from monkey_trt.runtime.backend import BACKEND_OPTIONS

    o = BACKEND_OPTIONS[name]
    return typer.Option(o.default if default is _KNOB_DEFAULT else default, *o.flags, help=o.help)


@contextlib.contextmanager
def _quiet_libraries():
    """Library chatter (deprecations, 'truncated' notices) is replaced by our own one-line warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        yield


def _check_sides(height: Optional[int], width: Optional[int]) -> None:
    """--height/--width left out take a default; given, they must be valid sides (0 is an error, not 'the default')."""
    for name, side in (("height", height), ("width", width)):
        if side is not None:
            check_side(name, side, f"--{name}")


def _warn(msg: str) -> None:
    from rich.text import Text

    console.print(Text.assemble(("warning: ", "yellow"), msg), highlight=False)  # msg is never read as markup


# -- commands -------------------------------------------------------------------------------
@app.command("tiny-model")
def tiny_model(
    out_dir: Path = typer.Argument(..., help="Folder to write base/ and ip-adapter/ into"),
    preset: str = typer.Option("tiny", help="tiny (CPU tests/demo) or sd15 (real sizes, random weights)"),
):
    """Write the embedded model (random weights, hub layouts) for offline tests, demos and benchmarks."""
    from monkey_trt.core.extras import require_extra
    from monkey_trt.core.files import check_target, record_files
    from monkey_trt.models.presets import PRESETS

    if preset not in PRESETS:
        raise MonkeyError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    check_target(out_dir.absolute(), "tiny-model.json", record_files(), ["subject.png", "tiny-model.json"])
    require_extra("export", "tiny-model")
    from monkey_trt.models.tiny import write_tiny_model

    with _quiet_libraries(), status(console, f"writing the {preset} model to {out_dir}"):
        paths = write_tiny_model(out_dir, preset=preset)
    typer.echo(f"base:       {paths.base}\nip-adapter: {paths.ip_adapter}\nsubject:    {paths.subject}")


_REQUEST = knobs(Request)
_OR_ENGINE_SIZE = " [default: the engine's opt size, else {}]"


@app.command()
@with_config_options
def generate(
    image: Path = typer.Option(..., "--image", help="Subject image (any PIL format)"),
    prompt: str = _knob_option(_REQUEST["prompt"]),
    out: Path = typer.Option(..., "--out", help="Output folder (missing parents are created; a re-run replaces only the files it wrote)"),
    base: Optional[str] = typer.Option(None, help=f"Base LCM model: hub id or diffusers folder [default: the engine's source, else {DEFAULT_BASE}]"),
    ip_adapter: Optional[str] = typer.Option(None, "--ip-adapter", help=f"IP-Adapter: hub id or folder (h94 layout) [default: the engine's source, else {DEFAULT_IP_ADAPTER}]"),
    ip_weight: str = typer.Option(DEFAULT_IP_WEIGHT, "--ip-weight", help="Weight file under models/ (.safetensors or .bin)"),
    backend: Optional[str] = typer.Option(None, help="torch (PyTorch reference) | ort | trt [default: ort with --engine-dir, else torch]"),
    engine_dir: Optional[Path] = typer.Option(None, "--engine-dir", help="Engine directory (ort/trt backends); also the default size and models"),
    verify: str = backend_option("verify"),
    device: str = backend_option("device"),
    providers: str = backend_option("providers"),
    fp16: bool = backend_option("fp16"),
    tf32: bool = backend_option("tf32"),
    cuda_graph: bool = backend_option("cuda_graph"),
    precision: str = backend_option("precision"),
    threads: int = backend_option("threads"),
    dtype: str = backend_option("dtype"),
    batch_passes: Optional[bool] = backend_option("batch_passes"),
    seed: int = _knob_option(_REQUEST["seed"]),
    height: Optional[int] = _knob_option(_REQUEST["height"], None, _OR_ENGINE_SIZE.format(_REQUEST["height"].default)),
    width: Optional[int] = _knob_option(_REQUEST["width"], None, _OR_ENGINE_SIZE.format(_REQUEST["width"].default)),
    noise: Optional[Path] = typer.Option(None, "--noise", help=".npz with latents [1,4,H/8,W/8] and step_noise [K,1,4,H/8,W/8] (K = longer pass's steps - 1); replaces --seed"),
    save_arrays: bool = typer.Option(False, "--save-arrays", help="Also write arrays.npz (float image and mask)"),
    baseline: bool = typer.Option(False, "--baseline", help="Also run plain IP-Adapter: ipadapter.png, grid.png"),
    baseline_scale: Optional[float] = typer.Option(None, "--baseline-scale", help="IP scale of the baseline (default: scale_final)"),
    knob_values: Optional[dict] = None,  # the MonkeyConfig options (appended by with_config_options)
):
    """Run MONKEY once: pass 1 -> subject mask -> pass 2; write monkey.png, mask.png, overlay.png, result.json."""
    import time

    from monkey_trt.jobs.generate import (
        GenerateJob,
        resolve_defaults,
        run_generate,
        summary,
    )

    from monkey_trt.runtime.backend import spec_from_options

    t0 = time.perf_counter()
    _check_sides(height, width)
    if baseline_scale is not None and not baseline:
        raise MonkeyError("--baseline-scale applies to the plain IP-Adapter baseline: add --baseline (or drop --baseline-scale)")
    config = config_from_options(knob_values)
    d = resolve_defaults(engine_dir, backend, height, width, base, ip_adapter)
    spec = spec_from_options(d.backend, dict(verify=verify, device=device, providers=providers, fp16=fp16, tf32=tf32, cuda_graph=cuda_graph,
                                             precision=precision, threads=threads, dtype=dtype, batch_passes=batch_passes))
    if d.dims is not None:  # the engine directory's model: its limits before any work
        config.check_model(d.dims)
    request = Request(prompt=prompt, height=d.height, width=d.width, seed=seed, config=config)
    job = GenerateJob(
        request=request, image=image, out=out, base=d.base, ip_adapter=d.ip_adapter, ip_weight=ip_weight,
        spec=spec, engine_dir=engine_dir, noise=noise, save_arrays=save_arrays,
        baseline_scale=(baseline_scale if baseline_scale is not None else config.scale_final) if baseline else None,
        dims=d.dims,
    )
    with _quiet_libraries():
        done = run_generate(job, console)
    for w in done.output.warnings:
        _warn(w)
    typer.echo(summary(done, time.perf_counter() - t0))


@app.command()
def demo(
    out: Path = typer.Option(Path("monkey-demo"), "--out", help="Output folder (missing parents are created)"),
    workdir: Path = typer.Option(Path.home() / ".cache" / "monkey-trt", "--workdir", help="Where the tiny model and its engine are cached"),
    prompt: str = typer.Option(DEMO_PROMPT, "--prompt", help="Text prompt; it owns the background"),
    size: int = typer.Option(128, "--size", help="Image side (the tiny model is fast at 64..256)"),
    seed: int = typer.Option(0, "--seed", help="Seed (diffusers LCM semantics)"),
    backend: str = typer.Option("ort", help="ort (exported once, cached) | torch (the reference)"),
    threads: int = backend_option("threads"),
):
    """The main job end to end on the embedded tiny model, offline: export once (cached), run on ORT."""
    from monkey_trt.core.files import check_target
    from monkey_trt.jobs.generate import GenerateJob, run_generate
    from monkey_trt.models.cache import DEMO_PROFILE, ensure_preset, preset_dirs
    from monkey_trt.runtime.backend import spec_from_options
    from monkey_trt.runtime.outputs import check_out_dir

    if backend not in ("ort", "torch"):
        raise MonkeyError(f"demo --backend must be ort or torch, got {backend!r}")
    lo, hi = DEMO_PROFILE
    if not lo <= size <= hi or size % 8:
        raise MonkeyError(f"demo --size must be a multiple of 8 in {lo}..{hi}, got {size}")
    spec = spec_from_options(backend, {"threads": threads})
    request = Request(prompt=prompt, height=size, width=size, seed=seed)
    check_out_dir(out, baseline=True)  # before minutes of first-run work
    for d in (workdir, *preset_dirs("tiny", workdir, size, size)):
        check_target(d.absolute(), "-", lambda _p: set())
    with _quiet_libraries():
        with status(console, "preparing the embedded tiny model") as update:
            model_dir, engine_dir = ensure_preset("tiny", workdir, size, size, engine=backend != "torch", status=update)
        job = GenerateJob(
            request=request, image=model_dir / "subject.png", out=out, base=str(model_dir / "base"),
            ip_adapter=str(model_dir / "ip-adapter"), spec=spec, baseline_scale=request.config.scale_final,
            engine_dir=engine_dir if backend != "torch" else None,
        )
        done = run_generate(job, console)
    result = done.output
    for w in result.warnings:
        _warn(w)
    total = sum(v for k, v in result.timings.items() if k not in ("baseline_pass", "decode_baseline", "decode_mask_pass"))
    typer.echo(f"demo on {result.backend}: MONKEY in {total:.2f}s, mask covers {100 * result.mask.coverage:.0f}% of the image")
    typer.echo(f"outputs in {done.out}: monkey.png, mask.png, overlay.png, ipadapter.png, grid.png, result.json")


@app.command()
def export(
    out: Path = typer.Option(..., "--out", help="Engine directory to write"),
    base: str = typer.Option(DEFAULT_BASE, help="Base LCM model: hub id or diffusers folder"),
    ip_adapter: str = typer.Option(DEFAULT_IP_ADAPTER, "--ip-adapter", help="IP-Adapter: hub id or folder"),
    ip_weight: str = typer.Option(DEFAULT_IP_WEIGHT, "--ip-weight", help="Weight file under models/ (.safetensors or .bin)"),
    height: int = typer.Option(512, help="Optimal (profile opt) height"),
    width: int = typer.Option(512, help="Optimal (profile opt) width"),
    min_size: Optional[str] = typer.Option(None, "--min", help="Smallest HxW the engine accepts (default: the opt size)"),
    max_size: Optional[str] = typer.Option(None, "--max", help="Largest HxW the engine accepts (default: the opt size)"),
    batch: int = typer.Option(1, "--batch", help="Largest batch the engines accept"),
    opset: int = typer.Option(17, "--opset", help="ONNX opset, 7..21"),
    mask_layer: str = typer.Option(DEFAULT_MASK_LAYER, "--mask-layer", help="Layer whose IP attention map is an output"),
    fold: bool = typer.Option(True, "--fold/--no-fold", help="Polygraphy constant folding"),
    force: bool = typer.Option(False, "--force", help="Replace an earlier engine directory's own files (other files are kept)"),
    precision: str = typer.Option("fp32", "--precision", help="Comma list of fp32, fp16, int8, fp8 (8-bit: the UNet, calibrated); added to an existing directory"),
    calib_prompts: Optional[Path] = typer.Option(None, "--calib-prompts", help="int8/fp8: calibration prompts, one per line [default: the paper's 20 prompts]"),
    calib_images: Optional[Path] = typer.Option(None, "--calib-images", help="int8/fp8: folder of subject images to calibrate on [default: the embedded subject]"),
    calib_size: Optional[int] = typer.Option(None, "--calib-size", help="int8/fp8: calibration cases (prompt, subject, seed), 11 UNet calls each [default: 8]"),
):
    """Export text encoder, image encoder (+IP projection), UNet (IP mask/scale in, map out), VAE decoder to ONNX."""
    from monkey_trt.core.extras import require_extra
    from monkey_trt.enginedir.manifest import parse_precisions
    from monkey_trt.jobs.progress import steps

    if not 7 <= opset <= 21:
        raise MonkeyError(f"--opset must be in 7..21, got {opset}")
    precisions = parse_precisions(precision)
    profile = profile_from_options(height, width, min_size, max_size, batch)
    require_extra("export", "export")
    from monkey_trt.export.calibration import (
        calibration_from_options,  # int8/fp8: checked before any work
    )

    calibration = calibration_from_options(precisions, profile, calib_prompts, calib_images, calib_size)
    from monkey_trt.export.onnx_export import (
        ExportOptions,
        add_precisions,
        check_export_out,
        existing_export_matches,
        export_engine_dir,
    )
    from monkey_trt.reference.loading import ModelSource

    opts = ExportOptions(ModelSource(base, ip_adapter, ip_weight), out, profile, mask_layer=mask_layer, opset=opset,
                         fold_constants=fold, force=force, precisions=precisions, calibration=calibration)
    add_only = not force and existing_export_matches(opts)  # same model and profile: add the missing precisions only
    if not add_only:
        check_export_out(out, force)
    with _quiet_libraries(), steps(console, "export") as step:
        if add_only:
            added = add_precisions(out, precisions, progress=step, calibration=calibration)
            result, note = out, (f"added {', '.join(added)}" if added else f"already has {', '.join(precisions)}")
        else:
            result, note = export_engine_dir(opts, progress=step), ", ".join(("fp32", *[p for p in precisions if p != "fp32"]))
    typer.echo(f"engine directory: {result} ({note})")


@app.command()
def build(
    engine_dir: Path = typer.Option(..., "--engine-dir", help="Engine directory from `monkey-trt export`"),
    precision: str = typer.Option("fp32", "--precision", help="Build from the fp32, fp16, int8 or fp8 ONNX graphs (export --precision P first; fp8: compute capability >= 8.9)"),
    tf32: bool = typer.Option(False, "--tf32", help="Allow TF32 in fp32 layers (changes the math; opt-in)"),
    old_fp16: bool = typer.Option(False, "--fp16", hidden=True),
    old_fp32: bool = typer.Option(False, "--fp32", hidden=True),
    static: bool = typer.Option(False, "--static", help="Build for the opt shape only (fastest)"),
    workspace_gib: float = typer.Option(8.0, "--workspace-gib", help="TensorRT builder workspace (GiB)"),
    opt_level: int = typer.Option(3, "--opt-level", help="TensorRT builder optimisation level 0..5"),
    force: bool = typer.Option(False, "--force", help="Rebuild even if a plan for this key exists"),
):
    """Build TensorRT engines (profiles, timing cache, versioned cache key) for an engine directory."""
    from monkey_trt.engine.trt.build import build_engine_dir
    from monkey_trt.enginedir.manifest import load_manifest
    from monkey_trt.enginedir.plans import BuildConfig

    if old_fp16 or old_fp32:  # the pre-strong-typing flags (TensorRT 11 has no FP16 builder flag)
        p = "fp16" if old_fp16 else "fp32"
        raise MonkeyError(f"--{p} is now --precision {p}: precision lives in the ONNX graphs (export --precision {p} first)")
    manifest = load_manifest(engine_dir)
    cfg = BuildConfig(precision=precision, workspace_gib=workspace_gib, builder_optimization_level=opt_level,
                      profile=manifest.profile, static_shapes=static, tf32=tf32)
    with status(console, "building TensorRT engines (minutes for SD1.5)") as update:
        plans = build_engine_dir(engine_dir, manifest, cfg, force=force, progress=lambda net, msg: update(f"{net}: {msg}"))
    typer.echo(f"TensorRT plans: {plans}")


@app.command()
def doctor(
    engine_dir: Optional[Path] = typer.Option(None, "--engine-dir", help="Also TensorRT's memory numbers (plan, weights, activations per network) for this engine directory's plans"),
    precision: str = typer.Option("fp32", "--precision", help="With --engine-dir: the plans of this precision (fp32, fp16, int8 or fp8)"),
):
    """What this machine can run: Python packages, ONNX Runtime providers, TensorRT, CUDA, GPUs."""
    from rich.markup import escape
    from rich.table import Table

    from monkey_trt.enginedir.manifest import check_precision
    from monkey_trt.jobs.doctor import doctor_report

    check_precision(precision)
    if engine_dir is not None and not engine_dir.is_dir():
        raise MonkeyError(f"--engine-dir {engine_dir} is not a folder")
    table = Table("check", "status", "detail")
    for row in doctor_report(engine_dir, precision):
        status = {True: "[green]ok[/]", False: "[red]missing[/]", None: "[yellow]-[/]"}[row.ok]
        table.add_row(row.name, status, escape(row.detail))
    Console().print(table)


@app.command()
def bench(
    preset: Optional[str] = typer.Option(None, "--preset", help="tiny | sd15: write the embedded model and export its engine (cached in --workdir)"),
    engine_dir: Optional[Path] = typer.Option(None, "--engine-dir", help="Engine directory (ort/trt); model source and size default to its manifest"),
    backends: str = typer.Option("published,torch,ort", "--backends", help="Comma list of published, torch, ort, trt"),
    base: Optional[str] = typer.Option(None, help="torch/published: base model (default: preset, manifest, else the hub model)"),
    ip_adapter: Optional[str] = typer.Option(None, "--ip-adapter", help="torch/published: IP-Adapter (default like --base)"),
    image: Optional[Path] = typer.Option(None, "--image", help="Subject (default: the preset's subject, else a grey square)"),
    height: Optional[int] = typer.Option(None, help="Default: the manifest's opt size, 128 (tiny), 256 (sd15), else 512"),
    width: Optional[int] = typer.Option(None),
    runs: int = typer.Option(3, help="Timed runs per backend (and as many plain IP-Adapter runs)"),
    warmup: int = typer.Option(1, help="Untimed runs after the first image"),
    soak: int = typer.Option(0, "--soak", help="N more generations per backend: host/GPU memory drift"),
    device: str = backend_option("device"),
    dtype: str = backend_option("dtype"),
    cuda_graph: bool = backend_option("cuda_graph"),
    ort_cache: bool = typer.Option(True, "--ort-cache/--no-ort-cache", help="ort: cache ORT's optimised graphs in WORKDIR/ort-optimized (cold start)"),
    batch_passes: Optional[bool] = backend_option("batch_passes"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every figure as JSON (schema: monkey_trt/bench/schema.json)"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG chart of per-stage time per backend"),
    workdir: Path = typer.Option(Path.home() / ".cache" / "monkey-trt", "--workdir", help="Cache of --preset models and engines"),
    precision: str = backend_option("precision"),
    threads: int = backend_option("threads"),
    providers: str = backend_option("providers"),
    fp16: bool = backend_option("fp16"),
    tf32: bool = backend_option("tf32"),
    verify: str = backend_option("verify"),
):
    """Per backend: per-stage and end-to-end times, cold start, memory, ratio to `published`, two-pass overhead."""
    from monkey_trt.bench.cli import check_output_path, run_bench
    from monkey_trt.bench.job import BenchSettings
    from monkey_trt.runtime.backend import split_list

    _check_sides(height, width)
    check_output_path(json_out, "--json", "json")
    check_output_path(plot, "--plot", "png")
    names = tuple(b.strip() for b in backends.split(",") if b.strip())
    if preset is not None and engine_dir is not None:
        raise MonkeyError("give --preset or --engine-dir, not both")

    def settings(h: int, w: int) -> BenchSettings:
        return BenchSettings(names, h, w, runs=runs, warmup=warmup, soak=soak, device=device, dtype=dtype, cuda_graph=cuda_graph,
                             ort_cache=ort_cache, batch_passes=batch_passes, precision=precision, threads=threads,
                             workdir=str(workdir), providers=split_list(providers), fp16=fp16, tf32=tf32, verify=verify)

    settings(64, 64)  # every backend's spec checked before any work
    with _quiet_libraries():
        run_bench(preset, engine_dir, names, base, ip_adapter, image, height, width, workdir, json_out, plot, console, settings)


@app.command()
def serve(
    engine_dir: Path = typer.Option(..., "--engine-dir", help="Engine directory from `monkey-trt export`"),
    backend: str = typer.Option("ort", help="ort | trt"),
    providers: str = backend_option("providers"),
    cuda_graph: bool = backend_option("cuda_graph"),
    host: str = typer.Option("127.0.0.1", help="Address to listen on"),
    port: int = typer.Option(8000, help="Port (0: any free port, printed at start)"),
    max_queue: int = typer.Option(8, "--max-queue", help="Requests waiting behind the running one; more get 429"),
    timeout: float = typer.Option(120.0, "--timeout", help="Per-request limit in seconds, queue wait included (504)"),
    max_body_mb: float = typer.Option(20.0, "--max-body-mb", help="Largest request body (413)"),
    subject_cache: int = typer.Option(64, "--subject-cache", help="Subjects whose IP tokens are cached (LRU; 0 = off)"),
    prompt_cache: int = typer.Option(256, "--prompt-cache", help="Prompts whose embeddings are cached (LRU; 0 = off)"),
    warmup: bool = typer.Option(True, "--warmup/--no-warmup", help="One generation before /readyz says ready"),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level"),
    ray: bool = typer.Option(False, "--ray", help="Deploy on Ray Serve (one engine per replica)"),
    replicas: int = typer.Option(1, "--replicas", help="--ray: replicas"),
    gpus_per_replica: float = typer.Option(0.0, "--gpus-per-replica", help="--ray: GPUs per replica"),
    cpus_per_replica: float = typer.Option(1.0, "--cpus-per-replica", help="--ray: CPUs per replica"),
    min_replicas: Optional[int] = typer.Option(None, "--min-replicas", help="--ray: autoscale between --min-replicas and --max-replicas"),
    max_replicas: Optional[int] = typer.Option(None, "--max-replicas", help="--ray: autoscaling upper bound"),
    address: Optional[str] = typer.Option(None, "--address", help="--ray: existing cluster (e.g. auto, ray://head:10001)"),
    precision: str = backend_option("precision"),
    verify: str = backend_option("verify"),
    threads: int = backend_option("threads"),
    fp16: bool = backend_option("fp16"),
    tf32: bool = backend_option("tf32"),
    batch_passes: Optional[bool] = backend_option("batch_passes"),
):
    """Serve MONKEY over HTTP: POST /v1/generate, /healthz, /readyz, /metrics, /docs."""
    from monkey_trt.core.extras import require_extra

    require_extra("serve", "serve")  # one line naming the extra, before anything imports fastapi or prometheus_client
    if ray:
        require_extra("ray", "serve --ray")
    from monkey_trt.runtime.backend import ENGINE_BACKENDS, spec_from_options
    from monkey_trt.serve.service import ServeConfig

    if not 0 <= port <= 65535:
        raise MonkeyError(f"--port must be in 0..65535, got {port}")
    if backend not in ENGINE_BACKENDS:
        raise MonkeyError(f"--backend must be ort or trt, got {backend!r}")
    spec = spec_from_options(backend, dict(providers=providers, cuda_graph=cuda_graph, precision=precision, verify=verify,
                                           threads=threads, fp16=fp16, tf32=tf32, batch_passes=batch_passes))
    config = ServeConfig(
        engine_dir=engine_dir, backend=backend, providers=spec.providers, cuda_graph=spec.cuda_graph, max_queue=max_queue,
        timeout_s=timeout, max_body_mb=max_body_mb, subject_cache=subject_cache, prompt_cache=prompt_cache, warmup=warmup,
        precision=spec.precision, verify=spec.verify, threads=spec.threads, fp16=spec.fp16, tf32=spec.tf32, batch_passes=spec.batch_passes,
    )
    from monkey_trt.enginedir.manifest import load_manifest

    load_manifest(engine_dir, verify=spec.verify)  # a wrong engine directory is one line, before any server starts
    if ray:
        from monkey_trt.serve.ray_app import RayOptions, run_ray

        run_ray(config, RayOptions(replicas, gpus_per_replica, cpus_per_replica, min_replicas, max_replicas), host, port, address)
    else:
        from monkey_trt.serve.run import run_single

        if address is not None or replicas != 1 or gpus_per_replica or min_replicas is not None or max_replicas is not None:
            raise MonkeyError("--replicas, --min/--max-replicas, --gpus-per-replica and --address need --ray")
        with _quiet_libraries():
            run_single(config, host, port, log_level)


@app.command("eval")
def eval_(
    subjects: Path = typer.Option(..., "--subjects", help="Folder of subject images (or of subfolders of them); words from subjects.csv/.json or the names"),
    out: Path = typer.Option(..., "--out", help="Output folder; an interrupted run continues where it stopped"),
    prompts: str = typer.Option("paper", "--prompts", help="paper (the paper's 20 location prompts) or a text file, one per line"),
    methods: str = typer.Option("monkey,ipadapter@1.0", "--methods", help="Comma list of monkey, ipadapter@SCALE"),
    engine_dir: Optional[Path] = typer.Option(None, "--engine-dir", help="Engine directory (ort/trt); also the default size and models"),
    backend: Optional[str] = typer.Option(None, help="torch | ort | trt [default: ort with --engine-dir, else torch]"),
    precision: str = typer.Option("fp32", "--precision", help="Comma list: fp32, fp16, int8, fp8 (as exported); each is compared with fp32"),
    base: Optional[str] = typer.Option(None, help=f"torch backend: base LCM model [default: {DEFAULT_BASE}]"),
    ip_adapter: Optional[str] = typer.Option(None, "--ip-adapter", help=f"torch backend: IP-Adapter [default: {DEFAULT_IP_ADAPTER}]"),
    ip_weight: str = typer.Option(DEFAULT_IP_WEIGHT, "--ip-weight", help="torch backend: weight file under models/"),
    clip: str = typer.Option("openai/clip-vit-base-patch32", "--clip", help="CLIP judge (CLIP-T, CLIP-I): hub id or folder"),
    dino: str = typer.Option("facebook/dino-vits16", "--dino", help="DINO judge: hub id or folder"),
    seeds: str = typer.Option("0", "--seeds", help="Comma list of seeds; each (subject, prompt, seed) has one noise for every method and precision"),
    height: Optional[int] = typer.Option(None, help="Image height [default: the engine's opt size, else 512]"),
    width: Optional[int] = typer.Option(None, help="Image width [default: the engine's opt size, else 512]"),
    device: str = backend_option("device"),
    providers: str = backend_option("providers"),
    threads: int = backend_option("threads"),
    verify: str = backend_option("verify"),
    judge_device: str = typer.Option("auto", "--judge-device", help="Where the judges run: auto (cuda if present) | cpu | cuda"),
    judge_batch: int = typer.Option(32, "--judge-batch", help="Images scored per judge batch"),
):
    """The paper's evaluation: CLIP-T, CLIP-I, DINO per image (+ mask IoU and PSNR vs fp32); summary beside Table 1."""
    from monkey_trt.core.extras import require_extra

    _check_sides(height, width)
    from monkey_trt.core.files import check_target

    check_target(out.absolute(), "-", lambda _p: set())  # a file, or a folder nothing can be written in: before any judge loads
    require_extra("export", "eval (the CLIP and DINO judges)")
    from monkey_trt.eval.command import EvalOptions, result_lines, run_command

    opts = EvalOptions(subjects=subjects, out=out, prompts=prompts, methods=methods, engine_dir=engine_dir, backend=backend,
                       precision=precision, base=base, ip_adapter=ip_adapter, ip_weight=ip_weight, clip=clip, dino=dino,
                       seeds=seeds, height=height, width=width, device=device, providers=providers, threads=threads,
                       verify=verify, judge_device=judge_device, judge_batch=judge_batch)
    with _quiet_libraries():
        result = run_command(opts, console, _warn)
    for line in result_lines(result):
        typer.echo(line)


# -- entry point ------------------------------------------------------------------------------
def _fail(message: str, code: int = 2) -> int:
    """One plain line on stderr (no rich markup: `[gpu]` stays `[gpu]`)."""
    sys.stderr.write(f"error: {' '.join(str(message).split())}\n")
    sys.stderr.flush()
    return code


def _os_error_line(e: OSError) -> str:
    what = e.strerror or str(e) or type(e).__name__
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    return f"{what}: {where}" if where else what


def _usage_error_line(e) -> str:
    """click's message (with its 'Did you mean' hints) plus where to look for help, as one line."""
    ctx = getattr(e, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return f"{e.format_message()}{hint}"


def _click_exceptions():
    """The click exceptions typer raises: typer >= 0.20 vendors click as typer._click."""
    try:
        from typer._click import exceptions
    except ImportError:  # older typer on the real click
        from click import exceptions
    return exceptions


def main(argv: list[str] | None = None) -> int:
    """Console-script entry: every user error is one line on stderr and exit code 2."""
    click = _click_exceptions()
    try:
        app(args=argv, prog_name="monkey-trt", standalone_mode=False)
    except MonkeyError as e:
        return _fail(str(e))
    except click.NoArgsIsHelpError as e:  # bare `monkey-trt` (or a group without a command)
        typer.echo(e.ctx.get_help(), err=True)
        return 2
    except click.UsageError as e:  # bad option values, missing options, unknown commands
        return _fail(_usage_error_line(e))
    except typer.Exit as e:  # --help, --version
        return e.exit_code
    except click.ClickException as e:  # click's file errors etc.
        return _fail(e.format_message())
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("aborted\n")
        return 130
    except OSError as e:  # permissions, a full disk, /proc, a folder where a file was expected ...
        if os.environ.get("MONKEY_TRT_DEBUG"):
            raise
        return _fail(_os_error_line(e))
    except UnicodeError as e:  # text that is not valid UTF-8 (prompts, paths, files)
        if os.environ.get("MONKEY_TRT_DEBUG"):
            raise
        return _fail(f"text is not valid UTF-8 ({type(e).__name__}: {e.reason})")
    except Exception as e:  # unexpected: a bug, reported as such
        if os.environ.get("MONKEY_TRT_DEBUG"):
            raise
        return _fail(f"internal error: {type(e).__name__}: {str(e) and first_line(e)} (set MONKEY_TRT_DEBUG=1 for a traceback)", code=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
