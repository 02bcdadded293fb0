"""Write one generation's output folder, all or nothing.

    OUT/monkey.png  mask.png (0/255)  overlay.png  result.json
        mask_1.png .. mask_S.png, overlay_1.png .. overlay_S.png (S > 1 subjects: mask.png is their union,
            overlay.png shows each subject in its own colour)
        background_mask.png (with a background image: where it acts, 1 - the union)
        arrays.npz (--save-arrays: image [H,W,3] f32 in [0,1], mask [H,W] f32 {0,1}; S > 1: masks [S,H,W];
            background_mask [H,W])
        ipadapter.png  grid.png (--baseline)

Written through core.output_folders.OutputStage: staged next to OUT, then committed; an error never leaves a
half-written folder, and a re-run replaces only the files result.json recorded (anything else in
OUT is kept). Lean: numpy + PIL.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from monkey_trt.core import __version__
from monkey_trt.core.errors import MonkeyError
from monkey_trt.core.output_folders import WRITTEN_BY, OutputStage, check_target, file_digests, record_files
from monkey_trt.runtime.images import mask_overlay, side_by_side, to_uint8

if TYPE_CHECKING:  # the caller's type only: result.py imports this module
    from monkey_trt.runtime.result import MonkeyOutput

MARKER = "result.json"


# each subject's colour on overlay.png (S > 1; the first is the one-subject overlay's), repeated past the last
SUBJECT_COLOURS = ((255, 40, 40), (40, 110, 255), (30, 190, 60), (245, 190, 20), (190, 50, 220), (20, 200, 210))


def _count(subjects: int) -> int:
    if isinstance(subjects, bool) or not isinstance(subjects, int) or subjects < 1:
        raise MonkeyError(f"subjects must be a positive integer, got {subjects!r}")
    return subjects


def output_names(baseline: bool = False, save_arrays: bool = False, subjects: int = 1, background: bool = False) -> list[str]:
    """The files a generation writes (result.json, the record, last): S = 1 without a background, today's."""
    names = ["monkey.png", "mask.png", "overlay.png"]
    if _count(subjects) > 1:
        names += [f"mask_{k}.png" for k in range(1, subjects + 1)] + [f"overlay_{k}.png" for k in range(1, subjects + 1)]
    names += ["background_mask.png"] if background else []
    names += ["ipadapter.png", "grid.png"] if baseline else []
    names += ["arrays.npz"] if save_arrays else []
    return names + [MARKER]


def request_record(request, *, seed: int | None, baseline_scale: float | None, batched_steps: int, models: dict,
                   subject: str | None = None, noise_file: dict | None = None) -> dict:
    """result.json's fields about what was asked and what ran (the same for `generate --out` and
    `MonkeyOutput.save()`): prompt, seed (None: an explicit noise file), size, config, models ..."""
    return {
        "prompt": request.prompt,
        "seed": seed,
        "noise_file": noise_file,
        "height": request.height,
        "width": request.width,
        "config": request.config.to_dict(),
        "batched_steps": batched_steps,
        "baseline_scale": baseline_scale,
        "subject": subject,
        "models": models,
    }


def check_out_dir(out: Path, baseline: bool = False, save_arrays: bool = False, subjects: int = 1,
                  background: bool = False) -> None:
    """Refuse before any work: OUT is a file, cannot be created, or holds a user's file of an output's name."""
    check_target(Path(out).absolute(), MARKER, record_files(), output_names(baseline, save_arrays, subjects, background))
    check_creatable(Path(out).absolute())


def check_creatable(target: Path) -> None:
    """A folder that does not exist yet can be made where it goes (permissions pass on /proc, creation fails): made
    and removed once in its nearest existing folder, so `--out /proc/x` is refused before minutes of work."""
    if target.exists():
        return
    anc = target.parent
    while not anc.exists():
        anc = anc.parent
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".monkey-trt-probe-", dir=anc))  # ours: made and removed here
    except OSError as e:
        raise MonkeyError(f"cannot create {target}: {e.strerror or e} (in {anc})") from None


def _pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(to_uint8(image))


def output_files(result: MonkeyOutput, subject, save_arrays: bool = False) -> list[str]:
    """The files `write_outputs` writes for `result` (grid.png needs the subject image(s))."""
    names = output_names(result.baseline_image is not None, save_arrays, result.subjects, result.background_mask is not None)
    return [n for n in names if subject is not None or n != "grid.png"]


def subjects_overlay(image: Image.Image, masks: list[np.ndarray]) -> Image.Image:
    """`image` with each subject's mask [H, W] tinted in its own colour (SUBJECT_COLOURS; final masks never overlap)."""
    for k, m in enumerate(masks):
        image = mask_overlay(image, m, color=SUBJECT_COLOURS[k % len(SUBJECT_COLOURS)])
    return image


