"""The non-UNet stages on OpenVINO at each precision it could run them in, one process, calls interleaved.

    python benchmarks/openvino_stages.py --engine-dir ENGINE [--networks vae_decoder,image_encoder] [--size 256]
        [--runs 7] [--threads 2] [--json OUT]

Per network (its one input from --inputs when recorded there, else random): the fp32 graph with f32 kernels (what
every exact run uses), the fp32 graph with bf16 kernels, and the network's int8 graph when the engine directory has
one (f32 between its quantized ops), each on the same inputs (batch 1, the engine's sizes at --size). Compiled first
(untimed), then the variants interleaved call by call; the median per variant, its ratio to f32, and each output's
max abs difference and SNR (dB) to the f32 output.
Prints one JSON object (the CPU, its flags and the load average beside).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from monkey_trt.engine.compare import snr_db
from monkey_trt.engine.openvino import (
    OpenVinoRunner,
    cpu_abilities,
    cpu_flags,
    openvino_version,
)
from monkey_trt.enginedir.load import load_manifest
from monkey_trt.enginedir.networks import symbol_sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine-dir", type=Path, required=True)
    ap.add_argument("--networks", default="vae_decoder,image_encoder")
    ap.add_argument("--size", type=int, default=0, help="image side (default: the profile's opt height)")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--inputs", type=Path, help="recorded inputs (.npz: network name -> [N, ...] array, e.g. the "
                    "calibration cache's inputs-v1-<key>.npz of VAE latents): its first one instead of random numbers")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    recorded = dict(np.load(a.inputs)) if a.inputs else {}
    m = load_manifest(a.engine_dir, verify="size")
    size = a.size or m.profile.height.opt
    sizes = symbol_sizes(1, size, size, m.dims)
    bf16 = "BF16" in cpu_abilities().get("capabilities", [])
    out = {"cpu": cpu_abilities().get("device"), "cpu_flags": list(cpu_flags()), "openvino": openvino_version(),
           "size": size, "threads": a.threads, "runs": a.runs, "recorded_inputs": sorted(recorded), "loadavg_before": os.getloadavg()[0], "networks": {}}
    rng = np.random.default_rng(0)
    for name in (n.strip() for n in a.networks.split(",") if n.strip()):
        entry = m.networks[name]
        feeds = {t.name: rng.standard_normal(entry.desc.resolve(t.shape, sizes)).astype(t.dtype) for t in entry.desc.inputs}
        if name == "image_encoder":  # pixels in [0, 1]-ish: normalised CLIP input is fine as is
            feeds = {k: np.clip(v, -2, 2) for k, v in feeds.items()}
        if name in recorded and len(feeds) == 1:
            feeds = {next(iter(feeds)): recorded[name][:1].astype(np.float32)}
        fp32 = m.path(a.engine_dir, name, "fp32")
        variants = {"f32": OpenVinoRunner(fp32, name=name, threads=a.threads)}
        if bf16:
            variants["bf16"] = OpenVinoRunner(fp32, name=name, threads=a.threads, inference_precision="bf16")
        if "int8" in getattr(entry, "precisions", {}):
            variants["int8"] = OpenVinoRunner(m.path(a.engine_dir, name, "int8"), name=name, threads=a.threads)
        outs, times = {}, {k: [] for k in variants}
        for k, r in variants.items():
            r.activate()
            outs[k] = next(iter(r.infer(feeds).values()))
        for _ in range(a.runs):
            for k, r in variants.items():
                t = time.perf_counter()
                r.infer(feeds)
                times[k].append(time.perf_counter() - t)
        base = statistics.median(times["f32"])
        out["networks"][name] = {
            "per_call_s": {k: round(statistics.median(v), 4) for k, v in times.items()},
            "vs_f32": {k: round(statistics.median(v) / base, 3) for k, v in times.items()},
            "max_abs_vs_f32": {k: float(np.abs(o - outs["f32"]).max()) for k, o in outs.items()},
            "snr_db_vs_f32": {k: round(snr_db(outs["f32"], o), 1) for k, o in outs.items() if k != "f32"}}
        for r in variants.values():
            r.deactivate()
    out["loadavg_after"] = os.getloadavg()[0]
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
