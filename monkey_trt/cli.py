"""`monkey-trt` command line (typer + rich).

Every user error is a MonkeyError: printed as one line `error: ...`, exit code 2, no traceback,
no half-written output. Set MONKEY_TRT_DEBUG=1 to see tracebacks of unexpected failures.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from monkey_trt.config import DEFAULT_BASE, DEFAULT_IP_ADAPTER, DEFAULT_IP_WEIGHT, DEFAULT_MASK_LAYER, MonkeyConfig, Request
from monkey_trt.errors import MonkeyError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="MONKEY (masked IP-Adapter personalization, SD1.5/LCM) inference engine.")
console = Console(stderr=True)

DEMO_PROMPT = "a toy on the beach"


# -- shared option parsing -------------------------------------------------------------------
def _int_list(text: str, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.replace(" ", "").split(",") if x != "")
    except ValueError:
        raise MonkeyError(f"--{name} must be comma-separated integers, got {text!r}") from None


def _build_config(steps_mask_pass, mask_steps, mask_layer, mask_token, threshold, scale_mask_pass,
                  steps_final, masked_steps, scale_final, guidance_scale) -> MonkeyConfig:
    return MonkeyConfig(
        steps_mask_pass=steps_mask_pass, mask_steps=_int_list(mask_steps, "mask-steps"), mask_layer=mask_layer,
        mask_token=mask_token, threshold=threshold, scale_mask_pass=scale_mask_pass, steps_final=steps_final,
        masked_steps=_int_list(masked_steps, "masked-steps"), scale_final=scale_final, guidance_scale=guidance_scale,
    )


@contextlib.contextmanager
def _quiet_libraries():
    """Library chatter (deprecations, 'truncated' notices) is replaced by our own one-line warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        yield


def _warn(msg: str) -> None:
    console.print(f"[yellow]warning:[/] {msg}", highlight=False)


# -- commands -------------------------------------------------------------------------------
@app.command("tiny-model")
def tiny_model(
    out_dir: Path = typer.Argument(..., help="Folder to write base/ and ip-adapter/ into"),
    preset: str = typer.Option("tiny", help="tiny (CPU tests/demo) or sd15 (real sizes, random weights)"),
):
    """Write the embedded model (random weights, hub layouts) for offline tests, demos and benchmarks."""
    from monkey_trt.tiny_model import write_tiny_model

    if preset not in ("tiny", "sd15"):
        raise MonkeyError(f"--preset must be tiny or sd15, got {preset!r}")
    with _quiet_libraries(), console.status(f"writing the {preset} model to {out_dir}"):
        paths = write_tiny_model(out_dir, preset=preset)
    typer.echo(f"base:       {paths.base}\nip-adapter: {paths.ip_adapter}\nsubject:    {paths.subject}")