def _image_of(record: dict, key: str, index: int, count: int) -> str | None:
    """The path of image `index` (0-based) recorded under `key` (a path when one image, or a list), else None."""
    given = record.get(key)
    if isinstance(given, (list, tuple)):
        return str(given[index]) if index < len(given) and given[index] is not None else None
    return str(given) if given is not None and count == 1 else None


def subjects_record(result: MonkeyOutput, record: dict) -> dict:
    """result.json's `subjects`, `overlap` and `background` (record: `subject` path(s), `background_image`)."""
    return {
        "subjects": [{"index": k + 1, "image": _image_of(record, "subject", k, result.subjects), "scale": result.scales[k],
                      "coverage": m.coverage, "lost_to_overlap": result.lost[k]} for k, m in enumerate(result.masks)],
        "overlap": result.overlap,
        "background": None if result.background_mask is None else {
            "image": _image_of(record, "background_image", 0, 1), "scale": result.background_scale,
            "coverage": float(result.background_mask.mean())},
    }


def write_outputs(out: Path, result: MonkeyOutput, subject, record: dict, save_arrays: bool = False) -> Path:
    """Write the folder described above; `record` is merged into result.json. `subject`: the subject image, or
    the list of them (S > 1); without it the baseline's grid.png is left out."""
    baseline = result.baseline_image is not None
    pictures = [] if subject is None else list(subject) if isinstance(subject, (list, tuple)) else [subject]
    names = output_files(result, subject, save_arrays)
    several = result.subjects > 1
    with OutputStage.open(out, MARKER, names=names) as stage:
        tmp = stage.path
        image = _pil(result.image)
        mask_u8 = (result.mask.mask > 0).astype(np.uint8) * 255  # [H, W]
        image.save(tmp / "monkey.png")
        Image.fromarray(mask_u8, mode="L").save(tmp / "mask.png")
        under = _pil(result.mask_pass_image) if result.mask_pass_image is not None else image
        if several:
            overlay = subjects_overlay(under, [m.mask for m in result.masks])
            for k, m in enumerate(result.masks, 1):
                Image.fromarray((m.mask > 0).astype(np.uint8) * 255, mode="L").save(tmp / f"mask_{k}.png")
                mask_overlay(under, m.mask, color=SUBJECT_COLOURS[(k - 1) % len(SUBJECT_COLOURS)]).save(tmp / f"overlay_{k}.png")
        else:
            overlay = mask_overlay(under, result.mask.mask)
        overlay.save(tmp / "overlay.png")
        if result.background_mask is not None:
            Image.fromarray((result.background_mask > 0).astype(np.uint8) * 255, mode="L").save(tmp / "background_mask.png")
        if baseline:
            _pil(result.baseline_image).save(tmp / "ipadapter.png")
        if baseline and pictures:
            firsts = [p.resize(image.size, Image.Resampling.BICUBIC) for p in pictures]
            labels = ["subject"] if len(pictures) == 1 else [f"subject {k}" for k in range(1, len(pictures) + 1)]
            side_by_side([*firsts, overlay, _pil(result.baseline_image), image],
                         [*labels, "mask" if len(pictures) == 1 else "masks", "IP-Adapter", "MONKEY"]).save(tmp / "grid.png")
        if save_arrays:
            arrays = {"image": result.image.astype(np.float32), "mask": result.mask.mask.astype(np.float32)}
            if several:
                arrays["masks"] = np.stack([m.mask for m in result.masks]).astype(np.float32)  # [S, H, W]
            if result.background_mask is not None:
                arrays["background_mask"] = result.background_mask.astype(np.float32)
            if baseline:
                arrays["baseline"] = result.baseline_image.astype(np.float32)
            np.savez(tmp / "arrays.npz", **arrays)
        info = {
            "written_by": WRITTEN_BY,
            **{k: v for k, v in record.items() if k != "background_image"},  # its path is in `background`
            "backend": result.backend,
            "mask": {
                "grid": list(result.mask.grid),
                "coverage": result.mask.coverage,
                "degenerate_steps": list(result.mask.degenerate_steps),
            },
            **subjects_record(result, record),
            "prompt_truncated": result.prompt_truncated,
            "warnings": list(result.warnings),
            "timings_s": {k: round(v, 6) for k, v in result.timings.items()},
            "unet_calls": [{"passes": c.passes, "step": c.step, "batch": c.batch, "graph": c.graph} for c in result.unet_calls],
            "files": names,
            "digests": file_digests(tmp, [n for n in names if n != MARKER]),  # a changed file is refused next time
            "versions": versions(),
        }
        (tmp / MARKER).write_text(json.dumps(info, indent=1))
        return stage.commit(names)


def versions() -> dict[str, str]:
    """Versions of what produced the result (torch etc. only if already imported)."""
    import sys

    v = {"monkey_trt": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for mod in ("torch", "diffusers", "transformers", "onnxruntime", "tensorrt"):
        if mod in sys.modules:
            v[mod] = getattr(sys.modules[mod], "__version__", "?")
    return v
