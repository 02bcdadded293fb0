"""OpenVINO's fidelity on an engine directory: masks vs the PyTorch reference, images vs the reference and ORT fp32.

    python benchmarks/openvino_fidelity.py --engine-dir ENGINE --model-dir TINY [--size 64] [--seeds 0,1,2]

ENGINE: an engine directory with fp32 (+ int8) graphs; TINY: its source (`monkey-trt tiny-model TINY`: base/,
ip-adapter/, subject.png). For every seed x prompt, identical noise everywhere (torch's CPU generator): the
reference, ORT fp32, and OpenVINO fp32, int8 and bf16 (mask_pass exact and same). Per OpenVINO run: whether the mask
equals the reference's, its IoU, the image's max abs difference to the reference and its PSNR to ORT fp32.
Prints one line per case and a JSON summary (min PSNR, masks identical, mean IoU).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from monkey_trt.core.config import Request
from monkey_trt.engine.compare import mask_iou, psnr
from monkey_trt.reference.pipeline import ReferencePipeline, torch_noise_plan
from monkey_trt.runtime.pipeline import MonkeyPipeline

PROMPTS = ["a toy on the beach", "a toy in the jungle", "a toy with a city in the background"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine-dir", type=Path, required=True)
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seeds", default="0,1,2")
    a = ap.parse_args()
    subject = Image.open(a.model_dir / "subject.png").convert("RGB")
    ref = ReferencePipeline.from_pretrained(str(a.model_dir / "base"), str(a.model_dir / "ip-adapter"))
    ort = MonkeyPipeline.from_engine_dir(a.engine_dir, backend="ort", providers=("cpu",))
    runs = {"fp32": {}, "bf16": {}, "bf16 same": {"precision": "bf16", "mask_pass": "same"}}
    if "int8" in ort.manifest.precisions:
        runs.update({"int8": {}, "int8 same": {"precision": "int8", "mask_pass": "same"}})
    pipes = {k: MonkeyPipeline.from_engine_dir(a.engine_dir, backend="openvino", **(kw or {"precision": k})) for k, kw in runs.items()}
    rows: dict[str, list] = {k: [] for k in pipes}
    for seed in (int(s) for s in a.seeds.split(",")):
        for prompt in PROMPTS:
            req = Request(prompt, a.size, a.size, seed=seed)
            noise = torch_noise_plan(seed, req.latent_shape(ref.dims), 8)
            want, base = ref(req, subject, noise=noise), ort(req, subject, noise=noise)
            line = [f"seed {seed}", prompt[:20], f"ort mask={np.array_equal(base.mask.mask, want.mask.mask)}"]
            for k, p in pipes.items():
                got = p(req, subject, noise=noise)
                r = {"mask_equal": bool(np.array_equal(got.mask.mask, want.mask.mask)), "iou": mask_iou(got.mask.mask, want.mask.mask),
                     "max_abs_vs_ref": float(np.abs(got.image - want.image).max()), "psnr_vs_ort_fp32": psnr(got.image, base.image)}
                rows[k].append(r)
                line.append(f"{k}: mask={r['mask_equal']} iou={r['iou']:.3f} diff={r['max_abs_vs_ref']:.2e} psnr={r['psnr_vs_ort_fp32']:.1f}")
            print(" | ".join(line), flush=True)
    summary = {k: {"masks_identical": f"{sum(r['mask_equal'] for r in v)}/{len(v)}", "mean_iou": round(float(np.mean([r["iou"] for r in v])), 3),
                   "max_abs_vs_ref": max(r["max_abs_vs_ref"] for r in v),
                   "psnr_min_max": [round(min(r["psnr_vs_ort_fp32"] for r in v), 1), round(max(r["psnr_vs_ort_fp32"] for r in v), 1)]}
               for k, v in rows.items()}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
