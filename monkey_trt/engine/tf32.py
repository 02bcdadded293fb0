"""fp32 means fp32 on NVIDIA GPUs: TF32 tensor cores only when asked for (`tf32=True`, `--tf32`).

TF32 rounds fp32 matmul/convolution operands to 10 mantissa bits. The upstream defaults allow it:
- ONNX Runtime's CUDA EP: provider option "use_tf32", on by default since ORT 1.18
  (onnxruntime/core/providers/cuda/cuda_execution_provider_info.h `bool use_tf32{true}`; key kUseTF32 in
  cuda_execution_provider_info.cc; docs: onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html);
- ONNX Runtime's TensorRT EP: no TF32 option (include/onnxruntime/core/providers/tensorrt/tensorrt_provider_options.h);
  TensorRT's BuilderFlag.TF32 is set in a new builder config (NvInfer.h: "kTF32 ... Enabled by default");
- TensorRT itself: monkey-trt's plans are built with TF32 cleared (Polygraphy CreateConfig(tf32=False)
  calls config.clear_flag(BuilderFlag.TF32)) unless `build --tf32`;
- PyTorch on CUDA: cuDNN convolutions allow TF32 by default (reference/device.torch_tf32 sets IEEE fp32).
Where no option exists, NVIDIA_TF32_OVERRIDE=0 is the documented switch: NVIDIA's libraries read it when they
initialise and then never use TF32 for fp32, whatever a flag says (TensorRT developer guide, "TF32").
"""

from __future__ import annotations

import os

from monkey_trt.core.errors import MonkeyError

TF32_ENV = "NVIDIA_TF32_OVERRIDE"
USE_TF32_SINCE = (1, 18)  # ORT versions whose CUDA EP has "use_tf32"
CPU = "CPUExecutionProvider"


def _has_option(ort_version: str | None) -> bool:
    parts = []
    for p in (ort_version or "0").split(".")[:2]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts) >= USE_TF32_SINCE


def _needs_env(providers, tf32: bool, ort_version: str | None) -> bool:
    """TF32 off with no provider option for it: the TensorRT EP, or a CUDA EP older than "use_tf32"."""
    return (providers[0] != CPU and not tf32
            and ("TensorrtExecutionProvider" in providers or not _has_option(ort_version)))


def cuda_tf32_option(providers, tf32: bool, ort_version: str | None) -> dict:
    """The CUDA EP's TF32 option for a session on `providers` (ORT names): {"use_tf32": "0"|"1"}, or {} where the
    installed ORT has no such option (then NVIDIA_TF32_OVERRIDE does it: `keep_tf32_off`)."""
    return {"use_tf32": "1" if tf32 else "0"} if _has_option(ort_version) else {}


def ort_tf32_mode(providers, tf32: bool, ort_version: str | None) -> str:
    """What result.json records: "cpu", "allowed", "off: use_tf32=0" or "off: NVIDIA_TF32_OVERRIDE=0"."""
    if providers[0] == CPU:
        return "cpu"
    if tf32:
        return "allowed"
    return f"off: {TF32_ENV}=0" if _needs_env(providers, tf32, ort_version) else "off: use_tf32=0"


def keep_tf32_off(name: str, providers, tf32: bool, ort_version: str | None) -> None:
    """Before a GPU session starts, where no option can keep fp32 off TF32: NVIDIA_TF32_OVERRIDE=0 in this process.
    A different value the user set contradicts an fp32 session without the tf32 opt-in: one line."""
    if not _needs_env(providers, tf32, ort_version):
        return
    have = os.environ.get(TF32_ENV)
    if have is None:
        os.environ[TF32_ENV] = "0"
    elif have != "0":
        raise MonkeyError(f"{name}: {TF32_ENV}={have} in the environment allows TF32, but this session runs fp32 without "
                          "the tf32 opt-in: unset it, or pass --tf32 (tf32=True)")
