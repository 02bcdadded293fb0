"""fp16 fidelity: the fp16 ONNX graphs run by an independent executor vs an fp32 reference.

    measure_fp16(engine_dir, reference, seeds=(0, 1, 2), size=128) -> list[Fidelity]

The fp16 graphs run through `onnx.reference.ReferenceEvaluator` (op by op in numpy, in the
dtypes the graph declares), the fp32 reference is any MONKEY pipeline object (the PyTorch
reference in the tests); both get identical noise. Thresholds from the issue: mask IoU >= 0.98,
image PSNR >= 35 dB.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monkey_trt.core.config import Request
from monkey_trt.engine.compare import mask_iou, psnr
from monkey_trt.enginedir.load import load_manifest
from monkey_trt.enginedir.networks import NETWORKS
from monkey_trt.runtime.noise import NoisePlan

MIN_MASK_IOU = 0.98
MIN_PSNR_DB = 35.0


@dataclass(frozen=True)
class Fidelity:
    seed: int
    prompt: str
    mask_iou: float
    psnr_db: float  # image in [0, 1], peak 1
    max_abs: float

    @property
    def ok(self) -> bool:
        return self.mask_iou >= MIN_MASK_IOU and self.psnr_db >= MIN_PSNR_DB


def fp16_reference_pipeline(engine_dir: str | Path):
    """The lean runtime on the engine directory's fp16 files, every network on onnx's reference evaluator."""
    from monkey_trt.engine.onnx_reference import OnnxReferenceRunner
    from monkey_trt.runtime.backend import BackendSpec
    from monkey_trt.runtime.pipeline import MonkeyPipeline
    from monkey_trt.runtime.tokenizer import ClipTokenizer

    root = Path(engine_dir)
    manifest = load_manifest(root)
    runners = {n: OnnxReferenceRunner(manifest.path(root, n, "fp16"), name=n) for n in NETWORKS}
    for r in runners.values():
        r.activate()
    return MonkeyPipeline(root, manifest, runners, BackendSpec(backend="ort"), ClipTokenizer.from_dir(root / "tokenizer"))


def measure_fp16(engine_dir, reference, subject, seeds=(0, 1, 2), prompts=("a toy on the beach",), size: int = 128) -> list[Fidelity]:
    """Mask IoU and image PSNR of fp16 vs `reference` on identical noise, per (seed, prompt)."""
    fp16 = fp16_reference_pipeline(engine_dir)
    out = []
    for seed in seeds:
        for prompt in prompts:
            req = Request(prompt=prompt, height=size, width=size, seed=seed)
            noise = NoisePlan.from_seed(seed, req.latent_shape(fp16.dims), req.config.noise_steps)
            ref, got = reference(req, subject, noise=noise), fp16(req, subject, noise=noise)
            out.append(Fidelity(seed, prompt, mask_iou(ref.mask.mask, got.mask.mask), psnr(ref.image, got.image),
                                float(np.abs(ref.image - got.image).max())))
    return out
