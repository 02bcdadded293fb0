"""fp32 means fp32 on NVIDIA GPUs: TF32 tensor cores only when asked for (`tf32=True`, `--tf32`).

TF32 rounds fp32 matmul/convolution operands to 10 mantissa bits. The upstream defaults allow it:
- ONNX Runtime's CUDA EP: provider option "use_tf32", on by default since ORT 1.18
  (onnxruntime/core/providers/cuda/cuda_execution_provider_info.h `bool use_tf32{true}`; key kUseTF32 in
  cuda_execution_provider_info.cc; docs: onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html);
- ONNX Runtime's TensorRT EP: no TF32 option (include/onnxruntime/core/providers/tensorrt/tensorrt_provider_options.h);
  TensorRT's BuilderFlag.TF32 is set in a new builder config;
- TensorRT itself: monkey-trt's plans are built with TF32 cleared (Polygraphy CreateConfig(tf32=False)
  calls config.clear_flag(BuilderFlag.TF32)) unless `build --tf32`.
Where no option exists, NVIDIA_TF32_OVERRIDE=0 is the documented switch: NVIDIA's libraries read it when they
initialise and then never use TF32 for fp32, whatever a flag says (TensorRT developer guide, "TF32").
"""

from __future__ import annotations

import os

from monkey_trt.core.errors import MonkeyError

TF32_ENV = "NVIDIA_TF32_OVERRIDE"
USE_TF32_SINCE = (1, 18)  # ORT versions whose CUDA EP has "use_tf32"


def ort_tf32(providers: list[str], tf32: bool, ort_version: tuple[int, ...]) -> tuple[str | None, bool]:
    """For an ORT session on `providers` (ORT names): (the CUDA EP's "use_tf32" value or None when it has no such
    option, whether NVIDIA_TF32_OVERRIDE=0 must hold). A CPU-first chain needs neither."""
    if providers[0] == "CPUExecutionProvider":
        return None, False
    option = ("1" if tf32 else "0") if ort_version >= USE_TF32_SINCE else None
    needs_env = not tf32 and ("TensorrtExecutionProvider" in providers or option is None)
    return option, needs_env


def ort_tf32_mode(providers: list[str], tf32: bool, ort_version: tuple[int, ...]) -> str:
    """What result.json records: "cpu", "allowed", "off: use_tf32=0" or "off: NVIDIA_TF32_OVERRIDE=0"."""
    if providers[0] == "CPUExecutionProvider":
        return "cpu"
    if tf32:
        return "allowed"
    return f"off: {TF32_ENV}=0" if ort_tf32(providers, tf32, ort_version)[1] else "off: use_tf32=0"


def keep_tf32_off(name: str) -> None:
    """Set NVIDIA_TF32_OVERRIDE=0 in this process before a GPU session starts. A different value the user set
    contradicts an fp32 session without the tf32 opt-in: one line."""
    have = os.environ.get(TF32_ENV)
    if have is None:
        os.environ[TF32_ENV] = "0"
    elif have != "0":
        raise MonkeyError(f"{name}: {TF32_ENV}={have} in the environment allows TF32, but this session runs fp32 without "
                          "the tf32 opt-in: unset it, or pass --tf32 (tf32=True)")

