"""`open_backend(spec, engine_dir, models)`: the one way every face opens a backend.

The backend's row of the backend table (runtime.backend.BACKEND_TABLE) says how: an engine-directory backend
(ort, trt) is the lean runtime on `engine_dir` (runtime.pipeline.open_engine); a model backend (torch, published)
loads `models` through its row's opener (imported here, lazily: only a model backend loads torch). The spec is
already validated; what is left to check needs the machine (the CUDA device, the installed providers).
"""

from __future__ import annotations

from pathlib import Path

from monkey_trt.core.config import ModelSource
from monkey_trt.core.errors import MonkeyError
from monkey_trt.runtime.backend import BackendSpec
from monkey_trt.runtime.pipeline import open_engine

__all__ = ["ModelSource", "open_backend"]


def open_backend(spec: BackendSpec, engine_dir: Path | str | None = None, models: ModelSource | None = None, face: str = "api"):
    """The pipeline of `spec`: callable as `pipe(request, subject, **kwargs)`, with `.dims`, `.info()`, `.close()`.
    `face`: the command opening it (the published baseline is offered by bench only)."""
    if not isinstance(spec, BackendSpec):
        raise MonkeyError(f"open_backend needs a BackendSpec, got {type(spec).__name__}")
    row = spec.row
    if face not in row.faces:
        raise MonkeyError(f"the {spec.backend} backend runs in {', '.join(f'`monkey-trt {f}`' for f in row.faces)} only")
    if row.needs_engine_dir:
        if engine_dir is None:
            raise MonkeyError(f"--backend {spec.backend} needs --engine-dir (make one with `monkey-trt export`)")
        return open_engine(spec, engine_dir)
    from monkey_trt.core.extras import require_extra

    require_extra("export", f"the {spec.backend} backend")
    from monkey_trt.reference.hub import check_models_available

    check_models_available(models or ModelSource(), face="api" if face == "api" else "cli")  # before torch loads
    pipe = row.open_function()(spec, models or ModelSource())
    pipe.spec = spec
    return pipe
