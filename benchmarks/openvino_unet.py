"""One UNet call on OpenVINO's CPU plugin vs ONNX Runtime's CPU provider, in one process (same load for both).

    python benchmarks/openvino_unet.py --engine-dir ENGINE [--size 64] [--runs 7] [--threads 2] [--json OUT]

What the runtime runs: `OrtRunner` (ORT, its session options) and `OpenVinoRunner` (f32, bf16 = the fp32 graph on bf16
kernels, int8 = the engine's Q/DQ UNet with f32 between the quantized ops) on the same random inputs (batch 1, the
engine's symbolic sizes at --size). Each compiled first (cold, untimed), then the runners interleaved call by call
(A B C ... A B C ...) so machine load hits all alike; the median per runner, its ratio to ORT fp32, and each output's
PSNR-like agreement with ORT fp32 (max abs difference). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from monkey_trt.engine.openvino import OpenVinoRunner, cpu_abilities, cpu_flags, openvino_version
from monkey_trt.engine.ort import OrtRunner, ort_version
from monkey_trt.enginedir.load import load_manifest
from monkey_trt.enginedir.networks import symbol_sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine-dir", type=Path, required=True)
    ap.add_argument("--size", type=int, default=0, help="image side (default: the profile's opt height)")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    m = load_manifest(a.engine_dir, verify="size")
    entry = m.networks["unet"]
    size = a.size or m.profile.height.opt
    sizes = symbol_sizes(1, size, size, m.dims)
    rng = np.random.default_rng(0)
    feeds = {t.name: rng.standard_normal(entry.desc.resolve(t.shape, sizes)).astype(t.dtype) for t in entry.desc.inputs}
    runners = {"ort fp32": OrtRunner(m.path(a.engine_dir, "unet", "fp32"), name="unet", intra_op_threads=a.threads)}
    if "int8" in entry.precisions:
        runners["ort int8"] = OrtRunner(m.path(a.engine_dir, "unet", "int8"), name="unet", intra_op_threads=a.threads, int8=True)
    runners["openvino f32"] = OpenVinoRunner(m.path(a.engine_dir, "unet", "fp32"), name="unet", threads=a.threads)
    if "BF16" in cpu_abilities().get("capabilities", []):
        runners["openvino bf16"] = OpenVinoRunner(m.path(a.engine_dir, "unet", "fp32"), name="unet", threads=a.threads,
                                                  inference_precision="bf16")
    if "int8" in entry.precisions:
        runners["openvino int8"] = OpenVinoRunner(m.path(a.engine_dir, "unet", "int8"), name="unet", threads=a.threads)
    out = {"cpu": cpu_abilities().get("device") or platform.processor() or platform.machine(), "openvino": openvino_version(), "onnxruntime": ort_version(),
           "cpu_flags": list(cpu_flags()), "ov_capabilities": cpu_abilities().get("capabilities", []),
           "size": size, "threads": a.threads, "runs": a.runs, "loadavg_before": os.getloadavg()[0]}
    first, times, outputs = {}, {k: [] for k in runners}, {}
    for k, r in runners.items():
        r.activate()
        t = time.perf_counter()
        outputs[k] = r.infer(feeds)
        first[k] = time.perf_counter() - t
    for _ in range(a.runs):
        for k, r in runners.items():
            t = time.perf_counter()
            r.infer(feeds)
            times[k].append(time.perf_counter() - t)
    base = statistics.median(times["ort fp32"])
    name = entry.desc.outputs[0].name
    out["per_call_s"] = {k: round(statistics.median(v), 5) for k, v in times.items()}
    out["vs_ort_fp32"] = {k: round(statistics.median(v) / base, 3) for k, v in times.items()}
    out["first_call_s"] = {k: round(v, 3) for k, v in first.items()}
    out[f"max_abs_diff_{name}_vs_ort_fp32"] = {k: float(np.abs(o[name] - outputs["ort fp32"][name]).max()) for k, o in outputs.items()}
    out["loadavg_after"] = os.getloadavg()[0]
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
