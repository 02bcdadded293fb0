"""An engine directory's TensorRT plans on this GPU: find the plans for its precision, the installed TensorRT and
this device (`find_plan_dir`), open them verified and sharing one activation pool (`open_trt_runners`; the backend
table's opener `open_engine_dir_plans`), and TensorRT's memory numbers for doctor and bench (`memory_report`,
`plan_memory`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from monkey_trt.engine.precision import check_gpu_precision
from monkey_trt.engine.runner import Runner
from monkey_trt.engine.trt import cuda, lib
from monkey_trt.engine.trt.engine import TrtEngine
from monkey_trt.engine.trt.memory import ActivationMemory
from monkey_trt.enginedir import plans
from monkey_trt.enginedir.networks import NETWORKS


# -- runtime entry -------------------------------------------------------------------------
def find_plan_dir(engine_dir: str | os.PathLike, manifest, precision: str = "fp32") -> Path:
    """The plans for this engine directory's `precision` graphs, the installed TensorRT and this GPU
    (enginedir.plans.find_plan_dir with the live TensorRT version and device)."""
    trt = lib.require_tensorrt()
    dev = cuda.require_cuda_device()
    check_gpu_precision(precision, dev.compute_capability, dev.name)
    return plans.find_plan_dir(engine_dir, manifest, precision, trt.__version__, dev.name, dev.compute_capability)


def open_trt_runners(engine_dir: str | os.PathLike, manifest, cuda_graph: bool = False, precision: str = "fp32",
                     verify: str = "sha256", networks=NETWORKS, activation_memory: ActivationMemory | None = None
                     ) -> dict[str, "TrtEngine"]:
    """One TrtEngine per network of `networks` (plans verified: only theirs), sharing one ActivationMemory (`activation_memory`:
    a pipeline's, e.g. for an 8-bit engine's fp32 mask-pass UNet); CUDA graphs only for the UNet's fixed-shape steps."""
    folder = find_plan_dir(engine_dir, manifest, precision)
    plans.verify_plans(Path(engine_dir), folder, verify, networks)
    shared = activation_memory if activation_memory is not None else ActivationMemory()
    return {n: TrtEngine(folder / f"{n}.plan", name=n, use_cuda_graph=cuda_graph and n == "unet", activation_memory=shared)
            for n in networks}


def open_engine_dir_plans(root: str | os.PathLike, manifest, spec, networks: Sequence[str] = NETWORKS,
                          shared: dict | None = None) -> dict[str, "TrtEngine"]:
    """The backend table's opener (runtime.backend: "trt"): `networks`' plans for a runtime.backend.BackendSpec. Every
    plan a pipeline opens (an 8-bit engine's fp32 mask-pass UNet too) joins one activation pool, kept in `shared`."""
    pool = (shared if shared is not None else {}).setdefault("trt_activation_memory", ActivationMemory())
    return open_trt_runners(root, manifest, cuda_graph=spec.cuda_graph, precision=spec.precision, verify=spec.verify,
                            networks=tuple(networks), activation_memory=pool)


def _memory_summary(networks: dict[str, dict], groups: list[list[str]]) -> dict:
    return {
        "networks": networks,
        "activation_shared_bytes": sum(max(networks[n]["activation_bytes"] for n in g) for g in groups if g),
        "activation_sum_bytes": sum(m["activation_bytes"] for m in networks.values()),
    }


def memory_report(runners: Mapping[str, Runner]) -> dict:
    """TensorRT's memory numbers for a pipeline's runners (doctor, bench): `networks` (per network
    `TrtEngine.memory()`), `activation_shared_bytes` (the activation memory they need, sharing: the
    largest network's per ActivationMemory), `activation_allocated_bytes` (allocated now) and
    `activation_sum_bytes` (what private per-engine activation memory would sum to). Other runners are left out."""
    engines = {n: r for n, r in runners.items() if isinstance(r, TrtEngine)}
    pools: dict[int, tuple[ActivationMemory, list[str]]] = {}
    for n, e in engines.items():
        pools.setdefault(id(e.activation_memory), (e.activation_memory, []))[1].append(n)
    out = _memory_summary({n: e.memory() for n, e in engines.items()}, [names for _p, names in pools.values()])
    out["activation_allocated_bytes"] = sum(p.nbytes for p, _names in pools.values())
    return out


def plan_memory(engine_dir: str | os.PathLike, manifest, precision: str = "fp32") -> dict:
    """memory_report's numbers for an engine directory's plans, as open_trt_runners would share them
    (each plan deserialised in turn, no execution context created, nothing allocated for activations)."""
    folder = find_plan_dir(engine_dir, manifest, precision)
    networks = {}
    for n in plans.plan_networks(manifest):
        eng = TrtEngine(folder / f"{n}.plan", name=n)
        try:
            eng.load()
            networks[n] = eng.memory()
        finally:
            eng.deactivate()
    out = _memory_summary(networks, [list(networks)])
    out["activation_allocated_bytes"] = 0
    return out
