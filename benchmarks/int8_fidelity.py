"""Fidelity of the 8-bit UNet graphs against the fp32 engine, identical noise: mask IoU, identical-mask rate, PSNR, max |diff|.

    python benchmarks/int8_fidelity.py --engine-dir ENGINE [--size 256] [--seeds 0,1,2] [--prompts 2]
        [--graph NAME=PATH ...] [--executor ort|reference] [--json OUT]

Every graph runs MONKEY twice per case: `exact` (pass 1 on the fp32 UNet, pass 2 on the 8-bit one: the
mask is the fp32 mask by construction) and `same` (every UNet call 8-bit); `--modes exact,same,fp16` adds
`fp16` (pass 1 on the engine's fp16 UNet, the GPU option). The GPU-shaped graphs (fp16 base, e.g.
`--graph int8-fp16=ENGINE/unet.int8-fp16.onnx`) run here on ORT's CPU kernels. The reference is the fp32 engine
(ONNX Runtime, CPU) on the same noise. Graphs: the engine directory's unet.int8.onnx / unet.fp8.onnx, plus any
`--graph NAME=PATH` (e.g. variants with a wider kept-precision set). Executors: `ort` (ONNX Runtime's CPU
provider: integer kernels for int8; for fp8 it dequantizes and runs fp32 kernels, i.e. it simulates the
fp8 rounding) or `reference` (onnx's reference evaluator, op by op in numpy: independent of the library
that wrote the graph; slow, tiny model only). Also reports each graph's median pass-2 UNet call time in
this run next to fp32's (same process, same load).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import numpy as np

from monkey_trt.core.config import Request
from monkey_trt.engine.ort import OrtRunner
from monkey_trt.core.prompts import PAPER_PROMPTS
from monkey_trt.export.calibration import DEFAULT_SUBJECT_PHRASE, embedded_subject
from monkey_trt.engine.compare import mask_iou, psnr
from monkey_trt.runtime.noise import NoisePlan
from monkey_trt.runtime.pipeline import MonkeyPipeline
from monkey_trt.runtime.unet_graphs import unet_roles


def held_out_prompts(n: int) -> list[str]:
    """Paper prompts the default calibration (8 cases: every 2nd-3rd prompt) does not use, first."""
    from monkey_trt.export.calibration import CalibrationSpec

    used = {p for p, _, _ in CalibrationSpec.build().cases()}
    prompts = [f"{DEFAULT_SUBJECT_PHRASE} {p}" for p in PAPER_PROMPTS]
    return ([p for p in prompts if p not in used] + [p for p in prompts if p in used])[:n]


def open_graph(path: Path, executor: str, threads: int, int8: bool):
    if executor == "reference":
        from monkey_trt.engine.onnx_reference import OnnxReferenceRunner

        r = OnnxReferenceRunner(path, name="unet")
    else:
        r = OrtRunner(path, providers="cpu", name="unet", intra_op_threads=threads or None, int8=int8)
    r.activate()
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine-dir", required=True, type=Path)
    ap.add_argument("--size", type=int, default=None, help="default: the engine's opt size")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--prompts", type=int, default=2, help="how many (held-out first) paper prompts")
    ap.add_argument("--graph", action="append", default=[], help="NAME=PATH of another 8-bit UNet graph to compare")
    ap.add_argument("--executor", choices=("ort", "reference"), default="ort")
    ap.add_argument("--modes", default="exact,same")
    ap.add_argument("--precisions", default="int8,fp8", help="which of the engine directory's 8-bit graphs")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    e = a.engine_dir
    graphs = {p: e / f"unet.{p}.onnx" for p in a.precisions.split(",") if p and (e / f"unet.{p}.onnx").is_file()}
    graphs.update({k: Path(v) for k, v in (g.split("=", 1) for g in a.graph)})
    subject = embedded_subject()
    seeds = [int(s) for s in a.seeds.split(",")]
    prompts = held_out_prompts(a.prompts)
    modes = a.modes.split(",")
    pipe = MonkeyPipeline.from_engine_dir(e, backend="ort", providers=("cpu",), threads=a.threads, verify="size")
    size = a.size or pipe.manifest.profile.height.opt
    r32 = pipe.runners["unet"]
    r16 = open_graph(e / "unet.fp16.onnx", a.executor, a.threads, False) if "fp16" in a.modes.split(",") else None
    runners = {name: open_graph(path, a.executor, a.threads, "fp8" not in name) for name, path in graphs.items()}
    rows, steps = [], {"fp32": []}
    load = [os.getloadavg()[0]]
    for seed in seeds:
        for prompt in prompts:
            req = Request(prompt, size, size, seed=seed)
            noise = NoisePlan.from_seed(seed, req.latent_shape(pipe.dims), req.config.noise_steps)
            pipe.unet_runners, pipe.unet_roles = {"fp32": r32}, unet_roles("fp32")
            ref = pipe(req, subject, noise=noise, batch_passes=False)
            steps["fp32"] += [u.seconds for u in ref.unet_calls if u.passes == "p2"]
            for name, r in runners.items():
                prec = "fp8" if "fp8" in name else "int8"
                for mode in modes:
                    pipe.unet_runners, pipe.unet_roles = {"fp32": r32, "fp16": r16, prec: r}, unet_roles(prec, mode)
                    got = pipe(req, subject, noise=noise, batch_passes=False)
                    steps.setdefault(name, []).extend(u.seconds for u in got.unet_calls if u.passes == "p2")
                    rows.append({"graph": name, "mode": mode, "seed": seed, "prompt": prompt,
                                 "mask_iou": mask_iou(ref.mask.mask, got.mask.mask),
                                 "mask_identical": bool(np.array_equal(ref.mask.mask, got.mask.mask)),
                                 "psnr_db": psnr(ref.image, got.image), "max_abs": float(np.abs(ref.image - got.image).max())})
    load.append(os.getloadavg()[0])
    summary = []
    print(f"fidelity vs fp32, {size}x{size}, seeds {seeds} x {len(prompts)} prompts, executor {a.executor}, load {load[0]:.1f} -> {load[1]:.1f}")
    print("| graph | mode | mask IoU mean (min) | identical masks | PSNR dB mean (min) | max abs diff | pass-2 UNet call (fp32) |")
    print("|---|---|---|---|---|---|---|")
    t32 = statistics.median(steps["fp32"])
    for name in runners:
        for mode in modes:
            rs = [r for r in rows if r["graph"] == name and r["mode"] == mode]
            iou = [r["mask_iou"] for r in rs]
            ps = [r["psnr_db"] for r in rs]
            t = statistics.median(steps[name])
            s = {"graph": name, "mode": mode, "n": len(rs), "iou_mean": float(np.mean(iou)), "iou_min": min(iou),
                 "identical_rate": float(np.mean([r["mask_identical"] for r in rs])), "psnr_mean": float(np.mean(ps)),
                 "psnr_min": min(ps), "max_abs": max(r["max_abs"] for r in rs), "p2_call_s": t, "p2_call_fp32_s": t32}
            summary.append(s)
            print(f"| {name} | {mode} | {s['iou_mean']:.3f} ({s['iou_min']:.3f}) | {s['identical_rate']:.0%} | "
                  f"{s['psnr_mean']:.1f} ({s['psnr_min']:.1f}) | {s['max_abs']:.3f} | {t:.3f}s ({t32:.3f}s) |")
    if a.json:
        a.json.write_text(json.dumps({"size": size, "seeds": seeds, "prompts": prompts, "executor": a.executor, "load": load,
                                      "summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
