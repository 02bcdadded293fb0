"""OpenVINO's fidelity on an engine directory: masks vs the PyTorch reference, images vs the reference and ORT fp32.

    python benchmarks/openvino_fidelity.py --engine-dir ENGINE --model-dir TINY [--size 64] [--seeds 0,1,2]
    # sd15 size, one run per process (memory), then the comparison of what was saved:
    python benchmarks/openvino_fidelity.py --engine-dir E --model-dir M --size 256 --runs ref --save DIR
    python benchmarks/openvino_fidelity.py --engine-dir E --model-dir M --size 256 --runs fp32,bf16 --save DIR
    python benchmarks/openvino_fidelity.py --compare DIR

ENGINE: an engine directory with fp32 (+ int8) graphs; TINY: its source (`monkey-trt tiny-model TINY`: base/,
ip-adapter/, subject.png). For every seed x prompt, identical noise everywhere (torch's CPU generator): the
reference (`ref`), ORT fp32 (`ort`), and OpenVINO fp32, int8 and bf16 (mask_pass exact, and `... same`). Per OpenVINO
run: whether the mask equals the reference's (else its IoU), and equals OpenVINO fp32's; the image's max abs difference
to the reference and its PSNR to ORT fp32 and to OpenVINO fp32. Runs that were not made (`--runs`) are left out of the
comparisons that need them. Prints one line per case and a JSON summary (min PSNR, masks identical, mean IoU).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from monkey_trt.engine.compare import mask_iou, psnr

PROMPTS = ["a toy on the beach", "a toy in the jungle", "a toy with a city in the background"]
OV_RUNS = {"fp32": {"precision": "fp32"}, "bf16": {"precision": "bf16"}, "bf16 same": {"precision": "bf16", "mask_pass": "same"},
           "int8": {"precision": "int8"}, "int8 same": {"precision": "int8", "mask_pass": "same"}}


def generate(a, run: str) -> dict[str, dict[str, np.ndarray]]:
    """One run over every seed x prompt: case -> {"image", "mask"} (identical noise for every run)."""
    from PIL import Image

    from monkey_trt.core.config import Request
    from monkey_trt.reference.pipeline import ReferencePipeline, torch_noise_plan
    from monkey_trt.runtime.pipeline import MonkeyPipeline

    subject = Image.open(a.model_dir / "subject.png").convert("RGB")
    if run == "ref":
        pipe = ReferencePipeline.from_pretrained(str(a.model_dir / "base"), str(a.model_dir / "ip-adapter"))
    elif run == "ort":
        pipe = MonkeyPipeline.from_engine_dir(a.engine_dir, backend="ort", providers=("cpu",), threads=a.threads)
    else:
        pipe = MonkeyPipeline.from_engine_dir(a.engine_dir, backend="openvino", threads=a.threads, **OV_RUNS[run])
    out = {}
    try:
        for seed in a.seed_list:
            for prompt in PROMPTS[: a.prompts]:
                req = Request(prompt, a.size, a.size, seed=seed)
                got = pipe(req, subject, noise=torch_noise_plan(seed, req.latent_shape(pipe.dims), 8))
                out[f"{seed}|{prompt}"] = {"image": np.asarray(got.image, np.float32), "mask": np.asarray(got.mask.mask)}
                print(f"{run}: seed {seed} {prompt[:24]} done", flush=True)
    finally:  # one run's weights out of memory before the next opens (at sd15 size two do not fit in 24 GB)
        if hasattr(pipe, "close"):
            pipe.close()
    return out


def save(folder: Path, run: str, cases: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / f"{run.replace(' ', '_')}.npz",
                        **{f"{k}#{part}": v[part] for k, v in cases.items() for part in ("image", "mask")})


def load(folder: Path) -> dict[str, dict]:
    runs = {}
    for f in sorted(folder.glob("*.npz")):
        with np.load(f) as z:
            cases: dict[str, dict] = {}
            for key in z.files:
                case, part = key.rsplit("#", 1)
                cases.setdefault(case, {})[part] = z[key]
        runs[f.stem.replace("_", " ")] = cases
    return runs


def compare(runs: dict[str, dict]) -> dict:
    """Per OpenVINO run, over the cases it shares with the others: masks and PSNRs (see the module docstring)."""
    ref, ort, f32 = runs.get("ref"), runs.get("ort"), runs.get("fp32")
    summary = {}
    if ort and ref:
        shared = [c for c in ort if c in ref]
        summary["ort fp32"] = {"masks_identical_to_ref": f"{sum(np.array_equal(ort[c]['mask'], ref[c]['mask']) for c in shared)}/{len(shared)}",
                               "max_abs_vs_ref": max(float(np.abs(ort[c]["image"] - ref[c]["image"]).max()) for c in shared)}
    for name, cases in runs.items():
        if name not in OV_RUNS:
            continue
        row: dict = {"cases": len(cases)}
        for label, other in (("ref", ref), ("openvino fp32", f32 if name != "fp32" else None)):
            if other:
                shared = [c for c in cases if c in other]
                same = [np.array_equal(cases[c]["mask"], other[c]["mask"]) for c in shared]
                row[f"masks_identical_to_{label}"] = f"{sum(same)}/{len(shared)}"
                row[f"mean_iou_vs_{label}"] = round(float(np.mean([mask_iou(cases[c]["mask"], other[c]["mask"]) for c in shared])), 3)
                if label == "ref":
                    row["max_abs_vs_ref"] = max(float(np.abs(cases[c]["image"] - other[c]["image"]).max()) for c in shared)
                else:
                    p = [psnr(cases[c]["image"], other[c]["image"]) for c in shared]
                    row["psnr_vs_openvino_fp32_min_max"] = [round(min(p), 1), round(max(p), 1)]
        if ort:
            p = [psnr(cases[c]["image"], ort[c]["image"]) for c in cases if c in ort]
            row["psnr_vs_ort_fp32_min_max"] = [round(min(p), 1), round(max(p), 1)]
        summary[f"openvino {name}"] = row
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine-dir", type=Path)
    ap.add_argument("--model-dir", type=Path)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--prompts", type=int, default=len(PROMPTS), help="how many of the three prompts")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--runs", default="ref,ort," + ",".join(OV_RUNS), help="comma list: ref, ort, " + ", ".join(OV_RUNS))
    ap.add_argument("--save", type=Path, help="keep each run's images and masks here (one .npz per run)")
    ap.add_argument("--compare", type=Path, help="no generation: compare the runs saved in this folder")
    a = ap.parse_args()
    if a.compare:
        print(json.dumps(compare(load(a.compare)), indent=1))
        return
    if not (a.engine_dir and a.model_dir):
        ap.error("--engine-dir and --model-dir are needed to generate")
    a.seed_list = [int(s) for s in a.seeds.split(",")]
    runs = {}
    for run in (r.strip() for r in a.runs.split(",") if r.strip()):
        if run not in ("ref", "ort", *OV_RUNS):
            ap.error(f"unknown run {run!r}")
        runs[run] = generate(a, run)
        if a.save:
            save(a.save, run, runs[run])
    print(json.dumps(compare(runs), indent=1))


if __name__ == "__main__":
    main()
