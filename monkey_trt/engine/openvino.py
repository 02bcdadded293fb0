"""OpenVINO backend: an engine directory's ONNX graphs (fp32, and the int8 Q/DQ UNet) on OpenVINO's CPU plugin.

    with OpenVinoRunner("unet.onnx", name="unet", inference_precision="f32") as unet:
        out = unet.infer({"sample": x, ...}, outputs=("noise_pred",))

Precision is explicit: OpenVINO's CPU plugin picks bf16 by itself on CPUs with AVX-512 BF16 or AMX
(`INFERENCE_PRECISION_HINT`); every runner here sets it, f32 unless bf16 was asked for (`--precision bf16`:
the fp32 UNet and VAE decoder graphs with bf16 kernels; pass 1, the mask, stays f32 with mask_pass="exact",
runtime/unet_graphs.py, and so do the encoders that feed it).
An int8 (Q/DQ) graph runs with f32 between its quantized ops (OpenVINO's low-precision transformations
turn the Q/DQ pairs into int8 kernels). Latency hint, one stream, `threads` inference threads.

One compiled model per input-shape set (static shapes, compiled the first time a shape is seen), kept in
the user cache (engine/derived_cache.py): <cache>/openvino/<key>/model.blob (+ its sha256), keyed by the
graph's manifest digest, the OpenVINO version, the CPU, the config and the shapes; written atomically,
checked against its sha256 when read, imported from a private memory map of the file (kept while the compiled
model lives: its weights are file pages the kernel can reclaim, not a second anonymous copy as an import from
bytes keeps), and replaced when it is corrupt or OpenVINO refuses it. Nothing is
written into the engine directory. The ONNX model is read at activation for its input/output names and dropped
at once, and read again only to compile (a cache miss), then dropped: a pipeline activates all its runners
before the first compile, and none holds its read graph meanwhile (at sd15 size a read UNet graph is 3.4 GB).

Lean: numpy + openvino (the `openvino` extra), imported when a runner is activated.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from monkey_trt.core.atomic import sha256_file, write_bytes_atomic
from monkey_trt.core.errors import BackendUnavailable, MonkeyError, first_line
from monkey_trt.engine.cache_budget import (OPENVINO_FOLDER, OPENVINO_KIND, RECORD_NAME, enforce_budget, in_default_root,
                                            mark_used)
from monkey_trt.engine.derived_cache import digest, keyed_folder
from monkey_trt.engine.derived_record import check_record, remove_recorded, write_record
from monkey_trt.engine.derived_cache import source_digest as files_digest
from monkey_trt.engine.runner import Runner, StaticInputs, TensorDesc
from monkey_trt.enginedir.networks import MAP_NETWORK

__all__ = ["OpenVinoRunner", "INFERENCE_PRECISIONS", "cpu_abilities", "open_openvino_runners", "openvino_version"]

EXTRA_HINT = "pip install 'monkey-trt[openvino]'"
INFERENCE_PRECISIONS = {"f32": "FP32", "bf16": "BF16"}  # INFERENCE_PRECISION_HINT -> the CPU capability it needs
# --precision bf16: the networks on bf16 kernels. Only what runs after the mask or in pass 2: the encoders feed pass 1
# (the mask), so they stay f32; the map-only UNet is opened at the mask pass's precision (f32 with mask_pass="exact").
BF16_NETWORKS = ("unet", MAP_NETWORK, "vae_decoder")
CPU_FLAGS = ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_fp16")  # /proc/cpuinfo names


BLOB = "model.blob"  # a compiled model in its cache entry (engine/cache_budget.py: the entry's record lists it)

def import_openvino():
    """The openvino module, or BackendUnavailable (one line) naming the extra."""
    try:
        import openvino
    except ImportError:
        raise BackendUnavailable(f"--backend openvino needs OpenVINO (not installed): {EXTRA_HINT}") from None
    return openvino


def openvino_version() -> str | None:
    """The installed OpenVINO version, or None."""
    try:
        import openvino
    except ImportError:
        return None
    return str(openvino.__version__).split("-")[0]


def cpu_flags() -> tuple[str, ...]:
    """The CPU's int8/bf16 abilities from /proc/cpuinfo (Linux; () elsewhere): VNNI, AVX-512 BF16, AMX."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    for line in text.splitlines():
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            return tuple(f for f in CPU_FLAGS if f in have)
    return ()


