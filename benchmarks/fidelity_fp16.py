"""fp16 fidelity on CPU: the engine directory's fp16 graphs (onnx reference evaluator) vs the PyTorch
fp32 reference on identical noise; prints mask IoU and image PSNR per seed.

    python benchmarks/fidelity_fp16.py --engine-dir E --base B --ip-adapter I [--seeds 0,1,2] [--size 128]

E must hold fp16 graphs (`monkey-trt export ... --precision fp32,fp16`).
"""

from __future__ import annotations

import argparse
import time

from PIL import Image

from monkey_trt.export.fidelity import MIN_MASK_IOU, MIN_PSNR_DB, measure_fp16
from monkey_trt.reference.pipeline import ReferencePipeline


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine-dir", required=True)
    ap.add_argument("--base", required=True)
    ap.add_argument("--ip-adapter", required=True)
    ap.add_argument("--image", default=None, help="subject (default: <base>/../subject.png of the tiny model)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--size", type=int, default=128)
    a = ap.parse_args()
    subject = Image.open(a.image or f"{a.base}/../subject.png").convert("RGB")
    reference = ReferencePipeline.from_pretrained(a.base, a.ip_adapter)
    t0 = time.perf_counter()
    rows = measure_fp16(a.engine_dir, reference, subject, seeds=tuple(int(s) for s in a.seeds.split(",")), size=a.size)
    for r in rows:
        print(f"seed {r.seed}: mask IoU {r.mask_iou:.4f}  PSNR {r.psnr_db:.2f} dB  max abs {r.max_abs:.4f}  {'ok' if r.ok else 'FAIL'}")
    print(f"worst: IoU {min(r.mask_iou for r in rows):.4f} (>= {MIN_MASK_IOU}), PSNR {min(r.psnr_db for r in rows):.2f} dB "
          f"(>= {MIN_PSNR_DB}); {time.perf_counter() - t0:.0f} s")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
