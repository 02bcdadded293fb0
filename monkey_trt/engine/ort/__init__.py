"""ONNX Runtime backend: one InferenceSession per network file, behind the Runner contract.

    providers.py  execution providers: names, fallback chains, what this onnxruntime build offers, versions, cores
    runner.py     OrtRunner (session, provider options, derived caches, IO binding)
    graphs.py     CUDA-graph replay (one captured graph per input-shape set)
    opener.py     the backend table's opener: an engine directory's graphs as runners

Lean: numpy + onnxruntime only (imported when a session opens).
"""

from monkey_trt.engine.ort.opener import open_ort_runners
from monkey_trt.engine.ort.providers import (
    PROVIDER_NAMES,
    available_providers,
    default_provider,
    ort_version,
    physical_cores,
    resolve_providers,
)
from monkey_trt.engine.ort.runner import OrtRunner

__all__ = ["OrtRunner", "PROVIDER_NAMES", "available_providers", "default_provider", "open_ort_runners", "ort_version",
           "physical_cores", "resolve_providers"]