@app.command()
def generate(
    image: Path = typer.Option(..., "--image", help="Subject image (any PIL format)"),
    prompt: str = typer.Option(..., "--prompt", help="Text prompt; it owns the background"),
    out: Path = typer.Option(..., "--out", help="Output folder (created or replaced atomically)"),
    base: str = typer.Option(DEFAULT_BASE, help="Base LCM model: hub id or diffusers folder"),
    ip_adapter: str = typer.Option(DEFAULT_IP_ADAPTER, "--ip-adapter", help="IP-Adapter: hub id or folder (h94 layout)"),
    ip_weight: str = typer.Option(DEFAULT_IP_WEIGHT, "--ip-weight", help="Weight file under models/ (.safetensors or .bin)"),
    backend: str = typer.Option("torch", help="torch (PyTorch reference) | ort | trt"),
    engine_dir: Optional[Path] = typer.Option(None, "--engine-dir", help="Engine directory (ort/trt backends)"),
    device: str = typer.Option("cpu", help="torch backend device: cpu or cuda"),
    providers: str = typer.Option("", "--providers", help="ort backend: cpu, cuda, tensorrt (comma list; default: cuda if installed, else cpu)"),
    fp16: bool = typer.Option(False, "--fp16", help="ort TensorRT EP: fp16 kernels (changes the math; opt-in)"),
    cuda_graph: bool = typer.Option(False, "--cuda-graph", help="torch (cuda), ort CUDA/TensorRT EP, trt: replay UNet steps as CUDA graphs"),
    dtype: str = typer.Option("fp32", "--dtype", help="torch backend: fp32 | fp16 (fp16 changes the math; opt-in)"),
    batch_passes: Optional[bool] = typer.Option(None, "--batch-passes/--no-batch-passes",
                                                help="Run the mask-independent leading steps of both passes as one batch-2 UNet call (exact; default: on for GPUs, off on CPU)"),
    seed: int = typer.Option(0, help="Seed (diffusers LCM semantics: torch CPU generator)"),
    height: int = typer.Option(512, help="Image height, multiple of 8"),
    width: int = typer.Option(512, help="Image width, multiple of 8"),
    noise: Optional[Path] = typer.Option(None, "--noise", help=".npz with latents [1,4,h,w] and step_noise [K,1,4,h,w]"),
    save_arrays: bool = typer.Option(False, "--save-arrays", help="Also write arrays.npz (float image and mask)"),
    baseline: bool = typer.Option(False, "--baseline", help="Also run plain IP-Adapter: ipadapter.png, grid.png"),
    baseline_scale: Optional[float] = typer.Option(None, "--baseline-scale", help="IP scale of the baseline (default: scale_final)"),
    steps_mask_pass: int = typer.Option(4, "--steps-mask-pass"),
    mask_steps: str = typer.Option("1,2", "--mask-steps", help="0-based steps of pass 1 whose maps are combined"),
    mask_layer: str = typer.Option(DEFAULT_MASK_LAYER, "--mask-layer"),
    mask_token: int = typer.Option(1, "--mask-token"),
    threshold: float = typer.Option(0.5, "--threshold"),
    scale_mask_pass: float = typer.Option(1.0, "--scale-mask-pass"),
    steps_final: int = typer.Option(8, "--steps-final"),
    masked_steps: str = typer.Option("2,3,4,5", "--masked-steps", help="0-based steps of pass 2 with IP on (masked)"),
    scale_final: float = typer.Option(1.0, "--scale-final"),
    guidance_scale: float = typer.Option(8.5, "--guidance-scale"),
):
    """Run MONKEY once: pass 1 -> subject mask -> pass 2; write monkey.png, mask.png, overlay.png, result.json."""
    from monkey_trt.generate import GenerateJob, run_generate

    config = _build_config(steps_mask_pass, mask_steps, mask_layer, mask_token, threshold, scale_mask_pass,
                           steps_final, masked_steps, scale_final, guidance_scale)
    request = Request(prompt=prompt, height=height, width=width, seed=seed, config=config)
    job = GenerateJob(
        request=request, image=image, out=out, base=base, ip_adapter=ip_adapter, ip_weight=ip_weight,
        backend=backend, engine_dir=engine_dir, device=device, noise=noise, save_arrays=save_arrays,
        baseline_scale=(baseline_scale if baseline_scale is not None else scale_final) if baseline else None,
        providers=tuple(p.strip() for p in providers.split(",") if p.strip()), fp16=fp16, cuda_graph=cuda_graph,
        batch_passes=batch_passes, dtype=dtype,
    )
    with _quiet_libraries():
        result_dir, result = run_generate(job, console)
    for w in result.warnings:
        _warn(w)
    typer.echo(f"wrote {result_dir}")


@app.command()
def demo(
    out: Path = typer.Option(Path("monkey-demo"), "--out", help="Output folder"),
    workdir: Path = typer.Option(Path.home() / ".cache" / "monkey-trt", "--workdir", help="Where the tiny model and its engine are cached"),
    prompt: str = typer.Option(DEMO_PROMPT, "--prompt"),
    size: int = typer.Option(128, "--size", help="Image side (the tiny model is fast at 64..256)"),
    seed: int = typer.Option(0, "--seed"),
    backend: str = typer.Option("ort", help="ort (exported once, cached) | torch (the reference)"),
):
    """The main job end to end on the embedded tiny model, offline: export once (cached), run on ORT."""
    from monkey_trt.generate import GenerateJob, run_generate

    from monkey_trt.presets import DEMO_PROFILE, ensure_preset

    if backend not in ("ort", "torch"):
        raise MonkeyError(f"demo --backend must be ort or torch, got {backend!r}")
    lo, hi = DEMO_PROFILE
    if not lo <= size <= hi or size % 8:
        raise MonkeyError(f"demo --size must be a multiple of 8 in {lo}..{hi}, got {size}")
    request = Request(prompt=prompt, height=size, width=size, seed=seed)
    with _quiet_libraries():
        with console.status("preparing the embedded tiny model") as status:
            model_dir, engine_dir = ensure_preset("tiny", workdir, size, size, engine=backend != "torch", status=status.update)
        job = GenerateJob(
            request=request, image=model_dir / "subject.png", out=out, base=str(model_dir / "base"),
            ip_adapter=str(model_dir / "ip-adapter"), backend=backend, baseline_scale=request.config.scale_final,
            engine_dir=engine_dir if backend != "torch" else None,
        )
        result_dir, result = run_generate(job, console)
    for w in result.warnings:
        _warn(w)
    total = sum(v for k, v in result.timings.items() if k not in ("baseline_pass", "decode_baseline", "decode_mask_pass"))
    typer.echo(f"demo on {result.backend}: MONKEY in {total:.2f}s, mask covers {100 * result.mask.coverage:.0f}% of the image")
    typer.echo(f"outputs in {result_dir}: monkey.png, mask.png, overlay.png, ipadapter.png, grid.png, result.json")


