"""Commands that make things: the embedded model (`tiny-model`), engine directories (`export`), TensorRT plans
(`build`), and `doctor` (what this machine can run)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from monkey_trt.cli.options import console, quiet_libraries
from monkey_trt.commands.progress import status
from monkey_trt.core.config import DEFAULT_BASE, DEFAULT_IP_ADAPTER, DEFAULT_IP_WEIGHT, DEFAULT_MASK_LAYER
from monkey_trt.core.errors import MonkeyError
from monkey_trt.enginedir.networks import MAX_SUBJECTS_DEFAULT, MAX_SUBJECTS_LIMIT, check_max_subjects, profile_from_options
from monkey_trt.export.gpu_quant import DEFAULT_QUANT_BASE


def tiny_model(
    out_dir: Path = typer.Argument(..., help="Folder to write base/ and ip-adapter/ into"),
    preset: str = typer.Option("tiny", help="tiny (CPU tests/demo) or sd15 (real sizes, random weights)"),
):
    """Write the embedded model (random weights, hub layouts) for offline tests, demos and benchmarks."""
    from monkey_trt.core.extras import require_extra
    from monkey_trt.core.output_folders import check_target, record_files
    from monkey_trt.embedded.presets import PRESETS

    if preset not in PRESETS:
        raise MonkeyError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    check_target(out_dir.absolute(), "tiny-model.json", record_files(), ["subject.png", "tiny-model.json"])
    require_extra("export", "tiny-model")
    from monkey_trt.embedded.tiny import write_tiny_model

    with quiet_libraries(), status(console, f"writing the {preset} model to {out_dir}"):
        paths = write_tiny_model(out_dir, preset=preset)
    typer.echo(f"base:       {paths.base}\nip-adapter: {paths.ip_adapter}\nsubject:    {paths.subject}")


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
    max_subjects: int = typer.Option(MAX_SUBJECTS_DEFAULT, "--max-subjects", help=f"Most subject images per request, 1..{MAX_SUBJECTS_LIMIT} (the UNet takes one more: the background image)"),
    fold: bool = typer.Option(True, "--fold/--no-fold", help="Polygraphy constant folding"),
    force: bool = typer.Option(False, "--force", help="Replace an earlier engine directory's own files (other files are kept)"),
    precision: str = typer.Option("fp32", "--precision", help="Comma list of fp32, fp16, int8, fp8 (8-bit: the UNet, calibrated); added to an existing directory"),
    calib_prompts: Optional[Path] = typer.Option(None, "--calib-prompts", help="int8/fp8: calibration prompts, one per line [default: the paper's 20 prompts]"),
    calib_images: Optional[Path] = typer.Option(None, "--calib-images", help="int8/fp8: folder of subject images to calibrate on [default: the embedded subject]"),
    calib_size: Optional[int] = typer.Option(None, "--calib-size", help="int8/fp8: calibration cases (prompt, subject, seed), 11 UNet calls each [default: 8]"),
    quant_base: str = typer.Option(DEFAULT_QUANT_BASE, "--quant-base", help="int8/fp8: fp32 = the CPU graph (ORT CPU, OpenVINO), fp16 = the GPU graph (TensorRT, ORT CUDA/TensorRT EP), both; auto: the CPU graph, and the GPU graph too when the directory has fp16 graphs, a GPU is visible or for fp8 (docs/int8.md)"),
    quantize_image_encoder: bool = typer.Option(False, "--quantize-image-encoder", help="int8/fp8: quantize the image encoder too (opt-in: it feeds the mask, see docs/int8.md)"),
    calib_height: Optional[int] = typer.Option(None, "--calib-height", help="int8/fp8: calibrate at this height (inside the profile) [default: the opt height]"),
    calib_width: Optional[int] = typer.Option(None, "--calib-width", help="int8/fp8: calibrate at this width (inside the profile) [default: the opt width]"),
):
    """Export text encoder, image encoder (+IP projection), UNet (IP mask/scale in, map out), VAE decoder to ONNX."""
    from monkey_trt.core.extras import require_extra
    from monkey_trt.enginedir.manifest import parse_precisions
    from monkey_trt.commands.progress import steps

    if not 7 <= opset <= 21:
        raise MonkeyError(f"--opset must be in 7..21, got {opset}")
    precisions = parse_precisions(precision)
    profile = profile_from_options(height, width, min_size, max_size, batch)
    check_max_subjects(max_subjects)
    require_extra("export", "export")
    from monkey_trt.export.calibration import (
        calibration_from_options,  # int8/fp8: checked before any work
    )

    calibration = calibration_from_options(precisions, profile, calib_prompts, calib_images, calib_size, calib_height, calib_width)
    from monkey_trt.export.gpu_quant import check_quant_base

    check_quant_base(quant_base, precisions)
    from monkey_trt.export.quant_groups import OPT_IN_FLAG
    from monkey_trt.export.quantize_nets import check_opt_in

    check_opt_in(precisions, quantize_image_encoder)
    from monkey_trt.export.onnx_export import (
        ExportOptions,
        add_precisions,
        check_export_out,
        existing_export_matches,
        export_engine_dir,
    )
    from monkey_trt.core.config import ModelSource

    opts = ExportOptions(ModelSource(base, ip_adapter, ip_weight), out, profile, mask_layer=mask_layer, opset=opset,
                         fold_constants=fold, force=force, precisions=precisions, calibration=calibration,
                         quant_base=quant_base, quantize_image_encoder=quantize_image_encoder, max_subjects=max_subjects)
    add_only = not force and existing_export_matches(opts)  # same model and profile: add the missing precisions only
    if add_only:  # --calib-* that would calibrate nothing are refused, not ignored
        from monkey_trt.export.conflicts import check_calibration_applies

        check_calibration_applies(out, precisions, {"--calib-prompts": calib_prompts, "--calib-images": calib_images,
                                                    "--calib-size": calib_size, "--calib-height": calib_height,
                                                    "--calib-width": calib_width, OPT_IN_FLAG: quantize_image_encoder or None}, quant_base)
    if not add_only:
        check_export_out(out, force)
    with quiet_libraries(), steps(console, "export") as step:
        if add_only:
            added = add_precisions(out, precisions, progress=step, calibration=calibration, quant_base=quant_base,
                                   image_encoder=quantize_image_encoder)
            result, note = out, (f"added {', '.join(added)}" if added else f"already has {', '.join(precisions)}")
        else:
            result, note = export_engine_dir(opts, progress=step), ", ".join(("fp32", *[p for p in precisions if p != "fp32"]))
    typer.echo(f"engine directory: {result} ({note})")


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
    from monkey_trt.enginedir.load import load_manifest
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


def doctor(
    engine_dir: Optional[Path] = typer.Option(None, "--engine-dir", help="Also TensorRT's memory numbers (plan, weights, activations per network) for this engine directory's plans"),
    precision: str = typer.Option("fp32", "--precision", help="With --engine-dir: the plans of this precision (fp32, fp16, int8 or fp8)"),
):
    """What this machine can run: Python packages, ONNX Runtime providers, TensorRT, CUDA, GPUs."""
    from rich.markup import escape
    from rich.table import Table

    from monkey_trt.enginedir.manifest import check_precision
    from monkey_trt.commands.doctor import doctor_report

    check_precision(precision)
    if engine_dir is not None and not engine_dir.is_dir():
        raise MonkeyError(f"--engine-dir {engine_dir} is not a folder")
    table = Table("check", "status", "detail")
    for row in doctor_report(engine_dir, precision):
        status = {True: "[green]ok[/]", False: "[red]missing[/]", None: "[yellow]-[/]"}[row.ok]
        table.add_row(row.name, status, escape(row.detail))
    Console().print(table)
