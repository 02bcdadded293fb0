"""The physical floor of each network on this CPU: its multiply-adds / the GEMM peaks OpenVINO reaches here.

    python benchmarks/openvino_floor.py --engine-dir ENGINE [--size 256] [--gemm 2048] [--runs 5] [--threads 2] [--json OUT]

In one process: the CPU (model, VNNI/BF16/AMX flags, load average before and after); OpenVINO's peaks on an
N x N x N MatMul with f32 kernels, bf16 kernels and int8 kernels (a Q/DQ MatMul, which OpenVINO's low-precision
transformations run as an integer GEMM); the multiply-adds of every MatMul and convolution of each network's fp32
graph at batch 1 and --size (shapes propagated by OpenVINO); and per network the floor of one call at
each peak (2 ops per multiply-add). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from monkey_trt.engine.openvino import cpu_abilities, cpu_flags, openvino_version
from monkey_trt.enginedir.load import load_manifest
from monkey_trt.enginedir.networks import symbol_sizes


def gemm_peaks(n: int, runs: int, threads: int) -> dict:
    """GFLOP/s (f32, bf16) and GOP/s (int8) of OpenVINO's CPU plugin on one N x N x N MatMul."""
    import openvino as ov

    rng = np.random.default_rng(0)
    w = rng.standard_normal((n, n)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["a", "w"], ["y"])]
    inits = [numpy_helper.from_array(w, "w")]
    q_nodes = [helper.make_node("QuantizeLinear", ["a", "sa", "za"], ["aq"]),
               helper.make_node("DequantizeLinear", ["aq", "sa", "za"], ["ad"]),
               helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"]),
               helper.make_node("MatMul", ["ad", "wd"], ["y"])]
    q_inits = [numpy_helper.from_array(np.array(0.05, np.float32), "sa"), numpy_helper.from_array(np.array(0, np.uint8), "za"),
               numpy_helper.from_array(rng.integers(-127, 128, (n, n), dtype=np.int8), "wq"),
               numpy_helper.from_array(np.array(0.01, np.float32), "sw"), numpy_helper.from_array(np.array(0, np.int8), "zw")]
    a = np.abs(rng.standard_normal((n, n))).astype(np.float32)
    core, out = ov.Core(), {"n": n}
    with tempfile.TemporaryDirectory(prefix="monkey-peaks-") as d:
        for label, (ns, inits_, prec) in {"f32": (nodes, inits, "f32"), "bf16": (nodes, inits, "bf16"),
                                          "int8": (q_nodes, q_inits, "f32")}.items():
            if prec == "bf16" and "BF16" not in cpu_abilities().get("capabilities", []):
                continue
            g = helper.make_graph(ns, "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])], inits_)
            path = Path(d) / f"{label}.onnx"
            onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
            c = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": prec, "PERFORMANCE_HINT": "LATENCY",
                                                       "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(threads)})
            r = c.create_infer_request()
            r.infer({"a": a})
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                r.infer({"a": a})
                times.append(time.perf_counter() - t)
            out[f"{label}_gops"] = round(2.0 * n ** 3 / statistics.median(times) / 1e9, 1)
    return out


def graph_macs(path: Path, feeds_shapes: dict[str, list[int]]) -> float:
    """GMACs of every MatMul and (group) convolution of a graph at static input shapes (OpenVINO's shape propagation)."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    model.reshape({i.get_any_name(): feeds_shapes[i.get_any_name()] for i in model.inputs})
    total = 0
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in ("MatMul", "Convolution", "GroupConvolution"):
            continue
        out = list(op.get_output_partial_shape(0).to_shape())
        a, w = list(op.get_input_partial_shape(0).to_shape()), list(op.get_input_partial_shape(1).to_shape())
        if kind == "MatMul":
            k = a[-2] if op.get_attributes().get("transpose_a") else a[-1]
        elif kind == "Convolution":
            k = int(np.prod(w[1:]))  # [Cout, Cin, kh, kw]
        else:
            k = int(np.prod(w[2:]))  # [G, Cout/G, Cin/G, kh, kw]
        total += int(np.prod(out)) * k
    return total / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine-dir", type=Path, required=True)
    ap.add_argument("--size", type=int, default=0)
    ap.add_argument("--gemm", type=int, default=2048)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    m = load_manifest(a.engine_dir, verify="size")
    size = a.size or m.profile.height.opt
    sizes = symbol_sizes(1, size, size, m.dims)
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model_name = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), None)
    out = {"cpu": model_name, "cpu_flags": list(cpu_flags()), "openvino": openvino_version(), "threads": a.threads,
           "size": size, "loadavg_before": os.getloadavg()[0]}
    out["peaks"] = gemm_peaks(a.gemm, a.runs, a.threads)
    out["networks"] = {}
    for name, entry in m.networks.items():
        shapes = {t.name: list(entry.desc.resolve(t.shape, sizes)) for t in entry.desc.inputs}
        gmacs = graph_macs(m.path(a.engine_dir, name, "fp32"), shapes)
        out["networks"][name] = {"gmacs": round(gmacs, 2), "floor_s": {
            k.removesuffix("_gops"): round(2 * gmacs / v, 4) for k, v in out["peaks"].items() if k.endswith("_gops")}}
    out["loadavg_after"] = os.getloadavg()[0]
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
