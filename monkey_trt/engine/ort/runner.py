"""OrtRunner: one ONNX Runtime InferenceSession per network file, run through IO binding.

    with OrtRunner("unet.onnx", providers="cpu") as unet:
        fixed = unet.bind_static({"encoder_hidden_states": text, ...})    # the caller's handle
        out = unet.infer({"sample": x, ...}, static=fixed, outputs=("noise_pred",))  # caller-owned copies

On a GPU provider a handle keeps its own device copies; `outputs` names the outputs fetched to the host
(the others are not bound, or stay in device memory). CUDA-graph mode (graphs.py) keeps one captured graph per
input-shape set. Derived caches (the TensorRT EP's engines, ORT's optimised graphs) are keyed by the graph's
digest and never written next to the model (engine/derived_cache.py). Lean: numpy + onnxruntime only.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from monkey_trt.core.errors import BackendUnavailable, MonkeyError, first_line
from monkey_trt.core.atomic import sha256_file
from monkey_trt.core.output_folders import clean_stale_staging, make_staging, remove_staging
from monkey_trt.engine.cache_budget import ORT_KIND, RECORD_NAME, enforce_budget, in_default_root, mark_used
from monkey_trt.engine.derived_cache import StagedFolder, digest, keyed_folder
from monkey_trt.engine.derived_record import check_record, remove_recorded, write_record
from monkey_trt.engine.derived_cache import source_digest as files_digest
from monkey_trt.engine.ort.graphs import CudaGraphReplay, CapturedGraph
from monkey_trt.engine.ort.providers import (GRAPH_IDS_SINCE, PROVIDER_NAMES, cpu_identity, flag, import_ort, ort_version, physical_cores,
                                             resolve_providers, shape_text, version_tuple)
from monkey_trt.engine.runner import Runner, StaticInputs, TensorDesc
from monkey_trt.engine.tf32 import cuda_tf32_option, keep_tf32_off, ort_tf32_mode
from monkey_trt.enginedir.manifest import check_precision


# ONNX Runtime's NodeArg.type strings -> numpy dtype names
ORT_CACHE_RECORD = RECORD_NAME  # beside a cached optimised graph: its files' sha256 (engine/derived_record.py)
ORT_CACHE_KIND = ORT_KIND
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(bfloat16)": "bfloat16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}


def _spec(arg) -> TensorDesc:
    shape = tuple(d if isinstance(d, (int, str)) and d != "" else -1 for d in (arg.shape or ()))
    shape = tuple(-1 if (isinstance(d, int) and d < 0) else d for d in shape)
    return TensorDesc(arg.name, _ORT_TYPES.get(arg.type, arg.type), shape)


class OrtRunner(CudaGraphReplay, Runner):
    """An ONNX Runtime session for one network file.

    Args:
        model_path: the .onnx file (external data next to it is found by ORT).
        providers: "cpu" | "cuda" | "tensorrt", or a sequence of those (priority order).
        name: label used in error messages (default: the file stem).
        fp16: TensorRT EP only: allow fp16 kernels in an fp32 graph (changes the math: opt-in).
        precision: the graph's precision ("fp32" | "fp16"). TensorRT EP: an fp16 graph runs with fp16 kernels
            allowed (ORT's TensorRT EP builds weakly typed networks: without the flag TensorRT would run the
            fp16 layers in fp32), with LayerNorm reductions kept in fp32.
        trt_profile: input name -> (min, opt, max) shapes (the engine directory's profile,
            `NetworkDesc.profile_shapes`): `infer` refuses shapes outside it (every provider, the Runner contract), and
            the TensorRT EP builds one engine that covers them all (without it the EP rebuilds its engine whenever a
            shape leaves the range it has seen).
        trt_cache_dir: TensorRT EP: the root of its engine + timing caches (default: the user cache folder,
            `engine.derived_cache.cache_root()`); the files go to a sub-folder keyed by `source_digest`, the ORT version,
            the providers and the options, written through a staging copy (never half-written).
        cuda_graph: CUDA/TensorRT EP: replay each input-shape set as a captured CUDA graph: CUDA EP with ORT >=
            1.18: one session, one graph per shape set (RunOptions "gpu_graph_id"); TensorRT EP (one graph per
            session) or older ORT: one extra session per shape set. Each graph has its own fixed device buffers.
        int8: the graph is explicitly quantized (Q/DQ, export --precision int8). TensorRT EP: int8 allowed
            (no calibration table: the scales are in the graph). CPU: common-subexpression elimination is
            off, since it merges the per-consumer QuantizeLinear nodes, and a shared one keeps ORT from
            fusing DequantizeLinear -> MatMul/Conv -> QuantizeLinear into integer kernels.
        tf32: CUDA/TensorRT EP: allow TF32 for fp32 math (changes the math: opt-in); off otherwise (engine/tf32.py).
        cudnn_conv_algo_search: CUDA EP: "EXHAUSTIVE" | "HEURISTIC" | "DEFAULT".
        device_id: CUDA device.
        intra_op_threads: default = physical cores.
        optimized_model_cache: a folder to keep the ORT_ENABLE_ALL-optimised graph in, keyed by `source_digest`,
            ORT version, providers and CPU (model and feature flags); reused on the next start (CPU/CUDA only; ignored for TensorRT,
            which wants the original graph).
        source_digest: the digest of the graph files (the manifest's sha256s, `engine.derived_cache.source_digest`);
            default: the files are hashed when a cache needs it.
        disabled_optimizers: ORT graph transformers not to run on this graph (the map-only UNet: opener.py says why).
    """

    backend = "onnxruntime"

    def __init__(
        self,
        model_path: str | os.PathLike,
        providers: str | Sequence[str] = "cpu",
        *,
        name: str | None = None,
        fp16: bool = False,
        precision: str = "fp32",
        trt_profile: Mapping[str, tuple] | None = None,
        trt_cache_dir: str | os.PathLike | None = None,
        cuda_graph: bool = False,
        cudnn_conv_algo_search: str = "EXHAUSTIVE",
        device_id: int = 0,
        intra_op_threads: int | None = None,
        optimized_model_cache: str | os.PathLike | None = None,
        source_digest: str | None = None,
        log_severity: int = 3,
        int8: bool = False,
        tf32: bool = False,
        disabled_optimizers: Sequence[str] = (),
        cpu_arena: bool = True,
    ) -> None:
        self.model_path = Path(model_path)
        self.name = name or self.model_path.stem
        self._chain = resolve_providers(providers)
        if cudnn_conv_algo_search not in ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"):
            raise MonkeyError(f"cudnn_conv_algo_search must be EXHAUSTIVE, HEURISTIC or DEFAULT, got {cudnn_conv_algo_search!r}")
        check_precision(precision)
        self.fp16, self.precision = bool(fp16), precision
        self.trt_profile = {n: tuple(tuple(int(d) for d in s) for s in mmo) for n, mmo in (trt_profile or {}).items()}
        self.int8, self.tf32 = bool(int8), bool(tf32)
        self.disabled_optimizers = tuple(dict.fromkeys(("CommonSubexpressionElimination",) * self.int8 + tuple(disabled_optimizers)))
        self.trt_cache_dir = Path(trt_cache_dir) if trt_cache_dir is not None else None
        self.cuda_graph = bool(cuda_graph) and self._chain[0] != PROVIDER_NAMES["cpu"]
        self.cudnn_conv_algo_search = cudnn_conv_algo_search
        self.device_id = int(device_id)
        self.intra_op_threads = intra_op_threads if intra_op_threads else physical_cores()
        self.optimized_model_cache = Path(optimized_model_cache) if optimized_model_cache is not None else None
        self.log_severity = log_severity
        self.cpu_arena = bool(cpu_arena)  # False: no CPU memory arena (activations freed as they die)
        self._source_digest = source_digest
        self.session = None
        self._inputs: list[TensorDesc] = []
        self._outputs: list[TensorDesc] = []
        self._binding = None
        self._trt_stage: StagedFolder | None = None
        self._graph_mode: str | None = None  # None | "ids" (one session, gpu_graph_id per shape set) | "sessions"
        self._graphs: dict[tuple, CapturedGraph] = {}
        self._next_graph_id = 1  # gpu_graph_id 0 is ORT's default (reserved), -1 disables capture for a run
        self._handles: weakref.WeakSet = weakref.WeakSet()

    # -- what callers may ask --------------------------------------------------------------
    @property
    def providers(self) -> tuple[str, ...]:
        """The execution providers of the session (the requested chain before activation)."""
        return tuple(self.session.get_providers()) if self.session is not None else tuple(self._chain)

    @property
    def device(self) -> str:
        p = self.providers
        return "cuda" if p and p[0] in (PROVIDER_NAMES["cuda"], PROVIDER_NAMES["tensorrt"]) else "cpu"

    @property
    def is_active(self) -> bool:
        return self.session is not None

    def input_profile(self) -> dict:
        return self.trt_profile

    @property
    def max_batch(self) -> int | None:
        """The profile's largest batch (every provider: the engine directory's contract); None without a profile."""
        if not self.trt_profile:
            return None
        shapes = {s.name: s.shape for s in self._inputs}  # known once active
        batch = []
        for n, (mn, _, mx) in self.trt_profile.items():
            shape = shapes.get(n)
            if shape is not None:  # the graph says which inputs have a dynamic first (batch) axis
                dynamic = bool(shape) and not (isinstance(shape[0], int) and shape[0] >= 0)
            else:
                dynamic = bool(mn) and mn[0] != mx[0]
            if dynamic:
                batch.append(mx[0])
        return min(batch) if batch else None

    @property
    def graphs_captured(self) -> int:
        """CUDA-graph mode: how many graphs (input-shape sets) this runner has captured."""
        return len(self._graphs)

    @property
    def tf32_mode(self) -> str:
        """How fp32 math runs here: cpu | allowed | off: use_tf32=0 | off: NVIDIA_TF32_OVERRIDE=0 (engine/tf32.py)."""
        return ort_tf32_mode(self._chain, self.tf32, ort_version())

    # -- session -------------------------------------------------------------------------
    def _trt_fp16(self) -> bool:
        return self.fp16 or self.precision == "fp16"

    def _trt_options(self, graph: bool) -> dict:
        fp16 = self._trt_fp16()
        o: dict = {"device_id": str(self.device_id), "trt_fp16_enable": flag(fp16),
                   "trt_cuda_graph_enable": flag(graph and self._chain[0] == PROVIDER_NAMES["tensorrt"])}
        if self.int8:  # a Q/DQ graph: TensorRT refuses int8 layers unless int8 is enabled; no calibration table
            o["trt_int8_enable"] = "1"
        if fp16:
            o["trt_layer_norm_fp32_fallback"] = "1"  # Pow + Reduce of LayerNorm in fp32 (the graph's own fp32 island)
        if self.trt_profile:
            for i, kind in enumerate(("min", "opt", "max")):
                o[f"trt_profile_{kind}_shapes"] = shape_text({n: mmo[i] for n, mmo in self.trt_profile.items()})
        return o

    def _provider_options(self, graph: bool) -> list[dict]:
        opts = []
        for p in self._chain:
            if p == PROVIDER_NAMES["tensorrt"]:
                o = self._trt_options(graph)
                if self._trt_stage is not None and self._trt_stage.path is not None:
                    stage = str(self._trt_stage.path)
                    o.update(trt_engine_cache_enable="1", trt_engine_cache_path=stage,
                             trt_timing_cache_enable="1", trt_timing_cache_path=stage)
                opts.append(o)
            elif p == PROVIDER_NAMES["cuda"]:
                # With the TensorRT EP in front, the CUDA graph (if any) belongs to TensorRT.
                opts.append({"device_id": str(self.device_id), "cudnn_conv_algo_search": self.cudnn_conv_algo_search,
                             "enable_cuda_graph": flag(graph and self._chain[0] == PROVIDER_NAMES["cuda"]),
                             **cuda_tf32_option(self._chain, self.tf32, ort_version())})
            else:
                opts.append({})
        return opts

    def _session_options(self, level=None):
        ort = import_ort()
        so = ort.SessionOptions()
        so.graph_optimization_level = level if level is not None else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = int(self.intra_op_threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.enable_cpu_mem_arena = self.cpu_arena
        so.log_severity_level = self.log_severity
        ort.set_default_logger_severity(self.log_severity)  # graph-optimizer notices use the default logger
        return so

    def source_digest(self) -> str:
        """The digest of the graph file and its external data (given, or hashed once)."""
        if self._source_digest is None:
            files = {self.model_path.name: sha256_file(self.model_path)}
            data = self.model_path.with_name(self.model_path.name + ".data")
            if data.is_file():
                files[data.name] = sha256_file(data)
            self._source_digest = files_digest(files)
        return self._source_digest

    def _cache_material(self) -> dict:
        material = {"v": 4, "graph": self.source_digest(), "ort": ort_version(), "providers": list(self._chain),
                    "cpu": cpu_identity()}  # ORT_ENABLE_ALL graphs hold CPU-specific layouts (NCHWc blocks): keyed by the CPU
        extra = [o for o in self.disabled_optimizers if not (self.int8 and o == "CommonSubexpressionElimination")]
        return {**material, "disabled_optimizers": extra} if extra else material  # other graphs keep their keys

    def trt_cache_folder(self) -> Path:
        """Where this runner's TensorRT EP engines and timing cache are kept (keyed; see `trt_cache_dir`)."""
        material = {**self._cache_material(), "trt": self._trt_options(graph=False), "tf32": self.tf32}
        return keyed_folder("ort-trt", material, root=self.trt_cache_dir)

    def _create(self, path: Path, so, graph: bool | None = None):
        ort = import_ort()
        graph = self._graph_mode == "ids" if graph is None else graph
        keep_tf32_off(self.name, self._chain, self.tf32, ort_version())  # where no provider option can (engine/tf32.py)
        try:
            return ort.InferenceSession(str(path), sess_options=so, providers=self._chain,
                                        provider_options=self._provider_options(graph),
                                        **({"disabled_optimizers": list(self.disabled_optimizers)} if self.disabled_optimizers else {}))
        except Exception as e:  # ORT raises Fail/InvalidGraph/NoSuchFile/RuntimeException...
            msg = first_line(e)
            raise MonkeyError(f"{self.name}: onnxruntime cannot load {path}: {msg}") from None

    def _open_session(self):
        ort = import_ort()
        if not self.model_path.is_file():
            raise MonkeyError(f"{self.name}: model file {self.model_path} does not exist")
        cache = self.optimized_model_cache
        if cache is None or PROVIDER_NAMES["tensorrt"] in self._chain:
            return self._create(self.model_path, self._session_options())
        key = digest(self._cache_material())
        final = cache / f"{self.name}-{key[:24]}"
        record = final / ORT_CACHE_RECORD
        state = check_record(record, ORT_CACHE_KIND, key, present=final)  # every cached file re-hashed: never trusted unchecked
        if state == "ok":
            try:
                sess = self._create(final / "model.onnx", self._session_options(ort.GraphOptimizationLevel.ORT_DISABLE_ALL))
                mark_used(record)  # the cache's size bound removes least recently used entries first
                return sess
            except MonkeyError:
                state = "wrong"  # our own entry that ORT refuses (another ORT build's format): replaced below
        if state == "wrong" and remove_recorded(record, ORT_CACHE_KIND):
            with contextlib.suppress(OSError):
                final.rmdir()  # only when nothing but what we wrote was there
        if os.path.lexists(final):  # someone else's, or not ours to replace: used neither way
            return self._create(self.model_path, self._session_options())
        cache.mkdir(parents=True, exist_ok=True)
        clean_stale_staging(final)  # what a killed cache write left: proven ours by its marker, never by its name
        tmp = make_staging(final)
        try:
            so = self._session_options()
            so.optimized_model_filepath = str(tmp / "model.onnx")
            # Large graphs (> 2 GB protobuf limit) must keep their weights outside the .onnx
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "model.onnx.data")
            so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
            sess = self._create(self.model_path, so)
            written = {f.name: f for f in tmp.iterdir() if f.is_file()}
            for f in written.values():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            write_record(tmp / ORT_CACHE_RECORD, ORT_CACHE_KIND, key, written)
            with contextlib.suppress(OSError):  # another process got there first: its entry stays
                os.rename(tmp, final)
            if in_default_root(final):  # the user cache's size bound (engine/cache_budget.py); a named folder is the user's
                enforce_budget(keep=(final,))
            return sess
        finally:
            remove_staging(tmp)

    def activate(self) -> None:
        if self.session is not None:
            return
        self._graph_mode = None
        if self.cuda_graph:
            ids = self._chain[0] == PROVIDER_NAMES["cuda"] and version_tuple(ort_version()) >= GRAPH_IDS_SINCE
            self._graph_mode = "ids" if ids else "sessions"
        if PROVIDER_NAMES["tensorrt"] in self._chain:
            self._trt_stage = StagedFolder(self.trt_cache_folder())
            self._trt_stage.open()
        try:
            sess = self._open_session()
            got = sess.get_providers()
            lost = [p for p in self._chain if p not in got]
            if lost:
                raise BackendUnavailable(
                    f"{self.name}: onnxruntime could not start {', '.join(lost)} (got {', '.join(got)}): "
                    "check the CUDA/cuDNN/TensorRT libraries (monkey-trt doctor)"
                )
        except BaseException:
            if self._trt_stage is not None:  # nothing of a failed start is published
                self._trt_stage.discard()
                self._trt_stage = None
            raise
        self.session = sess
        self._inputs = [_spec(a) for a in sess.get_inputs()]
        self._outputs = [_spec(a) for a in sess.get_outputs()]
        self._binding = sess.io_binding()
        self._commit_stage()

    def _commit_stage(self) -> None:
        if self._trt_stage is not None:
            self._trt_stage.commit()

    def _close_stage(self) -> None:
        if self._trt_stage is not None:
            stage, self._trt_stage = self._trt_stage, None
            stage.close()

    def deactivate(self) -> None:
        for h in list(self._handles):
            h.release()
        self._handles = weakref.WeakSet()
        self._graphs.clear()
        self._next_graph_id = 1
        self._binding = None
        self.session = None
        self._close_stage()

    # -- specs ---------------------------------------------------------------------------
    @property
    def input_specs(self) -> list[TensorDesc]:
        self._require_active()
        return list(self._inputs)

    @property
    def output_specs(self) -> list[TensorDesc]:
        self._require_active()
        return list(self._outputs)

    # -- inputs bound once -----------------------------------------------------------------
    def bind_static(self, feeds: Mapping[str, np.ndarray]) -> StaticInputs:
        self._require_active()
        handle = super().bind_static(feeds)
        self._handles.add(handle)
        return handle

    def _upload_static(self, handle: StaticInputs) -> None:
        """GPU provider, no CUDA graph: the handle's own device copies, uploaded once. CUDA-graph mode copies the
        host values into a graph's fixed input buffers when a call needs them (graph buffers cannot be rebound)."""
        if self.device == "cpu" or self._graph_mode is not None:
            return
        ort = import_ort()
        handle.device.update({n: ort.OrtValue.ortvalue_from_numpy(a, "cuda", self.device_id) for n, a in handle.host.items()})

    # -- inference -----------------------------------------------------------------------
    def _infer(self, merged: dict[str, np.ndarray], feeds: Mapping[str, np.ndarray], static: StaticInputs | None,
               wanted: list[TensorDesc]) -> dict[str, np.ndarray]:
        if self._graph_mode is not None:
            return self._infer_graph(merged, feeds, static, wanted)
        b = self._binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        keep = []  # bind_cpu_input wraps the array's memory: keep it alive until the run is over
        for spec in self._inputs:
            on_device = static.device.get(spec.name) if static is not None and spec.name not in feeds else None
            if on_device is not None:  # the handle's own device copy (bind_static)
                b.bind_ortvalue_input(spec.name, on_device)
                continue
            arr = np.ascontiguousarray(merged[spec.name])
            keep.append(arr)
            b.bind_cpu_input(spec.name, arr)
        for spec in wanted:  # only what was asked is fetched (and copied to the host)
            b.bind_output(spec.name, "cpu")
        self._run(self.session, b)
        values = b.copy_outputs_to_cpu()
        return {spec.name: np.asarray(v) for spec, v in zip(wanted, values)}

    def _run(self, sess, binding, run_options=None) -> None:
        try:
            sess.run_with_iobinding(binding, run_options)
        except Exception as e:
            msg = first_line(e)
            raise MonkeyError(f"{self.name}: onnxruntime run failed: {msg}") from None


