"""monkey-trt: an inference engine for MONKEY (masked IP-Adapter personalization on SD1.5/LCM).

    from monkey_trt import MonkeyPipeline
    with MonkeyPipeline.from_engine_dir("engines/sd15", backend="ort") as pipe:
        out = pipe.generate("a dog on the beach", "dog.jpg", seed=0)
        pair = pipe.generate("a dog and a cat on the beach", ["dog.jpg", "cat.jpg"], background_image="beach.jpg")
    out.save("out/dog"); out.image_pil().show(); pair.masks[1].coverage

Names are imported lazily, so `import monkey_trt` stays cheap and never pulls in torch.
"""

from __future__ import annotations

import importlib

from monkey_trt.core import __version__

_EXPORTS = {
    "MonkeyPipeline": "monkey_trt.runtime.pipeline",
    "ModelSource": "monkey_trt.core.config",
    "BackendSpec": "monkey_trt.runtime.backend",
    "open_backend": "monkey_trt.commands.backends",
    "MonkeyOutput": "monkey_trt.runtime.result",
    "MonkeyConfig": "monkey_trt.core.config",
    "Request": "monkey_trt.core.config",
    "MonkeyError": "monkey_trt.core.errors",
    "EngineDirError": "monkey_trt.core.errors",
    "BackendUnavailable": "monkey_trt.core.errors",
    "load_manifest": "monkey_trt.enginedir.load",
    "load_subject": "monkey_trt.runtime.images",
    "load_subjects": "monkey_trt.runtime.images",
}
__all__ = ["__version__", "MonkeyPipeline", "BackendSpec", "ModelSource", "open_backend", "MonkeyOutput", "MonkeyConfig", "Request", "MonkeyError",
           "EngineDirError", "BackendUnavailable", "load_manifest", "load_subject", "load_subjects"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'monkey_trt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
