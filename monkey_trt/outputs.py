"""Write one generation's output folder, all or nothing.

    OUT/monkey.png  mask.png (0/255)  overlay.png  result.json
        arrays.npz (--save-arrays: image [H,W,3] f32 in [0,1], mask [H,W] f32 {0,1})
        ipadapter.png  grid.png (--baseline)

Files are written into a temporary sibling folder which then replaces OUT, so an error never
leaves a half-written folder behind. Lean: numpy + PIL.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from monkey_trt import __version__
from monkey_trt.atomic import replace_dir
from monkey_trt.errors import MonkeyError
from monkey_trt.runtime.images import mask_overlay, side_by_side
from monkey_trt.runtime.result import MonkeyOutput, to_uint8

MARKER = "result.json"


def check_out_dir(out: Path) -> None:
    """Refuse before any work: OUT must be new, empty, or an earlier monkey-trt output folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MonkeyError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise MonkeyError(f"--out {out} is a non-empty folder that is not a monkey-trt output; choose another")
    parent = out.absolute().parent
    if not parent.is_dir():
        raise MonkeyError(f"--out {out}: parent folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise MonkeyError(f"--out {out}: cannot write in {parent}")


def _pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(to_uint8(image))


def write_outputs(out: Path, result: MonkeyOutput, subject: Image.Image, record: dict, save_arrays: bool = False) -> Path:
    """Write the folder described above; `record` is merged into result.json."""
    out = Path(out).absolute()
    check_out_dir(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        image = _pil(result.image)
        mask_u8 = (result.mask.mask > 0).astype(np.uint8) * 255  # [H, W]
        image.save(tmp / "monkey.png")
        Image.fromarray(mask_u8, mode="L").save(tmp / "mask.png")
        under = _pil(result.mask_pass_image) if result.mask_pass_image is not None else image
        overlay = mask_overlay(under, result.mask.mask)
        overlay.save(tmp / "overlay.png")
        files = ["monkey.png", "mask.png", "overlay.png"]
        if result.baseline_image is not None:
            baseline = _pil(result.baseline_image)
            baseline.save(tmp / "ipadapter.png")
            side_by_side(
                [subject.resize(image.size, Image.Resampling.BICUBIC), overlay, baseline, image],
                ["subject", "mask", "IP-Adapter", "MONKEY"],
            ).save(tmp / "grid.png")
            files += ["ipadapter.png", "grid.png"]
        if save_arrays:
            arrays = {"image": result.image.astype(np.float32), "mask": result.mask.mask.astype(np.float32)}
            if result.baseline_image is not None:
                arrays["baseline"] = result.baseline_image.astype(np.float32)
            np.savez(tmp / "arrays.npz", **arrays)
            files.append("arrays.npz")
        info = {
            **record,
            "backend": result.backend,
            "mask": {
                "grid": list(result.mask.grid),
                "coverage": result.mask.coverage,
                "degenerate_steps": list(result.mask.degenerate_steps),
            },
            "prompt_truncated": result.prompt_truncated,
            "warnings": list(result.warnings),
            "timings_s": {k: round(v, 6) for k, v in result.timings.items()},
            "files": files + [MARKER],
            "versions": versions(),
        }
        (tmp / MARKER).write_text(json.dumps(info, indent=1))
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out



def versions() -> dict[str, str]:
    """Versions of what produced the result (torch etc. only if already imported)."""
    import sys

    v = {"monkey_trt": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for mod in ("torch", "diffusers", "transformers", "onnxruntime", "tensorrt"):
        if mod in sys.modules:
            v[mod] = getattr(sys.modules[mod], "__version__", "?")
    return v
