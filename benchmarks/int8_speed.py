"""INT8 UNet step vs fp32 on ONNX Runtime's CPU provider, with this CPU's GEMM peaks measured in the same run.

    python benchmarks/int8_speed.py --engine-dir ENGINE [--size 256] [--runs 5] [--threads 2] [--json OUT]

ENGINE holds `unet.onnx` and `unet.int8.onnx` (`monkey-trt export --precision int8`). In one process:
1. the CPU (lscpu model, flags: AVX2 / AVX-512 / VNNI) and the load average before and after;
2. peaks: fp32 sgemm (MatMul) and u8s8 integer GEMM (MatMulInteger), N x N x N, median of `--runs`;
3. the UNet's arithmetic at this size: MACs of every Conv/MatMul/Gemm from the shapes seen in one fp32 run,
   split into what the int8 graph quantizes (integer kernels) and what it keeps in float;
4. one UNet step (batch 1, pass 2's masked inputs at IP scale 1), fp32 and int8 sessions interleaved
   (A B A B ...) so machine load hits both alike; medians and their ratio;
5. the roofline: int8 ops / u8s8 peak + float ops / sgemm peak = the step's floor, and where the step stands.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from monkey_trt.engine.ort import (
    OrtRunner,  # what the runtime runs (int8: its session options)
)
from monkey_trt.export.graph_walks import name_nodes


def cpu_info() -> dict:
    info = {"machine": platform.machine()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            if k.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Vendor ID", "L3 cache"):
                info[k.strip()] = v.strip()
            if k.strip() == "Flags":
                flags = set(v.split())
                info["avx2"] = "avx2" in flags
                info["avx512f"] = "avx512f" in flags
                info["vnni"] = bool(flags & {"avx512_vnni", "avx_vnni"})
                info["amx"] = bool(flags & {"amx_int8"})
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def session(model, threads: int, path: str | None = None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    src = path if path is not None else model.SerializeToString()
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def timed(fn, runs: int) -> float:
    fn()
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def gemm_peaks(n: int, runs: int, threads: int) -> dict:
    """fp32 MatMul and u8s8 MatMulInteger on N x N x N: GFLOP/s and GOP/s (2 ops per multiply-add)."""
    rng = np.random.default_rng(0)

    def model(op, a_type, b, out_type):
        g = helper.make_graph([helper.make_node(op, ["a", "b"], ["y"])], "g",
                              [helper.make_tensor_value_info("a", a_type, [n, n])],
                              [helper.make_tensor_value_info("y", out_type, None)], [numpy_helper.from_array(b, "b")])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    a32 = rng.standard_normal((n, n)).astype(np.float32)
    s = session(model("MatMul", TensorProto.FLOAT, rng.standard_normal((n, n)).astype(np.float32), TensorProto.FLOAT), threads)
    t32 = timed(lambda: s.run(None, {"a": a32}), runs)
    au8 = rng.integers(0, 256, (n, n), dtype=np.uint8)
    s8 = session(model("MatMulInteger", TensorProto.UINT8, rng.integers(-127, 128, (n, n), dtype=np.int8), TensorProto.INT32), threads)
    t8 = timed(lambda: s8.run(None, {"a": au8}), runs)
    ops = 2.0 * n ** 3
    return {"n": n, "fp32_gflops": ops / t32 / 1e9, "u8s8_gops": ops / t8 / 1e9, "ratio": t32 / t8}


def unet_macs(fp32_path: Path, int8_path: Path, feeds: dict, threads: int) -> dict:
    """MACs of each Conv/MatMul/Gemm (shapes from one fp32 run), split by whether the int8 graph quantizes it."""
    model = onnx.load(str(fp32_path), load_external_data=False)
    g = model.graph
    name_nodes(g)  # the names the quantizer gave unnamed nodes
    weights = {t.name: list(t.dims) for t in g.initializer}
    ops = [n for n in g.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    known = {o.name for o in g.output} | {i.name for i in g.input}
    for name in sorted({n.input[0] for n in ops} | {n.output[0] for n in ops}):
        if name not in known:
            g.output.append(helper.make_empty_tensor_value_info(name))
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor name
    so.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="monkey-macs-") as d:  # never write into the engine directory
        for data in {e.value for t in g.initializer for e in t.external_data if e.key == "location"}:
            try:  # ORT refuses external data that resolves outside the model's folder (symlinks included)
                os.link(fp32_path.parent / data, Path(d) / data)  # a hard link: no copy, the engine dir untouched
            except OSError:  # another filesystem
                shutil.copyfile(fp32_path.parent / data, Path(d) / data)
        onnx.save(model, str(Path(d) / "unet.onnx"))
        sess = ort.InferenceSession(str(Path(d) / "unet.onnx"), so, providers=["CPUExecutionProvider"])
        shape = {o.name: list(v.shape) for o, v in zip(sess.get_outputs(), sess.run(None, feeds))}
    shape.update({k: list(v.shape) for k, v in feeds.items()})
    q = onnx.load(str(int8_path), load_external_data=False).graph
    producers = {o: n for n in q.node for o in n.output}
    quantized = {n.name for n in q.node if n.op_type in ("Conv", "MatMul", "Gemm")
                 and n.input[0] in producers and producers[n.input[0]].op_type == "DequantizeLinear"}
    total = {"int8": 0, "float": 0}
    for n in ops:
        out, a = shape[n.output[0]], shape[n.input[0]]
        if n.op_type == "Conv":
            k = int(np.prod(weights[n.input[1]][1:]))  # Cin / groups x kh x kw
        elif n.op_type == "Gemm":
            k = a[0] if any(at.name == "transA" and at.i for at in n.attribute) else a[-1]
        else:
            k = a[-1]
        total["int8" if n.name in quantized else "float"] += int(np.prod(out)) * k
    return {"int8_gmacs": total["int8"] / 1e9, "float_gmacs": total["float"] / 1e9}


def step_feeds(engine: Path, size: int) -> dict:
    """Pass 2's masked-step inputs, batch 1: a calibration-like call (real shapes, IP scale 1, a half mask)."""
    from monkey_trt.enginedir.load import read_manifest
    from monkey_trt.export.onnx_export import sample_inputs

    m = read_manifest(engine)
    desc = m.networks["unet"].desc
    args = sample_inputs(desc, m.dims, 1, size, size)
    return {n: t.numpy() for n, t in zip(desc.input_names, args)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine-dir", required=True, type=Path)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--gemm", type=int, default=2048, help="N of the N x N x N peak GEMMs")
    ap.add_argument("--int8", type=Path, help="another int8 UNet graph (default: ENGINE/unet.int8.onnx)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    e = a.engine_dir
    int8 = a.int8 or e / "unet.int8.onnx"
    res = {"cpu": cpu_info(), "load_before": os.getloadavg(), "threads": a.threads, "size": a.size, "onnxruntime": ort.__version__}
    feeds = step_feeds(e, a.size)
    res["peaks"] = gemm_peaks(a.gemm, a.runs, a.threads)
    res["macs"] = unet_macs(e / "unet.onnx", int8, feeds, a.threads)
    s32 = OrtRunner(e / "unet.onnx", providers="cpu", name="unet", intra_op_threads=a.threads)
    s8 = OrtRunner(int8, providers="cpu", name="unet", intra_op_threads=a.threads, int8=True)
    s32.activate(), s8.activate()
    run32, run8 = (lambda: s32.infer(feeds)), (lambda: s8.infer(feeds))
    run32(), run8()
    t32, t8 = [], []
    for _ in range(a.runs):  # interleaved: load drift hits both
        t = time.perf_counter()
        run32()
        t32.append(time.perf_counter() - t)
        t = time.perf_counter()
        run8()
        t8.append(time.perf_counter() - t)
    pk, mc = res["peaks"], res["macs"]
    step32, step8 = statistics.median(t32), statistics.median(t8)
    floor32 = 2e9 * (mc["int8_gmacs"] + mc["float_gmacs"]) / (pk["fp32_gflops"] * 1e9)
    floor8 = 2e9 * mc["int8_gmacs"] / (pk["u8s8_gops"] * 1e9) + 2e9 * mc["float_gmacs"] / (pk["fp32_gflops"] * 1e9)
    res.update(step_fp32_s=step32, step_int8_s=step8, speedup=step32 / step8, floor_fp32_s=floor32, floor_int8_s=floor8,
               roofline_speedup=floor32 / floor8, int8_at_roofline=floor8 / step8, fp32_at_roofline=floor32 / step32,
               steps_fp32=t32, steps_int8=t8, load_after=os.getloadavg())
    c = res["cpu"]
    print(f"CPU: {c.get('Model name')} ({c.get('CPU(s)')} CPUs; AVX2 {c.get('avx2')}, AVX-512 {c.get('avx512f')}, VNNI {c.get('vnni')}), "
          f"onnxruntime {ort.__version__}, {a.threads} threads, load {res['load_before'][0]:.1f} -> {res['load_after'][0]:.1f}")
    print(f"peaks (N={pk['n']}): fp32 sgemm {pk['fp32_gflops']:.0f} GFLOP/s, u8s8 GEMM {pk['u8s8_gops']:.0f} GOP/s ({pk['ratio']:.2f}x)")
    print(f"UNet {a.size}x{a.size} batch 1: {2 * (mc['int8_gmacs'] + mc['float_gmacs']):.1f} GFLOP, of which "
          f"{2 * mc['int8_gmacs']:.1f} GOP in int8 layers and {2 * mc['float_gmacs']:.1f} GFLOP kept in float")
    print(f"step, median of {a.runs} interleaved: fp32 {step32:.3f}s, int8 {step8:.3f}s -> {step32 / step8:.2f}x")
    print(f"roofline: fp32 floor {floor32:.3f}s ({100 * floor32 / step32:.0f}% of the step), int8 floor {floor8:.3f}s "
          f"({100 * floor8 / step8:.0f}% of the step); the roofline allows {floor32 / floor8:.2f}x")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
