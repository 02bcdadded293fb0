"""One UNet step (MONKEY's exported UNet: IP mask/scale in, map out): torch eager vs ONNX Runtime.

    python benchmarks/bench_unet_step.py --engine-dir ENGINE --base BASE --ip-adapter IP [--size 256] [--runs 5]

Both run in this process on the same inputs; prints medians and the ratio, and the max abs diff.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from monkey_trt.engine.ort import OrtRunner
from monkey_trt.enginedir.load import load_manifest
from monkey_trt.export.onnx_export import sample_inputs
from monkey_trt.export.wrappers import UNetNet
from monkey_trt.core.config import ModelSource
from monkey_trt.reference.loading import load_reference_models


def median_seconds(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine-dir", required=True)
    ap.add_argument("--base", required=True)
    ap.add_argument("--ip-adapter", required=True)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()

    manifest = load_manifest(a.engine_dir, verify="size")
    models = load_reference_models(ModelSource(a.base, a.ip_adapter))
    net = UNetNet(models.unet, models.ctx, models.ip_layers.index(manifest.mask_layer)).eval()
    desc = manifest.networks["unet"].desc
    args = sample_inputs(desc, manifest.dims, 1, a.size, a.size)
    feeds = {n: t.numpy() for n, t in zip(desc.input_names, args)}
    with torch.no_grad():
        want = net(*args)
        t_torch = median_seconds(lambda: net(*args), a.runs)
    with OrtRunner(manifest.path(a.engine_dir, "unet")) as unet:
        got = unet.infer(feeds)
        t_ort = median_seconds(lambda: unet.infer(feeds), a.runs)
    diff = float(np.abs(got["noise_pred"] - want[0].numpy()).max())
    print(f"UNet step {a.size}x{a.size}, median of {a.runs}: torch {t_torch:.3f}s  ort {t_ort:.3f}s  "
          f"speed-up {t_torch / t_ort:.2f}x  max|d| noise_pred {diff:.2e}  (torch {torch.__version__}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
