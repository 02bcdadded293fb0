"""Export options that would be ignored are refused instead (issue 25, class 8): say what would happen."""

from __future__ import annotations

from pathlib import Path

from monkey_trt.core.errors import MonkeyError


def check_calibration_applies(out: Path, precisions: tuple[str, ...], given: dict[str, object], quant_base: str = "auto") -> None:
    """Adding precisions to `out` (same model and profile): the --calib-* options in `given` (flag -> value, None =
    not given) calibrate only 8-bit precisions the directory does not have yet; when every 8-bit precision asked
    is there already (a missing GPU graph is converted from the CPU one, not calibrated) they would change nothing,
    so they are refused with what to do instead."""
    from monkey_trt.enginedir.load import read_manifest
    from monkey_trt.enginedir.manifest import QUANTIZED_PRECISIONS

    flags = [f for f, v in given.items() if v is not None]
    asked = [p for p in precisions if p in QUANTIZED_PRECISIONS]
    if not flags or not asked:
        return
    from monkey_trt.export.gpu_quant import plan_bases

    manifest = read_manifest(Path(out))
    have = set(manifest.precisions)
    plans = plan_bases(manifest, asked, quant_base, "fp16" in precisions or "fp16" in have)
    if not any(b.calibrate for b in plans):  # a GPU graph is converted from the calibrated CPU graph: no calibration
        names = ", ".join(asked)
        raise MonkeyError(f"{out} already has {names}: {', '.join(flags)} would change nothing (the graph is kept as it "
                          f"was calibrated); to re-calibrate, add --force (re-exports every graph of {out}), or drop "
                          f"{', '.join(flags)}")
