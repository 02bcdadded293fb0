"""Optional dependency groups (pyproject extras): say which one to install instead of a ModuleNotFoundError."""

from __future__ import annotations

import importlib.util

from monkey_trt.core.errors import MonkeyError

EXTRAS = {
    "export": ("torch", "diffusers", "transformers", "safetensors", "onnx", "huggingface_hub"),
}


def missing_modules(extra: str) -> list[str]:
    return [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]


def require_extra(extra: str, what: str) -> None:
    """MonkeyError naming the extra to install if any of its modules is missing (cheap: no imports)."""
    missing = missing_modules(extra)
    if missing:
        raise MonkeyError(f"{what} needs the {extra} extra ({', '.join(missing)} not installed): pip install 'monkey-trt[{extra}]'")
