"""Fidelity (and decode time) of the 8-bit VAE decoder and the opt-in 8-bit image encoder against the fp32 engine, identical noise.

    python benchmarks/int8_networks.py --engine-dir ENGINE [--seeds 0,1,2] [--prompts 3] [--precision int8]
        [--vae-keep=io,io+attention,...] [--ie-keep=...] [--threads 2] [--decode-runs 3] [--json OUT]

ENGINE holds fp32 and the 8-bit graphs (fp8: ONNX Runtime dequantizes and runs fp32 kernels, i.e. it applies
the fp8 rounding; only the networks' own rows, as ONNX Runtime's pipeline refuses fp8) (`export --precision int8 [--quantize-image-encoder]`). Per case
(held-out paper prompts x seeds, the embedded subject, the engine's opt size) the fp32 engine runs MONKEY
once; then, on the same noise:

* `engine`: the engine at `--precision` (UNet pass 2, VAE decoder and, if exported, image encoder 8-bit):
  mask IoU, identical masks, image PSNR against fp32; `engine, image encoder fp32`: the same with the
  image encoder fp32 (what an export without `--quantize-image-encoder` runs); `UNet only (before)`: only the
  UNet 8-bit (what an engine exported before the 8-bit VAE decoder runs);
* `vae only`: the fp32 run's own final latents decoded by the 8-bit VAE decoder (its error alone);
* `vae keep=G`: the same with the VAE decoder re-quantized keeping the groups G in float (one `--vae-keep`
  list each, `+`-joined; `none` = nothing kept), calibrated on the export's recorded decoder inputs: the table
  of docs/int8.md's kept set;
* `image encoder only`: the fp32 engine with only the image encoder 8-bit: what the opt-in costs the mask;
  `image encoder keep=G`: the same re-quantized with another kept set (`--ie-keep`).

Also the VAE decoder's time, fp32 vs 8-bit (p50 of `--decode-runs`, same process, interleaved).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from monkey_trt.core.config import Request
from monkey_trt.engine.compare import mask_iou, psnr
from monkey_trt.engine.ort import OrtRunner
from monkey_trt.export.calibration import CalibrationSpec, embedded_subject
from monkey_trt.runtime.noise import NoisePlan
from monkey_trt.runtime.pipeline import MonkeyPipeline

sys.path.insert(0, str(Path(__file__).parent))
from int8_fidelity import held_out_prompts


def runner(path: Path, name: str, threads: int, int8: bool):
    r = OrtRunner(path, providers="cpu", name=name, intra_op_threads=threads or None, int8=int8)
    r.activate()
    return r


def decode_with(r, latents: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(r.infer({"latents": latents}, outputs=("images",))["images"][0].transpose(1, 2, 0))


def variants(e: Path, manifest, network: str, keeps: list[str], precision: str, tmp: Path, threads: int) -> dict:
    """keep-set label -> runner of `network` quantized with that kept set (the export's calibration inputs)."""
    from monkey_trt.export.network_calibration import load_or_collect_inputs
    from monkey_trt.export.quantize import QuantSettings, quantize_model_file

    if not keeps:
        return {}
    spec = CalibrationSpec.build(height=manifest.profile.height.opt, width=manifest.profile.width.opt)
    nets = tuple(n for n in ("image_encoder", "vae_decoder") if precision in manifest.networks[n].precisions)
    data, _ = load_or_collect_inputs(e, manifest, spec, nets or (network,))
    out = {}
    for k in keeps:
        groups = () if k == "none" else tuple(k.split("+"))
        dst = tmp / f"{network}-{k.replace('+', '_')}.onnx"
        quantize_model_file(manifest.path(e, network), dst, data.feeds(network),
                            QuantSettings(precision, keep=groups, network=network), external=False)
        out[f"{'vae' if network == 'vae_decoder' else 'image encoder'} keep={k}"] = runner(dst, network, threads, precision == "int8")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine-dir", required=True, type=Path)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--vae-keep", default="", help="comma list of kept sets (groups joined by +, none for nothing kept)")
    ap.add_argument("--ie-keep", default="", help="the same for the image encoder (needs its calibration inputs: export it 8-bit)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--decode-runs", type=int, default=3)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    e, P = a.engine_dir, a.precision
    subject = embedded_subject()
    seeds = [int(s) for s in a.seeds.split(",")]
    prompts = held_out_prompts(a.prompts)
    common = dict(backend="ort", providers=("cpu",), threads=a.threads, verify="size")
    fp32 = MonkeyPipeline.from_engine_dir(e, precision="fp32", **common)
    q = MonkeyPipeline.from_engine_dir(e, precision=P, **common) if P != "fp8" else None  # fp8: the networks alone
    m = fp32.manifest
    size = m.profile.height.opt
    has = {n: P in m.networks[n].precisions for n in ("image_encoder", "vae_decoder")}
    vae8 = runner(m.path(e, "vae_decoder", P), "vae_decoder", a.threads, P == "int8") if has["vae_decoder"] else None
    ie8 = runner(m.path(e, "image_encoder", P), "image_encoder", a.threads, P == "int8") if has["image_encoder"] else None
    tmp = Path(tempfile.mkdtemp(prefix="int8-networks-"))
    vae_vars = variants(e, m, "vae_decoder", [k for k in a.vae_keep.split(",") if k], P, tmp, a.threads)
    ie_vars = variants(e, m, "image_encoder", [k for k in a.ie_keep.split(",") if k], P, tmp, a.threads)
    rows, load = [], [os.getloadavg()[0]]
    times = {"fp32": [], P: []}
    for seed in seeds:
        for prompt in prompts:
            req = Request(prompt, size, size, seed=seed)
            noise = NoisePlan.from_seed(seed, req.latent_shape(fp32.dims), req.config.noise_steps)
            latents = []
            with fp32.watch_network("vae_decoder", lambda f: latents.append(np.array(f["latents"], copy=True))):
                ref = fp32(req, subject, noise=noise)

            def row(what, img, mask=None):
                mask = ref.mask.mask if mask is None else mask
                rows.append({"what": what, "seed": seed, "prompt": prompt, "mask_iou": mask_iou(ref.mask.mask, mask),
                             "mask_identical": bool(np.array_equal(ref.mask.mask, mask)), "psnr_db": psnr(ref.image, img)})

            if q is not None:
                got = q(req, subject, noise=noise)
                row("engine", got.image, got.mask.mask)
            if q is not None and ie8 is not None:  # the default export's engine: UNet + VAE decoder 8-bit, image encoder fp32
                mine = q.runners["image_encoder"]
                q.runners["image_encoder"] = fp32.runners["image_encoder"]
                try:
                    dflt = q(req, subject, noise=noise)
                finally:
                    q.runners["image_encoder"] = mine
                row("engine, image encoder fp32", dflt.image, dflt.mask.mask)
            if q is not None and vae8 is not None:  # the engine before the 8-bit VAE decoder: the UNet alone 8-bit
                mine = dict(q.runners)
                q.runners.update(image_encoder=fp32.runners["image_encoder"], vae_decoder=fp32.runners["vae_decoder"])
                try:
                    unet_only = q(req, subject, noise=noise)
                finally:
                    q.runners.update(mine)
                row("UNet only (before)", unet_only.image, unet_only.mask.mask)
            if vae8 is not None:
                row("vae only", decode_with(vae8, latents[0]))
                for _ in range(a.decode_runs):
                    for name, r in (("fp32", fp32.runners["vae_decoder"]), (P, vae8)):
                        t = time.perf_counter()
                        decode_with(r, latents[0])
                        times[name].append(time.perf_counter() - t)
            for name, r in vae_vars.items():
                row(name, decode_with(r, latents[0]))
            for name, r in (({"image encoder only": ie8} if ie8 is not None else {}) | ie_vars).items():
                keep = fp32.runners["image_encoder"]
                fp32.runners["image_encoder"] = r
                try:
                    ie = fp32(req, subject, noise=noise)
                finally:
                    fp32.runners["image_encoder"] = keep
                row(name, ie.image, ie.mask.mask)
    load.append(os.getloadavg()[0])
    print(f"{P} vs fp32, {size}x{size}, seeds {seeds} x {len(prompts)} prompts, load {load[0]:.1f} -> {load[1]:.1f}")
    print("| what | mask IoU mean (min) | identical masks | image PSNR dB mean (min) |")
    print("|---|---|---|---|")
    summary = []
    for what in dict.fromkeys(r["what"] for r in rows):
        rs = [r for r in rows if r["what"] == what]
        iou, ps = [r["mask_iou"] for r in rs], [r["psnr_db"] for r in rs]
        s = {"what": what, "n": len(rs), "iou_mean": float(np.mean(iou)), "iou_min": min(iou),
             "identical_rate": float(np.mean([r["mask_identical"] for r in rs])), "psnr_mean": float(np.mean(ps)), "psnr_min": min(ps)}
        summary.append(s)
        print(f"| {what} | {s['iou_mean']:.3f} ({s['iou_min']:.3f}) | {s['identical_rate']:.0%} | {s['psnr_mean']:.1f} ({s['psnr_min']:.1f}) |")
    if times[P]:
        t32, t8 = statistics.median(times["fp32"]), statistics.median(times[P])
        print(f"VAE decoder p50: fp32 {t32:.4f} s, {P} {t8:.4f} s ({t32 / t8:.2f}x), {len(times[P])} runs each")
    if a.json:
        a.json.write_text(json.dumps({"size": size, "seeds": seeds, "prompts": prompts, "load": load, "summary": summary,
                                      "rows": rows, "decode_s": times}, indent=1))


if __name__ == "__main__":
    main()
