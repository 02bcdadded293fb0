"""monkey-trt: an inference engine for MONKEY (masked IP-Adapter personalization on SD1.5/LCM).

    from monkey_trt import MonkeyPipeline
    with MonkeyPipeline.from_engine_dir("engines/sd15", backend="ort") as pipe:
        out = pipe.generate("a dog on the beach", "dog.jpg", seed=0)
    out.save("out/dog"); out.image_pil().show()

Names are imported lazily, so `import monkey_trt` stays cheap and never pulls in torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "MonkeyPipeline": "monkey_trt.runtime.pipeline",
    "RuntimeOptions": "monkey_trt.runtime.pipeline",
    "MonkeyOutput": "monkey_trt.runtime.result",
    "MonkeyConfig": "monkey_trt.config",
    "Request": "monkey_trt.config",
    "MonkeyError": "monkey_trt.errors",
    "EngineDirError": "monkey_trt.errors",
    "BackendUnavailable": "monkey_trt.errors",
    "load_manifest": "monkey_trt.runtime.manifest",
    "load_subject": "monkey_trt.runtime.images",
}
__all__ = ["__version__", "MonkeyPipeline", "RuntimeOptions", "MonkeyOutput", "MonkeyConfig", "Request", "MonkeyError",
           "EngineDirError", "BackendUnavailable", "load_manifest", "load_subject"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'monkey_trt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
