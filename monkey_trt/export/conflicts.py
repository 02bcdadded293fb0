"""Export options that would be ignored are refused instead (issue 25, class 8): say what would happen."""

from __future__ import annotations

from pathlib import Path

from monkey_trt.core.errors import MonkeyError


def check_calibration_applies(out: Path, precisions: tuple[str, ...], given: dict[str, object]) -> None:
    """Adding precisions to `out` (same model and profile): the --calib-* options in `given` (flag -> value, None =
    not given) calibrate only 8-bit precisions the directory does not have yet; when every 8-bit precision asked
    is there already they would change nothing, so they are refused with what to do instead."""
    from monkey_trt.enginedir.load import read_manifest
    from monkey_trt.enginedir.manifest import QUANTIZED_PRECISIONS

    flags = [f for f, v in given.items() if v is not None]
    asked = [p for p in precisions if p in QUANTIZED_PRECISIONS]
    if not flags or not asked:
        return
    have = set(read_manifest(Path(out)).precisions)
    if all(p in have for p in asked):
        names = ", ".join(asked)
        raise MonkeyError(f"{out} already has {names}: {', '.join(flags)} would change nothing (the graph is kept as it "
                          f"was calibrated); to re-calibrate, add --force (re-exports every graph of {out}), or drop "
                          f"{', '.join(flags)}")
