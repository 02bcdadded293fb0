"""One UNet call on OpenVINO: NNCF's own int8 quantization of the fp32 graph vs the engine's Q/DQ graph, one process.

    PYTHONPATH=.:NNCF python benchmarks/openvino_nncf.py --engine-dir ENGINE --calib CALIB.npz [--size 256] [--subset 32]
        [--runs 7] [--threads 2] [--json OUT]

NNCF is not a dependency of monkey-trt (`pip install nncf`, here into a folder on PYTHONPATH). ENGINE holds
`unet.onnx` and `unet.int8.onnx`; CALIB is the engine's calibration recording (`calib-v2-<key>.npz` in the
calibration cache, the UNet inputs of real MONKEY runs at the engine's size). In one process:
1. the fp32 graph read by OpenVINO, reshaped to batch 1 at --size, quantized by `nncf.quantize` (model type
   transformer, `--subset` recorded calls; the time and the process's peak RSS reported);
2. the NNCF graph and the engine's Q/DQ graph compiled with the runners' int8 config (f32 between the quantized
   ops, latency hint, one stream, --threads), then the fp32 graph with f32 kernels;
3. calls interleaved (A B C A B C ...) on recorded inputs of pass 2 (ip_mask not all ones); medians, and each int8
   output's max abs difference and PSNR-like ratio to the fp32 output on the same inputs.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine-dir", type=Path, required=True)
    ap.add_argument("--calib", type=Path, required=True)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--subset", type=int, default=32)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save", type=Path, help="write the NNCF model as OpenVINO IR here (model.xml)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    import nncf
    import openvino as ov

    m = load_manifest(a.engine_dir, verify="size")
    names = [t.name for t in m.networks["unet"].desc.inputs]
    with np.load(a.calib) as z:
        rec = {n: z[n] for n in names}
    calls = len(rec["sample"])
    batched = [n for n in names if n != "ip_scale"]  # ip_scale [16] has no batch axis
    feeds = [{**{n: rec[n][i:i + 1] for n in batched}, "ip_scale": rec["ip_scale"][i]} for i in range(calls)]
    out = {"cpu": cpu_abilities().get("device"), "cpu_flags": list(cpu_flags()), "openvino": openvino_version(),
           "nncf": nncf.__version__, "size": a.size, "threads": a.threads, "calib_calls": calls, "subset": a.subset,
           "loadavg_before": os.getloadavg()[0]}
    core = ov.Core()
    model = core.read_model(str(m.path(a.engine_dir, "unet", "fp32")))
    model.reshape({n: list(feeds[0][n].shape) for n in names})
    step = max(calls // a.subset, 1)
    dataset = nncf.Dataset(feeds[::step][: a.subset])
    t = time.perf_counter()
    q = nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=a.subset)
    out["nncf_quantize_s"] = round(time.perf_counter() - t, 1)
    out["peak_rss_gib_after_quantize"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    del model
    if a.save:
        ov.save_model(q, str(a.save), compress_to_fp16=False)
    cfg = OpenVinoRunner(a.engine_dir / "unet.onnx", threads=a.threads).config()  # the runners' f32 config
    compiled = {"openvino nncf int8": core.compile_model(q, "CPU", cfg)}
    del q
    for k, graph, prec in (("openvino q/dq int8", "int8", "f32"), ("openvino f32", "fp32", "f32")):
        r = OpenVinoRunner(m.path(a.engine_dir, "unet", graph), threads=a.threads, inference_precision=prec)
        model = core.read_model(str(r.model_path))
        model.reshape({n: list(feeds[0][n].shape) for n in names})
        compiled[k] = core.compile_model(model, "CPU", r.config())
        del model
    requests = {k: c.create_infer_request() for k, c in compiled.items()}
    final = [f for f in feeds if float(f["ip_mask"].min()) < 1.0] or feeds  # pass 2's masked calls
    probe = final[len(final) // 2]
    outs = {k: np.array(r.infer(probe)[0], copy=True) for k, r in requests.items()}
    times = {k: [] for k in requests}
    for i in range(a.runs):
        for k, r in requests.items():
            t = time.perf_counter()
            r.infer(final[i % len(final)])
            times[k].append(time.perf_counter() - t)
    base = outs["openvino f32"]
    out["per_call_s"] = {k: round(statistics.median(v), 4) for k, v in times.items()}
    out["max_abs_vs_f32"] = {k: float(np.abs(o - base).max()) for k, o in outs.items()}
    out["snr_db_vs_f32"] = {k: round(snr_db(base, o), 1) for k, o in outs.items() if k != "openvino f32"}
    out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    out["loadavg_after"] = os.getloadavg()[0]
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
