"""The 8-bit VAE decoder of an existing fp32 engine directory, without touching it: quantize into OUT, then time and compare.

    python benchmarks/int8_vae_speed.py --engine-dir ENGINE --out OUT [--calib-size 2] [--cases 2]
        [--keep io+attention,io+attention+upsample] [--runs 3] [--threads 2]

Records pass 2's final latents of `--calib-size` default calibration cases on ENGINE's fp32 graphs (ONNX
Runtime, CPU; export/network_calibration.py, cached in OUT/cache), writes OUT/vae_decoder.<keep>.int8.onnx
per kept set (export/quantize.py, the export's own quantizer), then on `--cases` held-out cases (paper prompts
the calibration does not use, seeds 100+): decoder PSNR against fp32 on the fp32 run's latents, the decoder's
time fp32 vs int8 (p50 of `--runs`, interleaved, one process), and, when ENGINE has the int8 UNet, the image
PSNR and mask of the int8 engine with its VAE decoder fp32 vs int8. ENGINE is only read.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from monkey_trt.core.config import Request
from monkey_trt.engine.compare import psnr
from monkey_trt.engine.ort import OrtRunner
from monkey_trt.export.calibration import CalibrationSpec, embedded_subject
from monkey_trt.export.network_calibration import load_or_collect_inputs
from monkey_trt.export.quantize import QuantSettings, quantize_model_file
from monkey_trt.runtime.noise import NoisePlan
from monkey_trt.runtime.pipeline import MonkeyPipeline

sys.path.insert(0, str(Path(__file__).parent))
from int8_fidelity import held_out_prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine-dir", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--calib-size", type=int, default=2)
    ap.add_argument("--cases", type=int, default=2)
    ap.add_argument("--keep", default="io+attention")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    e, out = a.engine_dir, a.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # one pipeline (an sd15-size engine is GBs per copy): int8 where the engine has the int8 UNet; the fp32
    # reference runs on it with every UNet call on the fp32 graph (pass 1 already holds it)
    from monkey_trt.enginedir.load import load_manifest
    from monkey_trt.runtime.unet_graphs import unet_roles

    m = load_manifest(e, verify="size")
    has_int8 = "int8" in m.precisions
    size = m.profile.height.opt
    spec = CalibrationSpec.build(size=a.calib_size, height=size, width=size)
    # first, before the measuring pipeline opens: the recording opens (and closes) its own fp32 pipeline
    data, _ = load_or_collect_inputs(e, m, spec, ("vae_decoder",), cache=out / "cache", threads=a.threads)
    print(f"recorded {data.calls('vae_decoder')} decoder inputs in {time.perf_counter() - t0:.0f} s", flush=True)
    pipe = MonkeyPipeline.from_engine_dir(e, precision="int8" if has_int8 else "fp32", threads=a.threads, verify="size")
    runners8, roles8 = dict(pipe.unet_runners), dict(pipe.unet_roles)
    assert m.run_precision("vae_decoder", "int8") == "fp32", "ENGINE already has an 8-bit VAE decoder"

    def as_fp32():
        pipe.unet_runners, pipe.unet_roles = {"fp32": runners8["fp32"]}, unet_roles("fp32")

    def as_int8():
        pipe.unet_runners, pipe.unet_roles = dict(runners8), dict(roles8)

    graphs = {}
    for k in [k for k in a.keep.split(",") if k]:
        dst = out / f"vae_decoder.{k.replace('+', '_')}.int8.onnx"
        t = time.perf_counter()
        if not dst.is_file():
            quantize_model_file(m.path(e, "vae_decoder"), dst, data.feeds("vae_decoder"),
                                QuantSettings("int8", keep=() if k == "none" else tuple(k.split("+")), network="vae_decoder"), external=False)
        print(f"quantized keep={k} in {time.perf_counter() - t:.0f} s", flush=True)
        r = OrtRunner(dst, providers="cpu", name="vae_decoder", intra_op_threads=a.threads or None, int8=True)
        r.activate()
        graphs[k] = r
    subject = embedded_subject()
    rows, times = [], {"fp32": [], **{k: [] for k in graphs}}
    load = [os.getloadavg()[0]]
    for i, prompt in enumerate(held_out_prompts(a.cases)):
        seed = 100 + i
        req = Request(prompt, size, size, seed=seed)
        noise = NoisePlan.from_seed(seed, req.latent_shape(pipe.dims), req.config.noise_steps)
        latents: list = []
        as_fp32()
        with pipe.watch_network("vae_decoder", lambda f: latents.append(np.array(f["latents"], copy=True))):
            ref = pipe(req, subject, noise=noise)
        row = {"prompt": prompt, "seed": seed}
        dec = lambda r: np.ascontiguousarray(r.infer({"latents": latents[0]}, outputs=("images",))["images"][0].transpose(1, 2, 0))
        for k, r in graphs.items():
            row[f"vae_psnr[{k}]"] = psnr(ref.image, dec(r))
        for _ in range(a.runs):
            for k, r in (("fp32", pipe.runners["vae_decoder"]), *graphs.items()):
                t = time.perf_counter()
                dec(r)
                times[k].append(time.perf_counter() - t)
        if has_int8:
            as_int8()
            p8 = pipe
            unet_only = p8(req, subject, noise=noise)
            row["engine_psnr[unet int8, vae fp32]"] = psnr(ref.image, unet_only.image)
            row["mask_identical"] = bool(np.array_equal(ref.mask.mask, unet_only.mask.mask))
            vae32 = p8.runners["vae_decoder"]
            for k, r in graphs.items():
                p8.runners["vae_decoder"] = r
                both = p8(req, subject, noise=noise)
                row[f"engine_psnr[unet int8, vae int8 {k}]"] = psnr(ref.image, both.image)
                row["mask_identical"] &= bool(np.array_equal(ref.mask.mask, both.mask.mask))
            p8.runners["vae_decoder"] = vae32
        rows.append(row)
        print(json.dumps(row), flush=True)
    load.append(os.getloadavg()[0])
    p50 = {k: statistics.median(v) for k, v in times.items()}
    print(f"{size}x{size}, {a.threads} threads, load {load[0]:.1f} -> {load[1]:.1f}, peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB")
    for k, v in p50.items():
        print(f"VAE decoder {k}: p50 {v:.3f} s of {len(times[k])}" + ("" if k == "fp32" else f" ({p50['fp32'] / v:.2f}x fp32)"))
    if a.json:
        a.json.write_text(json.dumps({"size": size, "load": load, "rows": rows, "times": times, "p50": p50}, indent=1))


if __name__ == "__main__":
    main()