def cpu_abilities() -> dict:
    """What OpenVINO's CPU plugin says it can do here: {"device", "capabilities"} (e.g. FP32, BF16, INT8), or {}."""
    try:
        ov = import_openvino()
        core = ov.Core()
        return {"device": str(core.get_property("CPU", "FULL_DEVICE_NAME")),
                "capabilities": [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]}
    except Exception:  # openvino missing or its CPU plugin refuses: the caller reports what it has
        return {}


def _capabilities(core) -> list[str]:
    """The CPU plugin's OPTIMIZATION_CAPABILITIES (FP32, BF16, INT8, ...)."""
    return [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def _dim(d) -> int:
    return d.get_length() if d.is_static else -1


def _desc(port) -> TensorDesc:
    shape = tuple(_dim(d) for d in port.get_partial_shape())
    return TensorDesc(port.get_any_name(), np.dtype(port.get_element_type().to_dtype()).name, shape)


class OpenVinoRunner(Runner):
    """One ONNX graph compiled by OpenVINO for the CPU, once per input-shape set.

    Args:
        model_path: the .onnx file (external data next to it is found by OpenVINO's ONNX frontend).
        name: label used in error messages (default: the file stem).
        inference_precision: "f32" (exact: the default everywhere) | "bf16" (opt-in; needs a CPU with bf16).
        threads: INFERENCE_NUM_THREADS (0: OpenVINO's default, the physical cores).
        profile: input name -> (min, opt, max) shapes (the engine directory's profile): `infer` refuses others.
        cache_root: the root of the compiled-model cache (default: the user cache folder, derived_cache.cache_root()).
        source_digest: the digest of the graph files (the manifest's sha256s); default: hashed when first needed.
    """

    backend = "openvino"

    def __init__(self, model_path: str | os.PathLike, *, name: str | None = None, inference_precision: str = "f32",
                 threads: int = 0, profile: Mapping[str, tuple] | None = None, cache_root: str | os.PathLike | None = None,
                 source_digest: str | None = None) -> None:
        if inference_precision not in INFERENCE_PRECISIONS:
            raise MonkeyError(f"inference_precision must be one of {', '.join(INFERENCE_PRECISIONS)}, got {inference_precision!r}")
        self.model_path = Path(model_path)
        self.name = name or self.model_path.stem
        self.inference_precision = inference_precision
        self.threads = int(threads or 0)
        self.profile = {n: tuple(tuple(int(d) for d in s) for s in mmo) for n, mmo in (profile or {}).items()}
        self.cache_root = Path(cache_root) if cache_root is not None else None
        self._source_digest = source_digest
        self._core = None
        self._compiled: dict[tuple, tuple] = {}  # input shapes -> (compiled model, its infer request)
        self._maps: list[np.memmap] = []  # the cached blobs the compiled models were imported from; freed after them
        self._inputs: list[TensorDesc] = []
        self._outputs: list[TensorDesc] = []
        self.cache_hits = 0  # compiled models imported from the cache (tests, bench)

    # -- what callers may ask --------------------------------------------------------------
    @property
    def providers(self) -> tuple[str, ...]:
        return (f"OpenVINO CPU ({self.inference_precision})",)

    @property
    def is_active(self) -> bool:
        return self._core is not None

    def input_profile(self) -> dict:
        return self.profile

    @property
    def max_batch(self) -> int | None:
        batch = [mx[0] for n, (mn, _, mx) in self.profile.items() if mn and mn[0] != mx[0]]
        return min(batch) if batch else None

    @property
    def input_specs(self) -> list[TensorDesc]:
        self._require_active()
        return list(self._inputs)

    @property
    def output_specs(self) -> list[TensorDesc]:
        self._require_active()
        return list(self._outputs)

    def config(self) -> dict[str, str]:
        """The CPU plugin's properties: the precision set explicitly, latency hint, one stream, the threads."""
        cfg = {"INFERENCE_PRECISION_HINT": self.inference_precision, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
               "EXECUTION_MODE_HINT": "ACCURACY" if self.inference_precision == "f32" else "PERFORMANCE"}
        if self.threads:
            cfg["INFERENCE_NUM_THREADS"] = str(self.threads)
        return cfg

    # -- life cycle ----------------------------------------------------------------------
    def activate(self) -> None:
        if self._core is not None:
            return
        ov = import_openvino()
        if not self.model_path.is_file():
            raise MonkeyError(f"{self.name}: model file {self.model_path} does not exist")
        core = ov.Core()
        need = INFERENCE_PRECISIONS[self.inference_precision]
        caps = _capabilities(core)
        if need not in caps:
            raise MonkeyError(f"--precision bf16 needs a CPU with bf16 kernels (AVX-512 BF16 or AMX); "
                              f"{core.get_property('CPU', 'FULL_DEVICE_NAME')} offers {', '.join(caps)}: use --precision fp32 or int8")
        model = self._read(core)  # for its input/output names only: dropped now, read again if a compile needs it
        self._inputs = [_desc(p) for p in model.inputs]
        self._outputs = [_desc(p) for p in model.outputs]
        del model
        self._core = core

    def deactivate(self) -> None:
        self._compiled.clear()  # the compiled models go before the maps they were imported from
        self._maps.clear()
        self._core = None

    def _read(self, core):
        try:
            return core.read_model(str(self.model_path))
        except Exception as e:  # OpenVINO raises RuntimeError/GeneralFailure on a bad graph
            raise MonkeyError(f"{self.name}: OpenVINO cannot read {self.model_path}: {first_line(e)}") from None

    # -- the compiled-model cache ----------------------------------------------------------
    def source_digest(self) -> str:
        """The digest of the graph file and its external data (given, or hashed once)."""
        if self._source_digest is None:
            files = {self.model_path.name: sha256_file(self.model_path)}
            data = self.model_path.with_name(self.model_path.name + ".data")
            if data.is_file():
                files[data.name] = sha256_file(data)
            self._source_digest = files_digest(files)
        return self._source_digest

    def _cache_material(self, key: tuple) -> dict:
        return {"kind": OPENVINO_FOLDER, "v": 1, "graph": self.source_digest(), "openvino": openvino_version(),
                "config": self.config(), "shapes": [[n, list(s)] for n, s in key], "machine": platform.machine(),
                "cpu": cpu_abilities(), "flags": list(cpu_flags())}

    def cache_folder(self, key: tuple) -> Path:
        """Where the compiled model of one input-shape set is kept (keyed: graph, OpenVINO, CPU, config, shapes)."""
        return keyed_folder(OPENVINO_FOLDER, self._cache_material(key), root=self.cache_root)

    def _cached(self, core, cfg, record: Path, source: str):
        """(compiled model, the blob's map it reads) from the cache entry our record proves (None: missing, foreign or
        replaced). The map lives as long as the compiled model: importing from bytes instead kept a second copy of
        every weight in anonymous memory (at sd15 size 3.4 GB for the fp32 UNet)."""
        state = check_record(record, OPENVINO_KIND, source, present=record.parent / BLOB)  # the blob re-hashed
        if state == "ok":
            try:  # from a private map of the blob: its weights stay file pages, as in OpenVINO's own cache
                mapped = np.memmap(record.parent / BLOB, dtype=np.uint8, mode="c")
                compiled = core.import_model(import_openvino().Tensor(mapped, shared_memory=True), "CPU", cfg)
            except Exception:  # our own entry that this OpenVINO refuses: compiled again and replaced below
                state = "wrong"
            else:
                mark_used(record)  # the cache's size bound removes least recently used entries first
                self.cache_hits += 1
                return compiled, mapped
        if state == "wrong" and remove_recorded(record, OPENVINO_KIND):
            with contextlib.suppress(OSError):
                record.parent.rmdir()  # only when nothing but what we wrote was there
        return None

    def _compile(self, key: tuple):
        core, cfg = self._core, self.config()
        folder = self.cache_folder(key)
        record, source = folder / RECORD_NAME, digest(self._cache_material(key))
        cached = self._cached(core, cfg, record, source)
        if cached is not None:
            return cached
        model = self._read(core)
        try:
            model.reshape({n: list(s) for n, s in key})
            compiled = core.compile_model(model, "CPU", cfg)
        except Exception as e:
            raise MonkeyError(f"{self.name}: OpenVINO cannot compile {self.model_path.name} for "
                              f"{', '.join(f'{n} {list(s)}' for n, s in key)}: {first_line(e)}") from None
        del model
        if os.path.lexists(folder / RECORD_NAME) or os.path.lexists(folder / BLOB):
            return compiled, None  # someone else's entry (or another user's): used neither way, never overwritten
        try:  # the blob first, the record (its sha256) last: a reader trusts a blob only under our record
            data = compiled.export_model()
            data = data.getvalue() if hasattr(data, "getvalue") else data  # BytesIO (OpenVINO >= 2024) or bytes
            folder.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(folder / BLOB, data)
            write_record(record, OPENVINO_KIND, source, {BLOB: folder / BLOB})
        except OSError:  # a read-only or full cache folder: run uncached
            return compiled, None
        del data
        if self.cache_root is None and in_default_root(folder):  # the user cache's size bound (engine/cache_budget.py)
            enforce_budget(keep=(folder,))
        return compiled, None

    # -- inference -----------------------------------------------------------------------
    def _infer(self, merged: dict[str, np.ndarray], feeds: Mapping[str, np.ndarray], static: StaticInputs | None,
               wanted: list[TensorDesc]) -> dict[str, np.ndarray]:
        key = tuple((s.name, tuple(int(d) for d in merged[s.name].shape)) for s in self._inputs)
        entry = self._compiled.get(key)
        if entry is None:
            compiled, mapped = self._compile(key)
            if mapped is not None:
                self._maps.append(mapped)
            entry = self._compiled[key] = (compiled, compiled.create_infer_request())
        request = entry[1]
        try:
            result = request.infer({s.name: np.ascontiguousarray(merged[s.name]) for s in self._inputs},
                                   share_inputs=True, share_outputs=True)
        except Exception as e:
            raise MonkeyError(f"{self.name}: OpenVINO run failed: {first_line(e)}") from None
        return {s.name: np.array(result[s.name], copy=True) for s in wanted}  # copies: the request reuses its buffers


# -- the backend table's opener (runtime.backend: "openvino") ---------------------------------------------
def open_openvino_runners(root: Path, manifest, spec, networks: Sequence[str], shared: dict | None = None) -> dict[str, OpenVinoRunner]:
    """One (not yet activated) OpenVinoRunner per network of an engine directory, for a runtime.backend.BackendSpec.

    fp32 and int8 run the manifest's graphs of that precision (int8: the Q/DQ UNet, f32 between its quantized ops;
    the other networks fp32); bf16 runs the fp32 graphs, the UNet's and the VAE decoder's with bf16 kernels (BF16_NETWORKS;
    the encoders stay f32).
    The compiled models are keyed by the manifest's digests (nothing is written into `root`)."""
    import_openvino()
    graph = "fp32" if spec.precision == "bf16" else spec.precision
    runners = {}
    for name in networks:
        path = manifest.path(root, name, graph)  # EngineDirError (one line) if not exported
        entry = manifest.networks[name]
        _, sha256, _ = entry.files(manifest.run_precision(name, graph))
        runners[name] = OpenVinoRunner(
            path, name=name, inference_precision="bf16" if spec.precision == "bf16" and name in BF16_NETWORKS else "f32",
            threads=spec.threads, profile=entry.desc.profile_shapes(manifest.profile, manifest.dims, manifest.max_ip_images),
            source_digest=files_digest(sha256),
        )
    return runners
