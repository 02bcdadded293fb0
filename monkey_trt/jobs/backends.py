"""`open_backend(spec, engine_dir, models)`: the one way every face opens a backend.

torch: the PyTorch reference (imported here, lazily: only the torch backend loads torch); ort / trt: the lean
runtime on an engine directory (runtime.pipeline.open_engine). The spec (runtime.backend.BackendSpec) is
already validated; what is left to check needs the machine (the CUDA device, the installed providers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from monkey_trt.core.config import DEFAULT_BASE, DEFAULT_IP_ADAPTER, DEFAULT_IP_WEIGHT
from monkey_trt.core.errors import MonkeyError
from monkey_trt.runtime.backend import BackendSpec
from monkey_trt.runtime.pipeline import open_engine


@dataclass(frozen=True)
class ModelSource:
    """Where the torch reference loads its weights from (hub ids or folders)."""

    base: str = DEFAULT_BASE
    ip_adapter: str = DEFAULT_IP_ADAPTER
    ip_weight: str = DEFAULT_IP_WEIGHT


def open_backend(spec: BackendSpec, engine_dir: Path | str | None = None, models: ModelSource | None = None):
    """The pipeline of `spec`: callable as `pipe(request, subject, **kwargs)`, with `.dims`, `.info()`, `.close()`."""
    if not isinstance(spec, BackendSpec):
        raise MonkeyError(f"open_backend needs a BackendSpec, got {type(spec).__name__}")
    if spec.backend == "published":
        raise MonkeyError("the published baseline runs in `monkey-trt bench` only")
    if spec.backend == "torch":
        return _open_torch(spec, models or ModelSource())
    if engine_dir is None:
        raise MonkeyError(f"--backend {spec.backend} needs --engine-dir (make one with `monkey-trt export`)")
    return open_engine(spec, engine_dir)


def _open_torch(spec: BackendSpec, models: ModelSource):
    from monkey_trt.core.extras import require_extra

    require_extra("export", "the torch backend")
    from monkey_trt.reference.device import (
        check_torch_device,
        set_torch_threads,
        torch_dtype,
        torch_tf32,
    )
    from monkey_trt.reference.pipeline import ReferencePipeline

    check_torch_device(spec.device)
    set_torch_threads(spec.threads)
    torch_tf32(spec.device, spec.tf32)  # fp32 is fp32 on CUDA unless asked (torch's cuDNN default allows TF32)
    pipe = ReferencePipeline.from_pretrained(models.base, models.ip_adapter, models.ip_weight, device=spec.device,
                                             dtype=torch_dtype(spec.dtype))
    if spec.cuda_graph:
        pipe.enable_cuda_graphs()
    pipe.spec = spec
    return pipe