def _size(text: str, name: str) -> tuple[int, int]:
    """'HxW' (or a single side) -> (height, width)."""
    try:
        parts = [int(x) for x in text.lower().split("x")]
    except ValueError:
        raise MonkeyError(f"--{name} must look like 512x512, got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise MonkeyError(f"--{name} must look like 512x512, got {text!r}")
    return parts[0], parts[1]


def _profile(height: int, width: int, min_size: Optional[str], max_size: Optional[str], batch: int):
    from monkey_trt.engine.networks import Profile, ShapeRange

    lo = _size(min_size, "min") if min_size else (height, width)
    hi = _size(max_size, "max") if max_size else (height, width)
    for name, v in (("height", height), ("width", width), ("min", lo[0]), ("min", lo[1]), ("max", hi[0]), ("max", hi[1])):
        if v <= 0 or v % 8:
            raise MonkeyError(f"--{name} sizes must be positive multiples of 8, got {v}")
    if not (lo[0] <= height <= hi[0] and lo[1] <= width <= hi[1]):
        raise MonkeyError(f"need --min <= {height}x{width} <= --max, got {lo[0]}x{lo[1]} .. {hi[0]}x{hi[1]}")
    if not 1 <= batch <= 64:
        raise MonkeyError(f"--batch must be in 1..64, got {batch}")
    return Profile(ShapeRange(1, 1, batch), ShapeRange(lo[0], height, hi[0]), ShapeRange(lo[1], width, hi[1]))


@app.command()
def export(
    out: Path = typer.Option(..., "--out", help="Engine directory to write"),
    base: str = typer.Option(DEFAULT_BASE, help="Base LCM model: hub id or diffusers folder"),
    ip_adapter: str = typer.Option(DEFAULT_IP_ADAPTER, "--ip-adapter", help="IP-Adapter: hub id or folder"),
    ip_weight: str = typer.Option(DEFAULT_IP_WEIGHT, "--ip-weight"),
    height: int = typer.Option(512, help="Optimal (profile opt) height"),
    width: int = typer.Option(512, help="Optimal (profile opt) width"),
    min_size: Optional[str] = typer.Option(None, "--min", help="Smallest HxW the engine accepts (default: the opt size)"),
    max_size: Optional[str] = typer.Option(None, "--max", help="Largest HxW the engine accepts (default: the opt size)"),
    batch: int = typer.Option(1, "--batch", help="Largest batch the engines accept"),
    opset: int = typer.Option(17, "--opset"),
    mask_layer: str = typer.Option(DEFAULT_MASK_LAYER, "--mask-layer", help="Layer whose IP attention map is an output"),
    fold: bool = typer.Option(True, "--fold/--no-fold", help="Polygraphy constant folding"),
    force: bool = typer.Option(False, "--force", help="Replace an existing engine directory"),
):
    """Export text encoder, image encoder (+IP projection), UNet (IP mask/scale in, map out), VAE decoder to ONNX."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from monkey_trt.export.onnx_export import ExportOptions, export_engine_dir
    from monkey_trt.reference.loading import ModelSource

    if not 7 <= opset <= 21:
        raise MonkeyError(f"--opset must be in 7..21, got {opset}")
    opts = ExportOptions(ModelSource(base, ip_adapter, ip_weight), out, _profile(height, width, min_size, max_size, batch),
                         mask_layer=mask_layer, opset=opset, fold_constants=fold, force=force)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with _quiet_libraries(), Progress(*columns, console=console) as bar:
        task = bar.add_task("export", total=None)
        result = export_engine_dir(opts, progress=lambda msg, done, total: bar.update(task, description=msg, completed=done, total=total))
        bar.update(task, description="done", completed=bar.tasks[0].total)
    typer.echo(f"engine directory: {result}")


@app.command()
def build(
    engine_dir: Path = typer.Option(..., "--engine-dir", help="Engine directory from `monkey-trt export`"),
    fp16: bool = typer.Option(True, "--fp16/--fp32", help="fp16 kernels (changes the math within the stated PSNR floor)"),
    static: bool = typer.Option(False, "--static", help="Build for the opt shape only (fastest)"),
    workspace_gib: float = typer.Option(8.0, "--workspace-gib"),
    opt_level: int = typer.Option(3, "--opt-level", help="TensorRT builder optimisation level 0..5"),
    force: bool = typer.Option(False, "--force", help="Rebuild even if a plan for this key exists"),
):
    """Build TensorRT engines (profiles, timing cache, versioned cache key) for an engine directory."""
    from monkey_trt.engine.trt import BuildConfig, build_engine_dir
    from monkey_trt.runtime.manifest import load_manifest

    manifest = load_manifest(engine_dir)
    cfg = BuildConfig(fp16=fp16, workspace_gib=workspace_gib, builder_optimization_level=opt_level,
                      profile=manifest.profile, static_shapes=static)
    with console.status("building TensorRT engines (minutes for SD1.5)") as status:
        plans = build_engine_dir(engine_dir, manifest, cfg, force=force, progress=lambda net, msg: status.update(f"{net}: {msg}"))
    typer.echo(f"TensorRT plans: {plans}")


@app.command()
def doctor():
    """What this machine can run: Python packages, ONNX Runtime providers, TensorRT, CUDA, GPUs."""
    from rich.markup import escape
    from rich.table import Table

    from monkey_trt.doctor import doctor_report

    table = Table("check", "status", "detail")
    for row in doctor_report():
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
    device: str = typer.Option("cpu", help="torch/published backends: cpu | cuda"),
    dtype: str = typer.Option("fp32", help="torch/published backends: fp32 | fp16"),
    cuda_graph: bool = typer.Option(False, "--cuda-graph", help="torch backend on cuda: CUDA-graph replay of UNet calls"),
    ort_cache: bool = typer.Option(True, "--ort-cache/--no-ort-cache", help="ort: cache ORT's optimised graphs in WORKDIR/ort-optimized (cold start)"),
    batch_passes: Optional[bool] = typer.Option(None, "--batch-passes/--no-batch-passes", help="Exact pass batching (default: per backend)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every figure as JSON (schema: monkey_trt/bench_schema.json)"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG chart of per-stage time per backend"),
    workdir: Path = typer.Option(Path.home() / ".cache" / "monkey-trt", "--workdir", help="Cache of --preset models and engines"),
):
    """Per backend: per-stage and end-to-end times, cold start, memory, ratio to `published`, two-pass overhead."""
    from monkey_trt.bench import BenchSettings
    from monkey_trt.bench_cli import check_output_path, run_bench

    check_output_path(json_out, "--json", "json")
    check_output_path(plot, "--plot", "png")
    names = tuple(b.strip() for b in backends.split(",") if b.strip())
    if preset is not None and engine_dir is not None:
        raise MonkeyError("give --preset or --engine-dir, not both")
    with _quiet_libraries():
        run_bench(preset, engine_dir, names, base, ip_adapter, image, height, width, workdir, json_out, plot, console,
                  lambda h, w: BenchSettings(names, h, w, runs=runs, warmup=warmup, soak=soak, device=device, dtype=dtype,
                                             cuda_graph=cuda_graph, ort_cache=ort_cache, batch_passes=batch_passes))


# -- entry point ------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Console-script entry: MonkeyError -> one line on stderr, exit 2."""
    try:
        app(args=argv, standalone_mode=False)
    except MonkeyError as e:
        console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        return 2
    except (typer.Abort, KeyboardInterrupt):
        console.print("[red]aborted[/]")
        return 130
    except Exception as e:  # click usage errors and unexpected failures
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return e.exit_code
        if isinstance(e, click.exceptions.Exit):
            return e.exit_code
        if os.environ.get("MONKEY_TRT_DEBUG"):
            raise
        console.print(f"[red]internal error:[/] {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                      "(set MONKEY_TRT_DEBUG=1 for a traceback)", highlight=False, soft_wrap=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
