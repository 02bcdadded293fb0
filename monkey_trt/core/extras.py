"""Optional dependency groups (pyproject extras): say which one to install instead of a ModuleNotFoundError."""

from __future__ import annotations

import importlib.util

from monkey_trt.core.errors import MonkeyError

# extra -> the modules it brings (import names; "a|b": either, e.g. a package renamed between versions).
# Keep in step with pyproject.toml's [project.optional-dependencies] (tests/test_doctor.py checks the names).
EXTRAS = {
    "export": ("torch", "diffusers", "transformers", "safetensors", "onnx", "huggingface_hub"),
    "serve": ("fastapi", "uvicorn", "python_multipart|multipart", "prometheus_client"),
    "gpu": ("tensorrt", "cuda", "polygraphy", "onnx"),
    "ray": ("ray",),
    "openvino": ("openvino",),
    "dev": ("pytest", "httpx"),
}
PURPOSE = {
    "export": "export, the torch reference, tiny-model, eval",
    "serve": "monkey-trt serve",
    "gpu": "TensorRT engines, ONNX Runtime CUDA",
    "ray": "serve --ray",
    "openvino": "--backend openvino (OpenVINO CPU)",
    "dev": "the tests",
}


def _present(module: str) -> bool:
    try:
        return any(importlib.util.find_spec(m) is not None for m in module.split("|"))
    except (ImportError, ValueError):
        return False


def missing_modules(extra: str) -> list[str]:
    return [m.split("|")[0] for m in EXTRAS[extra] if not _present(m)]


def require_extra(extra: str, what: str) -> None:
    """MonkeyError naming the extra to install if any of its modules is missing (cheap: no imports)."""
    missing = missing_modules(extra)
    if missing:
        raise MonkeyError(f"{what} needs the {extra} extra ({', '.join(missing)} not installed): pip install 'monkey-trt[{extra}]'")
