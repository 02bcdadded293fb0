"""Which backend and device can run which precision: checked before anything is built or loaded (one line each).

    check_ort_precision("fp8", ("CPUExecutionProvider",))      -> MonkeyError
    check_gpu_precision("int8", (7, 0), "Tesla V100")           -> MonkeyError

* fp8 (e4m3) Q/DQ graphs run as TensorRT strongly typed plans on compute capability >= 8.9 (Ada, Hopper,
  Blackwell). ONNX Runtime's CPU and CUDA providers have no fp8 kernels (they would dequantize to fp32 and
  run slower than fp32), so fp8 is refused on `--backend ort`.
* int8 Q/DQ graphs run on ONNX Runtime's CPU provider (integer kernels), its TensorRT provider, and as
  TensorRT plans on GPUs with INT8 tensor cores (compute capability >= 7.5: Turing and later, Jetson Orin).
Lean: stdlib only.
"""

from __future__ import annotations

from monkey_trt.core.errors import MonkeyError
from monkey_trt.enginedir.manifest import CPU_BASE, GPU_BASE

INT8_MIN_CC = (7, 5)
FP8_MIN_CC = (8, 9)


def _cc(cc) -> tuple[int, int]:
    if isinstance(cc, str):
        major, _, minor = cc.partition(".")
        return int(major), int(minor or 0)
    return int(cc[0]), int(cc[1])


def check_ort_precision(precision: str, providers=()) -> None:
    """ONNX Runtime runs fp32/fp16/int8 graphs; fp8 is refused (no fp8 kernels in its CPU/CUDA providers)."""
    if precision == "fp8":
        raise MonkeyError("--precision fp8 runs as TensorRT plans only (--backend trt, GPU compute capability >= 8.9): "
                          "ONNX Runtime has no fp8 kernels; on the CPU use --precision int8")


def quant_base(providers) -> str:
    """The base of the 8-bit graphs ONNX Runtime runs with `providers` (the first one decides, as ORT places nodes
    there first): the fp16-based GPU graph for CUDA/TensorRT, the fp32-based CPU graph for the CPU provider.
    TensorRT plans always build the GPU graph (enginedir/plans.py), OpenVINO the CPU one."""
    return CPU_BASE if not providers or providers[0] == "cpu" else GPU_BASE


def check_gpu_precision(precision: str, compute_capability, device_name: str = "this GPU") -> None:
    """TensorRT plans: fp8 needs compute capability >= 8.9, int8 >= 7.5 (INT8 tensor cores)."""
    need = {"fp8": FP8_MIN_CC, "int8": INT8_MIN_CC}.get(precision)
    if need is None:
        return
    cc = _cc(compute_capability)
    if cc < need:
        what = "FP8 tensor cores (Ada, Hopper or later)" if precision == "fp8" else "INT8 tensor cores (Turing or later)"
        alt = "int8" if precision == "fp8" and cc >= INT8_MIN_CC else "fp16"
        raise MonkeyError(f"--precision {precision} needs {what}, compute capability >= {need[0]}.{need[1]}; "
                          f"{device_name} has {cc[0]}.{cc[1]}: use --precision {alt}")
