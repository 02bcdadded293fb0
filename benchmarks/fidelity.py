"""Seeded ORT runtime vs the PyTorch reference on the tiny model: masks identical? worst image diff?

    python benchmarks/fidelity.py [--work DIR] [--seeds 3]

No noise file: the runtime's numpy torch-RNG must reproduce the reference's noise by itself.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from monkey_trt.core.config import Request
from monkey_trt.enginedir.networks import Profile, ShapeRange
from monkey_trt.export.onnx_export import ExportOptions, export_engine_dir
from monkey_trt.embedded.tiny import write_tiny_model
from monkey_trt.core.config import ModelSource
from monkey_trt.reference.pipeline import ReferencePipeline
from monkey_trt.runtime.pipeline import MonkeyPipeline

PROMPTS = ["a toy on the beach", "a toy in the jungle", "a toy in the snow"]
SIZES = [(128, 128), (64, 96), (96, 64)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--seeds", type=int, default=3)
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp())
    model = write_tiny_model(work / "model")
    source = ModelSource(str(model.base), str(model.ip_adapter))
    side = ShapeRange(64, 128, 128)
    engine = export_engine_dir(ExportOptions(source, work / "engine", Profile(ShapeRange(1, 1, 1), side, side), force=True))
    ref = ReferencePipeline.from_pretrained(source.base, source.ip_adapter)
    subject = Image.open(model.subject).convert("RGB")
    worst, same, n = 0.0, True, 0
    with MonkeyPipeline.from_engine_dir(engine, backend="ort") as rt:
        for seed in range(a.seeds):
            for prompt in PROMPTS:
                for h, w in SIZES:
                    req = Request(prompt, h, w, seed=seed)
                    want, got = ref(req, subject), rt(req, subject)
                    same &= bool(np.array_equal(want.mask.mask, got.mask.mask))
                    worst = max(worst, float(np.abs(want.image - got.image).max()))
                    n += 1
    print(f"{n} generations (seeds 0..{a.seeds - 1} x {len(PROMPTS)} prompts x sizes {SIZES}): "
          f"masks identical: {same}; worst image max abs diff: {worst:.2e}")


if __name__ == "__main__":
    main()
