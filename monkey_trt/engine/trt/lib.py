"""The TensorRT library: its lazy import (BackendUnavailable in one line when absent), version, shared Logger."""

from __future__ import annotations

import importlib.util

from monkey_trt.core.errors import BackendUnavailable, first_line

TRT_MISSING = "TensorRT is not installed: pip install 'monkey-trt[gpu]' on a machine with an NVIDIA GPU"


def require_tensorrt():
    """The `tensorrt` module, or BackendUnavailable (one line)."""
    try:
        import tensorrt as trt
    except ImportError as e:
        if importlib.util.find_spec("tensorrt") is None:
            raise BackendUnavailable(TRT_MISSING) from None
        raise BackendUnavailable(f"TensorRT is installed but does not load ({type(e).__name__}: {first_line(e)})") from None
    except Exception as e:  # broken install: missing libnvinfer, wrong CUDA, ...
        raise BackendUnavailable(f"TensorRT is installed but does not load ({type(e).__name__}: {first_line(e)})") from None
    return trt


def tensorrt_version() -> str | None:
    """The importable TensorRT's version, or None."""
    try:
        return str(require_tensorrt().__version__)
    except BackendUnavailable:
        return None


_LOGGERS: dict = {}


def trt_logger(trt, severity=None):
    """One `trt.Logger` per severity, shared by every builder/runtime of the process."""
    sev = severity if severity is not None else trt.Logger.WARNING
    if sev not in _LOGGERS:
        _LOGGERS[sev] = trt.Logger(sev)  # must outlive every builder/runtime made with it
    return _LOGGERS[sev]
