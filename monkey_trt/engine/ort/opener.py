"""The backend table's opener for ONNX Runtime (runtime.backend: "ort"): an engine directory's graphs as OrtRunners."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from monkey_trt.core.errors import MonkeyError
from monkey_trt.engine.cache_budget import ORT_FOLDER
from monkey_trt.engine.derived_cache import cache_root, source_digest as files_digest
from monkey_trt.engine.ort.providers import default_provider
from monkey_trt.engine.ort.runner import OrtRunner
from monkey_trt.enginedir.manifest import split_key
from monkey_trt.enginedir.networks import MAP_NETWORK

ORT_CACHE_FOLDER = ORT_FOLDER  # under the user cache folder (engine.derived_cache.cache_root; bounded: engine/cache_budget.py)


def ort_cache_folder(setting: Path | bool | None, providers: Sequence[str]) -> Path | None:
    """Where ORT's optimised graphs are kept for a BackendSpec's `ort_cache`: a folder -> that folder; False -> nowhere;
    True -> <user cache>/ort-optimized; None (the default) -> there where it is safe: the CPU provider alone, whose
    cached graphs give the same bits as a fresh optimisation (fp32, fp16: tests/test_cold_start.py; int8: tests/test_int8.py) and
    are keyed by the CPU; GPU providers opt in (True or a folder: not measured on a GPU yet). The TensorRT EP never
    uses it (OrtRunner: it wants the original graph)."""
    if setting is None:
        setting = tuple(providers) == ("cpu",)
    if setting is False:
        return None
    return cache_root() / ORT_CACHE_FOLDER if setting is True else Path(setting)


# The map-only UNet must give the full UNet's map bit for bit (the mask must not move). Cut after the mask layer, the
# residual sum after that layer's self-attention feeds only norm2 (in the full graph also the next residual add), so
# ORT's SkipLayerNormFusion fuses Add + LayerNormalization there and rounds differently (measured: 6e-8 on the map).
# Off for that graph only (it never fires on the full SD UNet, where every such sum has two consumers).
MAP_GRAPH_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


# -- the backend table's opener (runtime.backend: "ort") ------------------------------------------------
def open_ort_runners(root: Path, manifest, spec, networks: Sequence[str], shared: dict | None = None) -> dict[str, OrtRunner]:
    """One (not yet activated) OrtRunner per network of an engine directory, for a runtime.backend.BackendSpec.

    Each runs the graph of the spec's precision the manifest names for it (8-bit engines: fp32 besides the UNet),
    with the engine's shape profile; derived caches are keyed by the manifest's digests (nothing is written into
    `root`). An 8-bit (Q/DQ) graph gets the TensorRT EP's int8 switch (no calibration table: the scales are in it).
    `shared`: the pipeline's shared state (ORT sessions share nothing)."""
    from monkey_trt.engine.precision import check_ort_precision, quant_base

    providers = spec.providers or (default_provider(),)
    if spec.cuda_graph and providers[0] == "cpu":  # the default on a machine without CUDA: refused, not ignored
        raise MonkeyError("--cuda-graph needs a GPU execution provider first (--providers cuda or tensorrt); this "
                          "machine's onnxruntime has no CUDA, so ORT would run on the CPU: drop --cuda-graph")
    check_ort_precision(spec.precision, providers)
    base = quant_base(providers)  # 8-bit: the GPU providers run the fp16-based graph, the CPU the fp32-based one
    runners = {}
    for name in networks:
        path = manifest.path(root, name, spec.precision, base)  # EngineDirError (one line) if not exported
        entry = manifest.networks[name]
        key = manifest.run_precision(name, spec.precision, base)
        graph_precision = split_key(key)[0]
        _, sha256, _ = entry.files(key)
        runners[name] = OrtRunner(
            # a GPU-shaped 8-bit graph computes in fp16 around its Q/DQ: the TensorRT EP needs fp16 kernels for it
            path, providers=providers, name=name, fp16=spec.fp16 or key != graph_precision, tf32=spec.tf32, precision=graph_precision,
            trt_profile=entry.desc.profile_shapes(manifest.profile, manifest.dims, manifest.max_ip_images),
            cuda_graph=spec.cuda_graph and name == "unet", intra_op_threads=spec.threads or None,
            optimized_model_cache=ort_cache_folder(spec.ort_cache, providers), source_digest=files_digest(sha256),
            int8=graph_precision == "int8",
            disabled_optimizers=MAP_GRAPH_DISABLED_OPTIMIZERS if name == MAP_NETWORK else (),
            cpu_arena=spec.cpu_arena,
        )
    return runners
