"""Where the PyTorch backends run: the torch device, dtype and thread count a user asked for, checked."""

from __future__ import annotations

from monkey_trt.core.config import check_threads
from monkey_trt.core.errors import MonkeyError
from monkey_trt.runtime.backend import TORCH_DTYPES  # fp16 changes the math: opt-in


def check_torch_device(device: str) -> None:
    """cpu, cuda or cuda:N that torch can use here; MonkeyError otherwise."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise MonkeyError(f"--device must be cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise MonkeyError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise MonkeyError(f"--device {device} asked for, but torch sees {torch.cuda.device_count()} CUDA GPU(s) here")


def set_torch_threads(threads: int) -> None:
    """torch's intra-op thread count (0 = leave torch's default). ORT takes BackendSpec.threads."""
    check_threads(threads)
    if threads:
        import torch

        torch.set_num_threads(threads)




def torch_tf32(device: str, tf32: bool) -> None:
    """On CUDA: TF32 for fp32 matmuls and cuDNN convolutions only when asked for (torch's cuDNN default allows it;
    engine/tf32.py). Process-wide, like torch's own switches."""
    if not device.startswith("cuda"):
        return
    import torch

    mode = "tf32" if tf32 else "ieee"
    matmul, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9
        matmul.fp32_precision = mode
        conv.fp32_precision = mode
    else:
        matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


def check_dtype(dtype: str) -> str:
    """`--dtype` of the torch and published backends: fp32 or fp16."""
    if dtype not in TORCH_DTYPES:
        raise MonkeyError(f"--dtype must be fp32 or fp16, got {dtype!r}")
    return dtype


def torch_dtype(dtype: str):
    """`--dtype` (checked) -> torch.float32 | torch.float16."""
    import torch

    return torch.float16 if check_dtype(dtype) == "fp16" else torch.float32
