"""Embedded-model presets, written and exported once into a cache folder (`demo`, `bench --preset`).

    model_dir, engine_dir = ensure_preset("tiny", workdir, 128, 128)

`tiny` serves 64..256 px (one engine, dynamic sides); `sd15` (real SD1.5 sizes, random weights,
~6 GB on disk, minutes to export) is exported for the requested size only. Both accept UNet batch 1..2
(exact pass batching). Model and engine are written through core.output_folders.OutputStage (staged, then
committed), so an interrupted run leaves no half-written cache; nothing outside `workdir/<preset>-*`
is touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from monkey_trt.core.errors import MonkeyError
from monkey_trt.core.extras import require_extra
from monkey_trt.embedded.presets import PRESETS

DEMO_PROFILE = (64, 256)  # the cached tiny engine serves square and non-square sizes in this range
Status = Callable[[str], None]


def preset_dirs(preset: str, workdir: Path, height: int, width: int) -> tuple[Path, Path]:
    """(model_dir, engine_dir) of a preset in `workdir` (the sd15 engine is per size)."""
    if preset not in PRESETS:
        raise MonkeyError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    engine = f"{preset}-engine" if preset == "tiny" else f"{preset}-engine-{height}x{width}"
    return workdir / f"{preset}-model", workdir / engine


def check_preset_size(preset: str, height: int, width: int) -> None:
    lo, hi = DEMO_PROFILE if preset == "tiny" else (64, 2048)
    for name, v in (("height", height), ("width", width)):
        if not lo <= v <= hi or v % 8:
            raise MonkeyError(f"--{name} of the {preset} preset must be a multiple of 8 in {lo}..{hi}, got {v}")


def ensure_preset(preset: str, workdir: Path, height: int, width: int, engine: bool = True,
                  status: Status = lambda msg: None) -> tuple[Path, Path]:
    """Write the preset's model and export its engine into `workdir` unless a usable copy is cached."""
    check_preset_size(preset, height, width)
    model_dir, engine_dir = preset_dirs(preset, workdir, height, width)
    if not model_ready(model_dir):
        require_extra("export", f"the first run of the {preset} preset (writing and exporting its model)")
        from monkey_trt.embedded.tiny import write_tiny_model

        status(f"writing the embedded {preset} model to {model_dir} (once)")
        write_tiny_model(model_dir, preset=preset)  # atomic itself (core.output_folders.OutputStage)
    if engine and not engine_dir_usable(engine_dir, height, width):
        require_extra("export", f"the first run of the {preset} preset (writing and exporting its model)")
        status(f"exporting the {preset} model to ONNX (once{', minutes' if preset == 'sd15' else ''})")
        export_preset_engine(preset, model_dir, engine_dir, height, width, status)
    return model_dir, engine_dir


def model_ready(model_dir: Path) -> bool:
    """Every file the model's record lists is there (write_tiny_model commits atomically)."""
    from monkey_trt.core.output_folders import record_files
    from monkey_trt.embedded.tiny import TINY_MODEL_RECORD

    names = record_files()(model_dir / TINY_MODEL_RECORD)
    return bool(names) and all((model_dir / n).is_file() for n in names)


def engine_dir_usable(engine_dir: Path, height: int, width: int) -> bool:
    """The cached engine loads with the checks the run uses and serves this size."""
    from monkey_trt.enginedir.load import load_manifest

    try:
        return load_manifest(engine_dir).profile.check(1, height, width) is None
    except MonkeyError:
        return False


def export_preset_engine(preset: str, model_dir: Path, engine_dir: Path, height: int, width: int,
                         status: Status = lambda msg: None) -> None:
    from monkey_trt.enginedir.networks import Profile, ShapeRange
    from monkey_trt.export.onnx_export import ExportOptions, export_engine_dir
    from monkey_trt.core.config import ModelSource

    if preset == "tiny":
        lo, hi = DEMO_PROFILE
        side = ShapeRange(lo, 128, hi)
        profile = Profile(ShapeRange(1, 1, 2), side, side)
    else:
        profile = Profile(ShapeRange(1, 1, 2), ShapeRange(height, height, height), ShapeRange(width, width, width))
    opts = ExportOptions(ModelSource(str(model_dir / "base"), str(model_dir / "ip-adapter")), engine_dir, profile,
                         fold_constants=preset == "tiny", force=True)
    export_engine_dir(opts, progress=lambda msg, done, total: status(f"export {done + 1}/{total}: {msg}"))


def ensure_precision(engine_dir: Path, precision: str, console) -> None:
    """A --preset engine gets the asked precision exported once (int8/fp8 calibrated with the built-in set)."""
    from monkey_trt.enginedir.load import read_manifest

    if precision in read_manifest(engine_dir).precisions:
        return
    from monkey_trt.export.onnx_export import add_precisions

    with console.status(f"adding {precision} to {engine_dir} (once)") as status:
        add_precisions(engine_dir, (precision,), progress=lambda msg, done, total: status.update(f"{precision}: {msg}"))
