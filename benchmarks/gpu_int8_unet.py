"""The UNet step as TensorRT plans, one per UNet graph of an engine directory: the 8-bit graphs of each base
against fp16 (benchmarks/gpu_int8.sh's step rows).

    python benchmarks/gpu_int8_unet.py --engine-dir ENGINE --graphs fp16,int8-fp16,int8,fp8-fp16 --work W
        [--runs 20] [--opt-level 2] [--budget 300] [--json OUT]
    python benchmarks/gpu_int8_unet.py --table OUT            # the table again, from the JSON
    python benchmarks/gpu_int8_unet.py --mask-pass-fp16 --engine-dir ENGINE --subject PNG --seed S --out DIR
        # one int8 generation on TensorRT with pass 1 on the fp16 plans (mask_pass="fp16"): DIR/arrays.npz

Graphs are the manifest's keys (`int8`: the CPU graph, quantized from fp32; `int8-fp16`: the GPU graph, export/
gpu_quant.py). Each UNet plan is built static at the profile's opt shape (batch 1) with the project's builder
(engine/trt/build.py: strongly typed, Polygraphy) into W, then timed on one fixed input (p50 of --runs after 3
warm-ups, --warmup). Graphs run in the order given and each starts only while --budget seconds are left (a graph that
cannot start is reported `skipped: budget`). Prints one table: step p50, speed-up over fp16, build time, plan size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from monkey_trt.enginedir.load import load_manifest
from monkey_trt.enginedir.manifest import split_key
from monkey_trt.enginedir.networks import symbol_sizes
from monkey_trt.enginedir.plans import BuildConfig


def feeds_for(manifest, seed: int = 0) -> dict[str, np.ndarray]:
    """One UNet call at the profile's opt shape (batch 1): standard normal latents and states, timestep 500."""
    desc, p = manifest.networks["unet"].desc, manifest.profile
    sizes = symbol_sizes(1, p.height.opt, p.width.opt, manifest.dims)
    rng = np.random.default_rng(seed)
    out = {}
    for t in desc.inputs:
        shape = desc.resolve(t.shape, sizes)
        out[t.name] = (np.full(shape, 500.0) if t.name == "timestep" else np.ones(shape) if t.name in ("ip_scale", "ip_mask")
                       else rng.standard_normal(shape)).astype(t.dtype)
    return out


def time_graph(root: Path, manifest, key: str, work: Path, runs: int, opt_level: int, warmup: int = 3) -> dict:
    """Build `key`'s UNet plan into `work` and time it; a row of the table."""
    from monkey_trt.engine.trt.build import build_engine
    from monkey_trt.engine.trt.engine import TrtEngine

    entry = manifest.networks["unet"]
    onnx_path = root / entry.files(key)[0]
    precision = split_key(key)[0]
    cfg = BuildConfig(profile=manifest.profile, precision=precision, static_shapes=True, builder_optimization_level=opt_level)
    plan = work / f"unet-{key}.plan"
    info = build_engine(onnx_path, plan, entry.desc, manifest.dims, cfg, work / "timing.cache")
    feeds = feeds_for(manifest)
    with TrtEngine(plan, name=f"unet-{key}") as eng:
        for _ in range(warmup):  # noise_pred only: what pass 2's calls ask for (the map is read at the mask steps)
            eng.infer(feeds, outputs=("noise_pred",))
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            out = eng.infer(feeds, outputs=("noise_pred",))
            times.append(time.perf_counter() - t0)
    finite = bool(np.isfinite(out["noise_pred"]).all())
    return {"graph": key, "onnx": onnx_path.name, "build_s": round(info.seconds, 1), "plan_mib": round(info.bytes / 2**20, 1),
            "step_p50_s": statistics.median(times), "finite": finite}


def print_table(rows: list[dict]) -> bool:
    """The step table; True when a row failed (an error, or a non-finite output)."""
    ref = next((r["step_p50_s"] for r in rows if r["graph"] == "fp16" and "step_p50_s" in r), None)
    failed = False
    print("| UNet graph | base | step p50 s | vs fp16 | build s | plan MiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        base = split_key(r["graph"])[1] if r["graph"] not in ("fp32", "fp16") else "-"
        if "step_p50_s" not in r:
            failed |= "error" in r
            print(f"| {r['graph']} | {base} | {'skipped: budget' if 'skipped' in r else 'FAILED: ' + r['error']} | - | - | - |")
            continue
        speed = f"{ref / r['step_p50_s']:.2f}x" if ref else "-"
        print(f"| {r['graph']} | {base} | {r['step_p50_s']:.4f} | {speed} | {r['build_s']} | {r['plan_mib']} |")
        failed |= not r["finite"]
    return failed


def mask_pass_fp16(engine_dir: Path, subject: Path, seed: int, out: Path) -> int:
    """One int8 generation on TensorRT, pass 1 on the fp16 plans: out/arrays.npz (image, mask)."""
    from PIL import Image

    from monkey_trt import MonkeyPipeline

    with MonkeyPipeline.from_engine_dir(engine_dir, backend="trt", precision="int8", mask_pass="fp16") as pipe:
        result = pipe.generate("a toy on the beach", Image.open(subject).convert("RGB"), seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "arrays.npz", image=result.image, mask=result.mask.mask)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine-dir", type=Path)
    ap.add_argument("--graphs", default="fp16,int8-fp16,int8,fp8-fp16")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--table", type=Path, help="print the table of an earlier --json and exit")
    ap.add_argument("--mask-pass-fp16", action="store_true")
    ap.add_argument("--subject", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--opt-level", type=int, default=2)
    ap.add_argument("--budget", type=float, default=300.0, help="seconds; no graph starts after them")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    if a.table is not None:
        return 1 if print_table(json.loads(a.table.read_text())["rows"]) else 0
    need = ("engine_dir", "subject", "out") if a.mask_pass_fp16 else ("engine_dir", "work")
    missing = [f"--{n.replace('_', '-')}" for n in need if getattr(a, n) is None]
    if missing or a.runs < 1:
        print(f"error: {', '.join(missing)} needed" if missing else "error: --runs must be >= 1", file=sys.stderr)
        return 2
    if a.mask_pass_fp16:
        return mask_pass_fp16(a.engine_dir, a.subject, a.seed, a.out)
    manifest = load_manifest(a.engine_dir, verify="size")
    keys = [k.strip() for k in a.graphs.split(",") if k.strip()]
    have = {"fp32", *manifest.networks["unet"].precisions}
    missing = [k for k in keys if k not in have]
    if not keys or missing:
        print(f"error: --graphs: {a.engine_dir} has no UNet graph {', '.join(missing) or '(none given)'} "
              f"(it has {', '.join(sorted(have))})", file=sys.stderr)
        return 2
    a.work.mkdir(parents=True, exist_ok=True)
    t_start, rows, failed = time.monotonic(), [], False
    for key in keys:
        if time.monotonic() - t_start > a.budget:
            rows.append({"graph": key, "skipped": "budget"})
            continue
        try:
            rows.append(time_graph(a.engine_dir, manifest, key, a.work, a.runs, a.opt_level, a.warmup))
        except Exception as e:  # noqa: BLE001 - one row fails, the others still run; shown in the table
            rows.append({"graph": key, "error": str(e).splitlines()[0][:200] if str(e) else type(e).__name__})
            failed = True
    failed |= print_table(rows)
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "size": [manifest.profile.height.opt, manifest.profile.width.opt]}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
