"""`monkey-trt doctor`: what is installed here and which backends `generate` can use.

`doctor_report()` is a pure function returning rows; the CLI renders them. Heavy optional
packages (torch, diffusers, transformers) are looked up by their installed metadata, never
imported. `ok`: True = present and working, False = required but broken/missing,
None = optional and absent (informational).

Backend names: "ort-cpu", "ort-cuda", "ort-tensorrt" (ONNX Runtime execution providers) and
"tensorrt" (monkey-trt's own TensorRT plans).
"""

from __future__ import annotations

import importlib.util
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata

from monkey_trt.core.errors import MonkeyError, first_line


@dataclass(frozen=True)
class CheckRow:
    name: str
    ok: bool | None
    detail: str


@dataclass(frozen=True)
class GpuInfo:
    name: str
    driver: str
    memory: str
    compute_capability: str


def _dist_version(*dists: str) -> str | None:
    for d in dists:
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            continue
    return None


def nvidia_gpus(timeout: float = 10.0) -> list[GpuInfo] | None:
    """GPUs reported by nvidia-smi; None when nvidia-smi is absent or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = subprocess.run(
            [exe, "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    gpus = []
    for line in proc.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4 and parts[0]:
            gpus.append(GpuInfo(*parts[:4]))
    return gpus


def _ort_row() -> tuple[CheckRow, list[str]]:
    try:
        import onnxruntime as ort
    except Exception as e:
        ok_missing = isinstance(e, ImportError)
        detail = "not installed: pip install onnxruntime" if ok_missing else f"does not load: {first_line(e)}"
        return CheckRow("onnxruntime", False, detail), []
    providers = list(ort.get_available_providers())
    device = ""
    try:
        device = f", device {ort.get_device()}"
    except Exception:
        pass
    return CheckRow("onnxruntime", True, f"{ort.__version__} ({', '.join(providers)}{device})"), providers


def _openvino_row() -> CheckRow:
    """OpenVINO's version, what its CPU plugin offers (FP32, BF16, INT8) and the CPU's VNNI/BF16/AMX flags."""
    from monkey_trt.engine.openvino import cpu_abilities, cpu_flags, openvino_version

    version = openvino_version()
    flags = ", ".join(cpu_flags()) or "no VNNI/BF16/AMX flags"
    if version is None:
        return CheckRow("openvino", None, f"not installed (--backend openvino): pip install 'monkey-trt[openvino]'; CPU: {flags}")
    caps = cpu_abilities()
    if not caps:
        return CheckRow("openvino", False, f"{version}: its CPU plugin does not load; CPU: {flags}")
    bf16 = "bf16 yes" if "BF16" in caps["capabilities"] else "bf16 no (--precision bf16 refused)"
    return CheckRow("openvino", True, f"{version} ({caps['device']}: {', '.join(caps['capabilities'])}; {bf16}; CPU flags: {flags})")


def rows_ok(rows: list[CheckRow], name: str) -> bool:
    """Whether the row called `name` is there and ok."""
    return any(r.name == name and r.ok is True for r in rows)


def supported_range(dist: str, version: str | None) -> tuple[bool | None, str]:
    """(inside the `gpu` extra's range?, "range >=a,<b") for an installed version; (None, ...) when unknown."""
    from monkey_trt.engine.trt.api_names import SUPPORTED

    lo, hi = SUPPORTED[dist]
    spec = f"{lo},{hi}"
    if version is None:
        return None, spec
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import InvalidVersion, Version

        return Version(version) in SpecifierSet(spec), spec
    except (ImportError, InvalidVersion):
        return None, spec


def _in_range(dist: str, version: str) -> tuple[bool, str]:
    """A doctor row's (ok, detail) for an installed GPU package: outside the supported range is not ok."""
    inside, spec = supported_range(dist, version)
    if inside is False:
        return False, f"{version}: outside the supported range {spec} (pip install 'monkey-trt[gpu]')"
    return True, f"{version} (supported {spec})" if inside else f"{version} (supported {spec}; not checked)"


def _tensorrt_row() -> tuple[CheckRow, bool]:
    if importlib.util.find_spec("tensorrt") is None:
        return CheckRow("tensorrt", None, "not installed (for the TensorRT backend: pip install 'monkey-trt[gpu]')"), False
    try:
        import tensorrt as trt
    except Exception as e:
        return CheckRow("tensorrt", False, f"installed but does not load: {first_line(e)}"), False
    ok, detail = _in_range("tensorrt", str(trt.__version__))
    return CheckRow("tensorrt", ok, detail), ok


def polygraphy_pair_row(trt_version: str | None, pg_version: str | None) -> CheckRow | None:
    """The installed TensorRT + Polygraphy pair: a Polygraphy too old for this TensorRT major fails every build."""
    from monkey_trt.engine.trt.api_names import POLYGRAPHY_FOR_TENSORRT

    if trt_version is None or pg_version is None:
        return None
    try:
        from packaging.version import InvalidVersion, Version

        need = POLYGRAPHY_FOR_TENSORRT.get(Version(trt_version).major)
        if need is not None and Version(pg_version) < Version(need[0]):
            return CheckRow("tensorrt+polygraphy", False, f"polygraphy {pg_version} with tensorrt {trt_version}: {need[1]} "
                                                          f"(pip install 'polygraphy>={need[0]}')")
    except (ImportError, InvalidVersion):
        return CheckRow("tensorrt+polygraphy", None, f"tensorrt {trt_version}, polygraphy {pg_version}: not checked")
    return CheckRow("tensorrt+polygraphy", True, f"tensorrt {trt_version} with polygraphy {pg_version}")


def _cuda_python_row() -> tuple[CheckRow, bool]:
    ver = _dist_version("cuda-python", "cuda-bindings")
    found = importlib.util.find_spec("cuda") is not None
    if ver is None and not found:
        return CheckRow("cuda-python", None, "not installed (for the TensorRT backend: pip install 'monkey-trt[gpu]')"), False
    if ver is None:
        return CheckRow("cuda-python", True, "installed (version unknown)"), True
    ok, detail = _in_range("cuda-python", ver)
    return CheckRow("cuda-python", ok, detail), ok


def _gpu_package_row(name: str, dist: str, purpose: str) -> CheckRow:
    ver = _dist_version(dist)
    if ver is None:
        return CheckRow(name, None, f"not installed (optional, {purpose})")
    ok, detail = _in_range(dist, ver)
    return CheckRow(name, ok, detail)


def _optional(name: str, dist: str, purpose: str) -> CheckRow:
    ver = _dist_version(dist)
    if ver is None:
        return CheckRow(name, None, f"not installed (optional, {purpose})")
    return CheckRow(name, True, ver)


def tensorrt_memory_rows(engine_dir, manifest=None, precision: str = "fp32") -> list[CheckRow]:
    """TensorRT's own memory numbers for an engine directory's plans, in one row: per network the plan,
    weights (TensorRT >= 10.14) and activation memory, and the activations the pipeline shares (the
    largest network's) against their sum. Nothing without TensorRT, cuda-python or a GPU."""
    from pathlib import Path

    from monkey_trt.core.errors import BackendUnavailable

    try:
        from monkey_trt.engine.trt.engine_dir import plan_memory

        if manifest is None:
            from monkey_trt.enginedir.load import load_manifest

            manifest = load_manifest(Path(engine_dir))
        report = plan_memory(engine_dir, manifest, precision)
    except BackendUnavailable:
        return []
    except Exception as e:
        return [CheckRow("tensorrt memory", False, first_line(e))]

    return [CheckRow("tensorrt memory", True, memory_detail(report))]


def memory_detail(report: dict) -> str:
    """engine.trt's memory report (memory_report / plan_memory) as one line: per network the plan, weights and
    activation memory, then the activations the pipeline shares against their sum (doctor, bench)."""
    def mib(b: int) -> str:
        return f"{b / 2**20:.1f} MiB"

    parts = []
    for net, m in report["networks"].items():
        weights = f", weights {mib(m['weights_bytes'])}" if m.get("weights_bytes") is not None else ""
        parts.append(f"{net}: plan {mib(m['plan_bytes'])}{weights}, activations {mib(m['activation_bytes'])}")
    parts.append(f"activations shared {mib(report['activation_shared_bytes'])} (sum {mib(report['activation_sum_bytes'])})")
    return "; ".join(parts)


def extras_rows() -> list[CheckRow]:
    """One row per pyproject extra: complete (ok), or which of its modules are missing and the pip line (optional: None)."""
    from monkey_trt.core.extras import EXTRAS, PURPOSE, missing_modules

    rows = []
    for extra in EXTRAS:
        missing = missing_modules(extra)
        if not missing:
            rows.append(CheckRow(f"extra {extra}", True, f"installed ({PURPOSE[extra]})"))
        else:
            rows.append(CheckRow(f"extra {extra}", None, f"{', '.join(missing)} not installed ({PURPOSE[extra]}): "
                                                            f"pip install 'monkey-trt[{extra}]'"))
    return rows


def user_cache_row() -> CheckRow:
    """The user cache's derived entries against their size bound (engine/cache_budget.py)."""
    from monkey_trt.core.user_cache import BUDGET_ENV, cache_budget_bytes, cache_root
    from monkey_trt.engine.cache_budget import usage

    try:
        budget = cache_budget_bytes()
    except MonkeyError as e:
        return CheckRow("user cache", False, str(e))
    used, count = usage()
    return CheckRow("user cache", True, f"{cache_root()}: {count} derived entries, {used / 1e9:.2f} GB of {budget / 1e9:.1f} GB "
                                        f"(least recently used go first; {BUDGET_ENV} sets the bound)")


def doctor_report(engine_dir=None, precision: str = "fp32") -> list[CheckRow]:
    """One row per check; never raises, never prints. `engine_dir`: also TensorRT's memory numbers for its
    `precision` plans (a row saying why not where TensorRT cannot run here)."""
    rows: list[CheckRow] = []
    py_ok = sys.version_info >= (3, 10)
    rows.append(CheckRow("python", py_ok, f"{platform.python_version()} ({sys.executable})" + ("" if py_ok else ": need >= 3.10")))
    try:
        import numpy as np

        rows.append(CheckRow("numpy", True, str(np.__version__)))
    except Exception as e:
        rows.append(CheckRow("numpy", False, f"does not load: {first_line(e)}"))

    ort_row, providers = _ort_row()
    rows.append(ort_row)
    rows.append(_openvino_row())
    rows.append(_optional("onnx", "onnx", "for export"))
    rows.append(_gpu_package_row("polygraphy", "polygraphy", "for export and TensorRT builds"))
    if _dist_version("onnxruntime-gpu") is not None:
        rows.append(_gpu_package_row("onnxruntime-gpu", "onnxruntime-gpu", "ONNX Runtime CUDA"))
    rows.append(_optional("torch", "torch", "for export and the reference"))
    rows.append(_optional("diffusers", "diffusers", "for export and the reference"))
    rows.append(_optional("transformers", "transformers", "for export and the reference"))
    trt_row, have_trt = _tensorrt_row()
    rows.append(trt_row)
    if importlib.util.find_spec("tensorrt") is not None:
        pair = polygraphy_pair_row(_dist_version("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu12-bindings",
                                                 "tensorrt-cu13-bindings"), _dist_version("polygraphy"))
        if pair is not None:
            rows.append(pair)
    cuda_row, have_cuda_python = _cuda_python_row()
    rows.append(cuda_row)

    gpus = nvidia_gpus()
    if gpus:
        desc = "; ".join(f"{g.name}, driver {g.driver}, {g.memory}, compute {g.compute_capability}" for g in gpus)
        rows.append(CheckRow("nvidia gpu", True, desc))
    elif gpus is None:
        rows.append(CheckRow("nvidia gpu", None, "none (nvidia-smi not found or failed)"))
    else:
        rows.append(CheckRow("nvidia gpu", None, "none visible"))
    has_gpu = bool(gpus)

    backends: list[str] = []
    if "CPUExecutionProvider" in providers:
        backends.append("ort-cpu")
    if has_gpu and "CUDAExecutionProvider" in providers:
        backends.append("ort-cuda")
    if has_gpu and "TensorrtExecutionProvider" in providers:
        backends.append("ort-tensorrt")
    if has_gpu and have_trt and have_cuda_python:
        backends.append("tensorrt")
    if rows_ok(rows, "openvino"):
        backends.append("openvino-cpu")
    rows.extend(extras_rows())
    rows.append(user_cache_row())
    rows.append(CheckRow("backends", bool(backends), ", ".join(backends) if backends else "none: install onnxruntime"))
    if engine_dir is not None and "tensorrt" in backends:
        rows.extend(tensorrt_memory_rows(engine_dir, precision=precision))
    elif engine_dir is not None:
        rows.append(CheckRow("tensorrt memory", None, "not measured: needs tensorrt, cuda-python and an NVIDIA GPU"))
    return rows
