"""ONNX Runtime backend: one InferenceSession per network file, run through IO binding.

    with OrtRunner("unet.onnx", providers="cpu") as unet:
        out = unet.infer({"sample": x, ...})        # name -> np.ndarray (caller-owned copies)

Providers are named "cpu", "cuda" or "tensorrt". A single name expands to its usual fallback
chain ("tensorrt" -> TensorRT, CUDA, CPU; "cuda" -> CUDA, CPU); a sequence is taken as given
(CPU is appended so unsupported nodes still run). Asking for a provider this onnxruntime build
lacks raises `BackendUnavailable` naming what is installed.

Lean: numpy + onnxruntime only.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from monkey_trt.core.errors import BackendUnavailable, MonkeyError, first_line
from monkey_trt.engine.runner import Runner, TensorSpec

PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_FALLBACK = {"cpu": ("cpu",), "cuda": ("cuda", "cpu"), "tensorrt": ("tensorrt", "cuda", "cpu")}

# ONNX Runtime's NodeArg.type strings -> numpy dtype names
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


def _import_ort():
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


def validate_feeds(name: str, specs: Sequence[TensorSpec], feeds: Mapping[str, np.ndarray]) -> None:
    """Names, dtypes, ranks and static dims of `feeds` against `specs`; MonkeyError (one line) on a mismatch."""
    if not isinstance(feeds, Mapping):
        raise MonkeyError(f"{name}: feeds must be a dict of name -> numpy array, got {type(feeds).__name__}")
    want = {s.name: s for s in specs}
    unknown = sorted(set(feeds) - set(want))
    if unknown:
        raise MonkeyError(f"{name}: unknown input(s) {', '.join(map(repr, unknown))} (inputs: {', '.join(want)})")
    missing = [n for n in want if n not in feeds]
    if missing:
        raise MonkeyError(f"{name}: missing input(s) {', '.join(map(repr, missing))}")
    for n, spec in want.items():
        arr = feeds[n]
        if not isinstance(arr, np.ndarray):
            raise MonkeyError(f"{name}: input {n!r} must be a numpy array, got {type(arr).__name__}")
        if arr.dtype.name != spec.dtype:
            raise MonkeyError(f"{name}: input {n!r} has dtype {arr.dtype.name}, the network wants {spec.dtype}")
        if arr.ndim != len(spec.shape):
            raise MonkeyError(
                f"{name}: input {n!r} has rank {arr.ndim} (shape {tuple(arr.shape)}), the network wants rank "
                f"{len(spec.shape)} {_fmt_shape(spec.shape)}"
            )
        for axis, (got, dim) in enumerate(zip(arr.shape, spec.shape)):
            if isinstance(dim, int) and dim >= 0 and got != dim:
                raise MonkeyError(
                    f"{name}: input {n!r} has shape {tuple(arr.shape)}, the network wants {_fmt_shape(spec.shape)} (axis {axis})"
                )


def _fmt_shape(shape: Sequence[int | str]) -> str:
    return "[" + ", ".join("?" if (isinstance(d, int) and d < 0) else str(d) for d in shape) + "]"


def _spec(arg) -> TensorSpec:
    shape = tuple(d if isinstance(d, (int, str)) and d != "" else -1 for d in (arg.shape or ()))
    shape = tuple(-1 if (isinstance(d, int) and d < 0) else d for d in shape)
    return TensorSpec(arg.name, _ORT_TYPES.get(arg.type, arg.type), shape)


class OrtRunner(Runner):
    """An ONNX Runtime session for one network file.

    Args:
        model_path: the .onnx file (external data next to it is found by ORT).
        providers: "cpu" | "cuda" | "tensorrt", or a sequence of those (priority order).
        name: label used in error messages (default: the file stem).
        fp16: TensorRT EP only: allow fp16 kernels.
        int8: the graph is explicitly quantized (Q/DQ, export --precision int8). TensorRT EP: int8 allowed
            (no calibration table: the scales are in the graph). CPU: common-subexpression elimination is
            off, since it merges the per-consumer QuantizeLinear nodes, and a shared one keeps ORT from
            fusing DequantizeLinear -> MatMul/Conv -> QuantizeLinear into integer kernels.
        trt_cache_dir: TensorRT EP only: engine + timing cache folder (enables both caches).
        cuda_graph: CUDA/TensorRT EP: capture a CUDA graph (needs fixed shapes; the session is
            rebuilt when input shapes change).
        cudnn_conv_algo_search: CUDA EP: "EXHAUSTIVE" | "HEURISTIC" | "DEFAULT".
        device_id: CUDA device.
        intra_op_threads: default = physical cores.
        optimized_model_cache: a folder to keep the ORT_ENABLE_ALL-optimised graph in, keyed by
            the source file, ORT version, providers and machine; reused on the next start
            (CPU/CUDA only; ignored for TensorRT, which wants the original graph).
    """

    backend = "onnxruntime"
    _graph_device = "cuda"  # where CUDA-graph mode keeps its fixed I/O buffers

    def __init__(
        self,
        model_path: str | os.PathLike,
        providers: str | Sequence[str] = "cpu",
        *,
        name: str | None = None,
        fp16: bool = False,
        trt_cache_dir: str | os.PathLike | None = None,
        cuda_graph: bool = False,
        cudnn_conv_algo_search: str = "EXHAUSTIVE",
        device_id: int = 0,
        intra_op_threads: int | None = None,
        optimized_model_cache: str | os.PathLike | None = None,
        log_severity: int = 3,
        int8: bool = False,
    ) -> None:
        self.model_path = Path(model_path)
        self.name = name or self.model_path.stem
        self.providers = resolve_providers(providers)
        if cudnn_conv_algo_search not in ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"):
            raise MonkeyError(f"cudnn_conv_algo_search must be EXHAUSTIVE, HEURISTIC or DEFAULT, got {cudnn_conv_algo_search!r}")
        self.fp16 = bool(fp16)
        self.int8 = bool(int8)
        self.trt_cache_dir = Path(trt_cache_dir) if trt_cache_dir is not None else None
        self.cuda_graph = bool(cuda_graph) and any(p != PROVIDER_NAMES["cpu"] for p in self.providers)
        self.cudnn_conv_algo_search = cudnn_conv_algo_search
        self.device_id = int(device_id)
        self.intra_op_threads = intra_op_threads if intra_op_threads else physical_cores()
        self.optimized_model_cache = Path(optimized_model_cache) if optimized_model_cache is not None else None
        self.log_severity = log_severity
        self.session = None
        self._inputs: list[TensorSpec] = []
        self._outputs: list[TensorSpec] = []
        self._binding = None
        # CUDA-graph mode: persistent device OrtValues (fixed addresses) for one set of shapes
        self._static_device: dict = {}  # name -> OrtValue on the GPU (set_static_inputs on a GPU provider)
        self._graph_shapes: dict[str, tuple[int, ...]] | None = None
        self._graph_in: dict = {}
        self._graph_out: dict = {}

    # -- session -------------------------------------------------------------------------
    def _provider_options(self) -> list[dict]:
        opts = []
        for p in self.providers:
            if p == PROVIDER_NAMES["tensorrt"]:
                o: dict = {"device_id": self.device_id, "trt_fp16_enable": self.fp16, "trt_cuda_graph_enable": self.cuda_graph}
                if self.int8:  # a Q/DQ graph: TensorRT refuses int8 layers unless int8 is enabled; no calibration table
                    o["trt_int8_enable"] = True
                if self.trt_cache_dir is not None:
                    self.trt_cache_dir.mkdir(parents=True, exist_ok=True)
                    o.update(
                        trt_engine_cache_enable=True,
                        trt_engine_cache_path=str(self.trt_cache_dir),
                        trt_timing_cache_enable=True,
                        trt_timing_cache_path=str(self.trt_cache_dir),
                    )
                opts.append(o)
            elif p == PROVIDER_NAMES["cuda"]:
                # With the TensorRT EP in front, the CUDA graph (if any) belongs to TensorRT.
                graph = self.cuda_graph and PROVIDER_NAMES["tensorrt"] not in self.providers
                opts.append(
                    {"device_id": self.device_id, "cudnn_conv_algo_search": self.cudnn_conv_algo_search, "enable_cuda_graph": graph}
                )
            else:
                opts.append({})
        return opts

    def _session_options(self, level=None):
        ort = _import_ort()
        so = ort.SessionOptions()
        so.graph_optimization_level = level if level is not None else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = int(self.intra_op_threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = self.log_severity
        ort.set_default_logger_severity(self.log_severity)  # graph-optimizer notices use the default logger
        return so

    def _cache_key(self) -> str:
        st = self.model_path.stat()
        data = self.model_path.with_name(self.model_path.name + ".data")
        material = {
            "v": 1,
            "model": str(self.model_path.resolve()),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "data": [data.stat().st_size, data.stat().st_mtime_ns] if data.is_file() else None,
            "ort": ort_version(),
            "providers": self.providers,
            "machine": platform.machine(),
            "processor": platform.processor(),
        }
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]

    def _create(self, path: Path, so):
        ort = _import_ort()
        try:
            return ort.InferenceSession(str(path), sess_options=so, providers=self.providers, provider_options=self._provider_options(),
                                        **({"disabled_optimizers": ["CommonSubexpressionElimination"]} if self.int8 else {}))
        except Exception as e:  # ORT raises Fail/InvalidGraph/NoSuchFile/RuntimeException...
            msg = first_line(e)
            raise MonkeyError(f"{self.name}: onnxruntime cannot load {path}: {msg}") from None

    def _open_session(self):
        ort = _import_ort()
        if not self.model_path.is_file():
            raise MonkeyError(f"{self.name}: model file {self.model_path} does not exist")
        cache = self.optimized_model_cache
        if cache is None or PROVIDER_NAMES["tensorrt"] in self.providers:
            return self._create(self.model_path, self._session_options())
        final = cache / f"{self.name}-{self._cache_key()}"
        cached = final / "model.onnx"
        if cached.is_file():
            try:
                return self._create(cached, self._session_options(ort.GraphOptimizationLevel.ORT_DISABLE_ALL))
            except MonkeyError:
                shutil.rmtree(final, ignore_errors=True)  # stale/corrupt: rebuild below
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=cache))
        try:
            so = self._session_options()
            so.optimized_model_filepath = str(tmp / "model.onnx")
            # Large graphs (> 2 GB protobuf limit) must keep their weights outside the .onnx
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "model.onnx.data")
            so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
            sess = self._create(self.model_path, so)
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            try:
                os.replace(tmp, final)
            except OSError:  # another process got there first
                pass
            return sess
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def activate(self) -> None:
        if self.session is not None:
            return
        sess = self._open_session()
        got = sess.get_providers()
        lost = [p for p in self.providers if p not in got]
        if lost:
            raise BackendUnavailable(
                f"{self.name}: onnxruntime could not start {', '.join(lost)} (got {', '.join(got)}): "
                "check the CUDA/cuDNN/TensorRT libraries (monkey-trt doctor)"
            )
        self.session = sess
        self._inputs = [_spec(a) for a in sess.get_inputs()]
        self._outputs = [_spec(a) for a in sess.get_outputs()]
        self._binding = sess.io_binding()

    def set_static_inputs(self, feeds: dict[str, np.ndarray]) -> None:
        """Fixed inputs for the coming runs; on a GPU provider they are uploaded to the device once."""
        super().set_static_inputs(feeds)
        self._static_device = {}
        if self.session is not None and self.providers[0] != PROVIDER_NAMES["cpu"] and not self.cuda_graph:
            ort = _import_ort()
            self._static_device = {n: ort.OrtValue.ortvalue_from_numpy(a, "cuda", self.device_id) for n, a in self._static.items()}

    def deactivate(self) -> None:
        self._static_device = {}
        self._graph_in.clear()
        self._graph_out.clear()
        self._graph_shapes = None
        self._binding = None
        self.session = None

    # -- specs ---------------------------------------------------------------------------
    def _require_session(self):
        if self.session is None:
            raise MonkeyError(f"{self.name}: the runner is not active (use it as a context manager or call activate())")
        return self.session

    @property
    def input_specs(self) -> list[TensorSpec]:
        self._require_session()
        return list(self._inputs)

    @property
    def output_specs(self) -> list[TensorSpec]:
        self._require_session()
        return list(self._outputs)

    # -- inference -----------------------------------------------------------------------
    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sess = self._require_session()
        feeds = self._with_static(feeds)
        validate_feeds(self.name, self._inputs, feeds)
        if self.cuda_graph:
            return self._infer_graph(feeds)
        b = self._binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        keep = []  # bind_cpu_input wraps the array's memory: keep it alive until the run is over
        for spec in self._inputs:
            on_device = self._static_device.get(spec.name)
            if on_device is not None:  # uploaded once by set_static_inputs
                b.bind_ortvalue_input(spec.name, on_device)
                continue
            arr = np.ascontiguousarray(feeds[spec.name])
            keep.append(arr)
            b.bind_cpu_input(spec.name, arr)
        for spec in self._outputs:
            b.bind_output(spec.name, "cpu")
        self._run(sess, b)
        values = b.copy_outputs_to_cpu()
        return {spec.name: np.asarray(v) for spec, v in zip(self._outputs, values)}

    def _run(self, sess, binding) -> None:
        try:
            sess.run_with_iobinding(binding)
        except Exception as e:
            msg = first_line(e)
            raise MonkeyError(f"{self.name}: onnxruntime run failed: {msg}") from None

    def _infer_graph(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """CUDA-graph mode: inputs/outputs live at fixed device addresses (ORT requirement).

        ORT's CUDA EP runs one regular run before it captures; that first run lets ORT allocate the
        outputs, whose shapes we then use to pin fixed output buffers. A new set of input shapes
        needs a new graph: the session is rebuilt.
        """
        ort = _import_ort()
        shapes = {s.name: tuple(feeds[s.name].shape) for s in self._inputs}
        if self._graph_shapes is not None and shapes != self._graph_shapes:
            self.deactivate()
            self.activate()
        sess, b = self.session, self._binding
        first = self._graph_shapes is None
        if first:
            self._graph_in = {
                s.name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(feeds[s.name]), self._graph_device, self.device_id)
                for s in self._inputs
            }
            b.clear_binding_inputs()
            b.clear_binding_outputs()
            for n, v in self._graph_in.items():
                b.bind_ortvalue_input(n, v)
            for s in self._outputs:
                b.bind_output(s.name, self._graph_device, self.device_id)
            self._run(sess, b)  # regular run: ORT allocates the outputs
            outs = b.get_outputs()
            result = {s.name: np.array(v.numpy(), copy=True) for s, v in zip(self._outputs, outs)}
            self._graph_out = {
                s.name: ort.OrtValue.ortvalue_from_shape_and_type(
                    v.shape(), result[s.name].dtype, self._graph_device, self.device_id
                )
                for s, v in zip(self._outputs, outs)
            }
            b.clear_binding_outputs()
            for n, v in self._graph_out.items():
                b.bind_ortvalue_output(n, v)
            self._graph_shapes = shapes
            return result
        for s in self._inputs:
            self._graph_in[s.name].update_inplace(np.ascontiguousarray(feeds[s.name]))
        self._run(sess, b)  # captures on the first call after the warm-up, replays afterwards
        # .numpy() of a host OrtValue is a view of its buffer: copy so the next run cannot overwrite it
        return {n: np.array(v.numpy(), copy=True) for n, v in self._graph_out.items()}
