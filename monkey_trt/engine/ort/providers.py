"""ONNX Runtime's execution providers: names, fallback chains, what this build offers, versions, cores.

Providers are named "cpu", "cuda" or "tensorrt". A single name expands to its usual fallback chain
("tensorrt" -> TensorRT, CUDA, CPU; "cuda" -> CUDA, CPU); a sequence is taken as given (CPU is appended so
unsupported nodes still run). Asking for a provider this onnxruntime build lacks raises `BackendUnavailable`
naming what is installed. Lean: stdlib (onnxruntime imported when asked).
"""

from __future__ import annotations

import hashlib
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path

from monkey_trt.core.errors import BackendUnavailable, MonkeyError


PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


_FALLBACK = {"cpu": ("cpu",), "cuda": ("cuda", "cpu"), "tensorrt": ("tensorrt", "cuda", "cpu")}


def import_ort():
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - onnxruntime is a core dependency
        raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu)") from None
    return ort


def ort_version() -> str | None:
    """The installed onnxruntime version, or None."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    return str(ort.__version__)


def available_providers() -> list[str]:
    """Execution providers the installed onnxruntime offers (ORT names, e.g. "CPUExecutionProvider")."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def default_provider() -> str:
    """The provider chain `generate` uses when none is named: CUDA when this onnxruntime has it, else CPU.

    The TensorRT EP is opt-in (`--providers tensorrt`): it builds engines on first use and its fp16
    mode changes the math.
    """
    return "cuda" if PROVIDER_NAMES["cuda"] in available_providers() else "cpu"


def physical_cores() -> int:
    """Physical cores usable by this process (hyper-threads not counted); at least 1."""
    try:
        usable = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = set(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    for cpu in usable:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
        except OSError:
            cores.add(("?", str(cpu)))
    return max(1, min(len(cores), len(usable)))


def cpu_identity() -> dict:
    """What ORT's CPU graph optimisations depend on: the CPU model and its feature flags (NCHWc block size, integer
    kernels), read from /proc/cpuinfo where there is one; platform's names elsewhere."""
    model, flags = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = " ".join(sorted(value.split()))
    except OSError:
        pass
    return {"machine": platform.machine(), "model": model or platform.processor(),
            "flags": hashlib.sha256(flags.encode()).hexdigest()[:16]}


def resolve_providers(providers: str | Sequence[str]) -> list[str]:
    """Short names ("cpu", "cuda", "tensorrt") -> the ORT provider chain; BackendUnavailable if one is missing."""
    names = _FALLBACK.get(providers, (providers,)) if isinstance(providers, str) else tuple(providers)
    if not names:
        raise MonkeyError("no execution provider given (choose among cpu, cuda, tensorrt)")
    chain: list[str] = []
    for n in names:
        key = str(n).lower()
        if key not in PROVIDER_NAMES:
            raise MonkeyError(f"unknown execution provider {n!r} (choose among {', '.join(PROVIDER_NAMES)})")
        if PROVIDER_NAMES[key] not in chain:
            chain.append(PROVIDER_NAMES[key])
    if PROVIDER_NAMES["cpu"] not in chain:
        chain.append(PROVIDER_NAMES["cpu"])
    have = available_providers()
    missing = [p for p in chain if p not in have]
    if missing:
        raise BackendUnavailable(
            f"onnxruntime {ort_version()} has no {', '.join(missing)} (installed: {', '.join(have) or 'none'}); "
            "for GPUs: pip uninstall onnxruntime && pip install 'monkey-trt[gpu]'"
        )
    return chain


def shape_text(shapes: Mapping[str, Sequence[int]]) -> str:
    """{"x": (1, 8)} -> "x:1x8": the TensorRT EP's trt_profile_*_shapes format."""
    return ",".join(f"{name}:{'x'.join(str(int(d)) for d in shape)}" for name, shape in shapes.items())


def version_tuple(text: str | None) -> tuple[int, ...]:
    out = []
    for part in (text or "0").split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


# ONNX Runtime versions from which one session keeps one CUDA graph per RunOptions "gpu_graph_id" (CUDA EP)
GRAPH_IDS_SINCE = (1, 18)


def flag(on: bool) -> str:
    """Provider option booleans as ORT parses them ("1"/"0": every version accepts these)."""
    return "1" if on else "0"
