"""The README's picture of two subjects: their images, their masks, the MONKEY image and the plain multi-image
IP-Adapter baseline, on the embedded tiny model (random weights: the pictures are noise-like; the point is the
pipeline and the masks).

    python benchmarks/multi_subject_picture.py [--out docs/multi-subject.png] [--workdir ~/.cache/monkey-trt] [--size 128]

Writes the tiny model and its engine into --workdir like `monkey-trt demo` (cached), then runs MONKEY with two
subject images on ORT: the embedded subject and a second one made from it (mirrored, its colour channels
swapped), seed 0, the default knobs, and the plain IP-Adapter with both images unmasked at scale_final
(`baseline_scale`) from the same noise. The row: subject 1, subject 2, mask 1, mask 2, both masks over pass 1's
prediction (each subject in its colour, as overlay.png), MONKEY, IP-Adapter.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageOps

from monkey_trt.core.config import Request
from monkey_trt.embedded.workdir import ensure_preset
from monkey_trt.runtime.images import load_subject, mask_overlay, side_by_side, to_uint8
from monkey_trt.runtime.outputs import SUBJECT_COLOURS, subjects_overlay
from monkey_trt.runtime.pipeline import MonkeyPipeline

PROMPT = "a toy and a robot on the beach"


def second_subject(subject: Image.Image) -> Image.Image:
    """A subject that differs visibly from the first: mirrored, red and blue swapped."""
    r, g, b = ImageOps.mirror(subject).split()
    return Image.merge("RGB", (b, g, r))


def picture(workdir: Path, size: int, seed: int = 0) -> tuple[Image.Image, dict]:
    model_dir, engine_dir = ensure_preset("tiny", workdir, size, size, engine=True)
    first = load_subject(model_dir / "subject.png")
    subjects = [first, second_subject(first)]
    request = Request(PROMPT, size, size, seed)
    with MonkeyPipeline.from_engine_dir(engine_dir, backend="ort") as pipe:
        out = pipe(request, subjects, baseline_scale=request.config.scale_final, decode_mask_pass=True)
    under = Image.fromarray(to_uint8(out.mask_pass_image))
    masks = [mask_overlay(Image.new("RGB", (size, size), (215, 215, 215)), m.mask, color=SUBJECT_COLOURS[k], alpha=1.0)
             for k, m in enumerate(out.masks)]
    tiles = [s.resize((size, size), Image.Resampling.BICUBIC) for s in subjects] + masks + [
        subjects_overlay(under, [m.mask for m in out.masks]), Image.fromarray(to_uint8(out.image)),
        Image.fromarray(to_uint8(out.baseline_image))]
    labels = ["subject 1", "subject 2", "mask 1", "mask 2", "masks on pass 1", "MONKEY", "IP-Adapter"]
    facts = {"coverage": [round(m.coverage, 3) for m in out.masks], "overlap": round(out.overlap, 3), "seed": seed,
             "size": size, "prompt": PROMPT}
    return side_by_side(tiles, labels), facts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("docs/multi-subject.png"))
    ap.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "monkey-trt")
    ap.add_argument("--size", type=int, default=128)
    a = ap.parse_args(argv)
    image, facts = picture(a.workdir, a.size)
    image.save(a.out, optimize=True)
    print(f"wrote {a.out} ({a.out.stat().st_size // 1024} KiB): {facts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
