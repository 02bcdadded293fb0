"""A fake `onnxruntime` GPU build: CUDA and TensorRT execution providers on a simulated device.

    fake = make_fake_ort()                         # installs nothing by itself
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    ... OrtRunner(path, providers="cuda", cuda_graph=True) ...
    fake.stats.captures, fake.stats.sessions, fake.stats.d2h_bytes ...

The math is a real CPU `onnxruntime.InferenceSession` on the same file; what is simulated is what a
GPU build adds around it, following ONNX Runtime's own documentation, tests and sources:

* Device memory (`OrtValue` on "cuda"): every device OrtValue owns a buffer at an address; `numpy()`
  copies it to the host, `update_inplace` copies into the same address (dtype and element count must
  match, as in onnxruntime/python/onnxruntime_pybind_ortvalue.cc); `ortvalue_from_shape_and_type`
  memory starts as garbage (NaN here, so a buffer nobody wrote is visible). Host<->device copies are
  counted (`stats.h2d_bytes`, `stats.d2h_bytes`, `stats.d2h_by_name`).
* IOBinding: a CPU input bound to a session that consumes it on the GPU is copied to the device when
  it is bound (IOBinding::BindInput -> utils::CopyOneInputAcrossDevices, onnxruntime/core/session/
  IOBinding.cc); `bind_output(name, "cuda")` lets ORT allocate the output at run time (a new buffer
  per run); `bind_ortvalue_output` makes it write into a pre-allocated one (a shape that does not fit
  is an error, as ORT's "Shape mismatch attempting to re-use buffer"); only bound outputs are fetched.
* CUDA graphs, CUDA EP (`enable_cuda_graph`), from the "Using CUDA Graphs" section of
  https://onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html (source:
  microsoft/onnxruntime gh-pages docs/execution-providers/CUDA-ExecutionProvider.md), the tests in
  microsoft/onnxruntime onnxruntime/test/python/onnxruntime_test_python_cudagraph.py
  (run_model_with_cuda_graph, run_model_with_cuda_graph_annotation) and the sources
  onnxruntime/core/session/inference_session.cc (Run: "N+1 inference runs ... run recursively until
  graph captured, so that users just need one session run"), onnxruntime/core/providers/cuda/
  cuda_graph.cc (CUDAGraphManager: one graph per annotation id, -1 = kCudaGraphAnnotationSkip) and
  include/onnxruntime/core/session/onnxruntime_run_options_config_keys.h
  (kOrtRunOptionsConfigCudaGraphAnnotation = "gpu_graph_id", default 0, -1 disables capture/replay
  for that run):
    - the first `run_with_iobinding` of a graph id (RunOptions "gpu_graph_id", default 0) makes the
      warm-up regular runs and the capturing run inside that one call, on the buffers bound then;
      each id has its own count and its own graph; id -1 is a regular run that captures nothing;
    - a replay reads the input addresses and writes the output addresses bound at capture: an output
      re-bound after capture receives nothing, an input re-bound after capture is not read;
    - capture needs inputs in device memory (a host input is copied when bound, before the run) and
      outputs in device memory (pre-allocated, or allocated by ORT from its warmed-up arena: the graph
      then keeps writing into that block); an output bound to the host cannot be captured (its copy
      is a synchronous cudaMemcpy); a model with If/Loop/Scan cannot use graphs.
  With gpu_graph_id (ORT >= 1.18, microsoft/onnxruntime PR #19636, docs PR #19818) and
  `min_runs_before_capture` = 2 (CUDA EP, PR #15005). An older `version` ignores gpu_graph_id:
  one graph per session, as before that PR.
* CUDA graphs, TensorRT EP (`trt_cuda_graph_enable`, microsoft/onnxruntime PR #16081/#17355,
  onnxruntime/core/providers/tensorrt/tensorrt_execution_provider.{h,cc}: one CUDAGraph per provider,
  IsGraphCaptured()/ReplayGraph() take no id): one graph per session, gpu_graph_id ignored.
* TensorRT EP options (include/onnxruntime/core/providers/tensorrt/tensorrt_provider_options.h and
  https://onnxruntime.ai/docs/execution-providers/TensorRT-ExecutionProvider.html): the explicit
  profile `trt_profile_{min,opt,max}_shapes` = "in1:d1xd2,in2:d1xd2" is parsed as ORT does
  (ParseProfileShapes / MakeInputNameShapePair / ValidateProfileShapes in
  onnxruntime/core/providers/tensorrt/tensorrt_execution_provider_utils.h): a string it cannot parse
  is dropped with a WARNING (`stats.warnings`) and the EP runs without explicit profile. Without one
  the EP builds an engine for the shapes it sees and rebuilds it whenever a shape leaves the range
  built so far (`stats.trt_engine_builds`); with one it builds once, at session creation, and a
  shape outside it fails. `trt_engine_cache_enable` writes `<name>.engine` + `.profile` into
  `trt_engine_cache_path` (created with create_directory: its parent must exist; empty = the
  current directory) and loads them next time if the profile still covers the shapes;
  `trt_timing_cache_enable` writes the timing cache into `trt_timing_cache_path` (default: the
  engine cache path).
* TF32 (fp32 matmul/conv operands rounded to 10 mantissa bits on the tensor cores), with the upstream defaults:
  the CUDA EP's "use_tf32" option is on unless set to 0 (cuda_execution_provider_info.h `bool use_tf32{true}`,
  the option exists from ORT 1.18: an older `version` rejects the key); the TensorRT EP has no option for it
  (tensorrt_provider_options.h) and TensorRT's builder config has BuilderFlag.TF32 set by default; for both,
  NVIDIA_TF32_OVERRIDE=0 in the environment when the session is created turns it off (TensorRT developer guide,
  "TF32"). A session with TF32 on rounds its float32 inputs and outputs to TF32 (`tf32_round`), so an fp32
  session that leaves the default on misses the CPU reference in the tests. `stats.tf32_sessions` counts them.
* Provider options are parsed strictly, as ProviderOptionsParser does: an unknown key or a bool
  that is not 0/1/true/false/True/False is an error.

Stricter than the real thing (these fail silently there; here they raise `FakeOrtMisuse`):
a replay whose bound input shapes differ from the capture's ("a run with a changed shape and no new
graph id": real ORT replays the old graph anyway), a replay reading or writing device memory that
was freed, `session.run()` (no IOBinding) on a graph-capturing session.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import types
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as _real

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"

_NP_TO_ORT = {
    np.dtype("float32"): "tensor(float)", np.dtype("float16"): "tensor(float16)", np.dtype("float64"): "tensor(double)",
    np.dtype("int64"): "tensor(int64)", np.dtype("int32"): "tensor(int32)", np.dtype("int8"): "tensor(int8)",
    np.dtype("uint8"): "tensor(uint8)", np.dtype("bool"): "tensor(bool)",
}
_ORT_TO_NP = {v: k for k, v in _NP_TO_ORT.items()}

# provider option keys the EPs accept (onnxruntime/core/providers/cuda/cuda_execution_provider_info.cc,
# include/onnxruntime/core/providers/tensorrt/tensorrt_provider_options.h)
CUDA_OPTIONS = {
    "device_id", "has_user_compute_stream", "user_compute_stream", "gpu_mem_limit", "arena_extend_strategy",
    "cudnn_conv_algo_search", "do_copy_in_default_stream", "gpu_external_alloc", "gpu_external_free",
    "gpu_external_empty_cache", "cudnn_conv_use_max_workspace", "enable_cuda_graph", "cudnn_conv1d_pad_to_nc1d",
    "tunable_op_enable", "tunable_op_tuning_enable", "tunable_op_max_tuning_duration_ms", "enable_skip_layer_norm_strict_mode",
    "prefer_nhwc", "use_ep_level_unified_stream", "use_tf32", "sdpa_kernel", "fuse_conv_bias",
}
TRT_OPTIONS = {
    "device_id", "has_user_compute_stream", "user_compute_stream", "trt_max_partition_iterations", "trt_min_subgraph_size",
    "trt_max_workspace_size", "trt_fp16_enable", "trt_bf16_enable", "trt_int8_enable", "trt_int8_calibration_table_name",
    "trt_int8_use_native_calibration_table", "trt_dla_enable", "trt_dla_core", "trt_dump_subgraphs",
    "trt_engine_cache_enable", "trt_engine_cache_path", "trt_engine_decryption_enable", "trt_engine_decryption_lib_path",
    "trt_force_sequential_engine_build", "trt_context_memory_sharing_enable", "trt_layer_norm_fp32_fallback",
    "trt_timing_cache_enable", "trt_timing_cache_path", "trt_force_timing_cache", "trt_detailed_build_log",
    "trt_build_heuristics_enable", "trt_sparsity_enable", "trt_builder_optimization_level", "trt_auxiliary_streams",
    "trt_tactic_sources", "trt_extra_plugin_lib_paths", "trt_profile_min_shapes", "trt_profile_max_shapes",
    "trt_profile_opt_shapes", "trt_cuda_graph_enable", "trt_dump_ep_context_model", "trt_ep_context_file_path",
    "trt_ep_context_embed_mode", "trt_weight_stripped_engine_enable", "trt_onnx_model_folder_path",
    "trt_engine_cache_prefix", "trt_engine_hw_compatible", "trt_op_types_to_exclude",
}
_BOOL_OPTIONS = {"enable_cuda_graph", "do_copy_in_default_stream", "cudnn_conv_use_max_workspace", "cudnn_conv1d_pad_to_nc1d",
                 "use_tf32", "prefer_nhwc"} | {k for k in TRT_OPTIONS if k.endswith(("_enable", "_fallback", "_build", "_subgraphs",
                                                                                      "_table", "_hw_compatible", "_model"))
                                            or k in ("trt_force_timing_cache", "trt_detailed_build_log")}
SM = "sm90"  # the simulated GPU's compute capability (engine and timing cache names carry it)


class Fail(RuntimeError):
    """Like onnxruntime.capi.onnxruntime_pybind11_state.Fail: ORT's own error."""


class FakeOrtMisuse(AssertionError):
    """Something real ORT does silently wrong (see the module docstring); the fake refuses it."""


@dataclass
class Stats:
    sessions: int = 0
    regular_runs: int = 0
    captures: int = 0
    replays: int = 0
    h2d_bytes: int = 0
    d2h_bytes: int = 0
    d2h_by_name: dict = field(default_factory=dict)  # output name -> bytes copied to the host
    trt_engine_builds: int = 0
    tf32_sessions: int = 0  # sessions created with TF32 on (see the module docstring)
    trt_engine_loads: int = 0
    warnings: list = field(default_factory=list)
    session_log: list = field(default_factory=list)  # (model file name, providers, provider options)


class Device:
    """Simulated device memory: address -> numpy buffer."""

    def __init__(self, stats: Stats) -> None:
        self.stats, self.buffers, self._next = stats, {}, itertools.count(0x7F0000000000, 0x1000000)

    def alloc(self, shape, dtype) -> int:
        addr = next(self._next)
        buf = np.empty(tuple(shape), dtype)
        buf.fill(np.nan if buf.dtype.kind == "f" else 0x5A)  # uninitialised memory: garbage
        self.buffers[addr] = buf
        return addr

    def free(self, addr: int) -> None:
        self.buffers.pop(addr, None)

    def read(self, addr: int) -> np.ndarray:
        if addr not in self.buffers:
            raise FakeOrtMisuse(f"read of freed device memory at {addr:#x}")
        return self.buffers[addr]


def _parse_bool(key: str, value) -> bool:
    """ORT's TryParseStringWithClassicLocale<bool> on str(value) (the Python binding stringifies options)."""
    s = str(value)
    if s in ("1", "true", "True"):
        return True
    if s in ("0", "false", "False"):
        return False
    raise Fail(f"[ONNXRuntimeError] : 1 : FAIL : Failed to parse provider option \"{key}\": \"{s}\"")


def tf32_round(a: np.ndarray) -> np.ndarray:
    """float32 -> the nearest TF32 value (10 explicit mantissa bits, round half away from zero on the bit pattern)."""
    if a.dtype != np.float32:
        return a
    bits = np.ascontiguousarray(a).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32).reshape(a.shape)


def parse_profile_shapes(text: str) -> dict[str, list[list[int]]] | None:
    """ORT's ParseProfileShapes: "in1:2x3,in2:4" -> {"in1": [[2, 3]], "in2": [[4]]}; None where ORT returns false.

    A repeated name adds a profile. The name ends at the first ':' and the shape at the next one; dims are
    split on 'x' and read with std::stoi (leading digits; no digits at all throws -> treated as a format error).
    """
    if not text:
        return {}
    out: dict[str, list[list[int]]] = {}
    for pair in text.split(","):
        if not pair:  # MakeInputNameShapePair("") returns true and leaves the pair empty: ORT records it under ""
            out.setdefault("", []).append([])
            continue
        name, _, rest = pair.partition(":")
        shape_text = rest.split(":", 1)[0]
        dims = []
        for v in shape_text.split("x") if shape_text else []:
            digits = v.strip()
            sign = 1
            if digits.startswith(("-", "+")):
                sign, digits = (-1 if digits[0] == "-" else 1), digits[1:]
            lead = "".join(itertools.takewhile(str.isdigit, digits))
            if not lead:
                return None  # std::stoi throws std::invalid_argument
            dims.append(sign * int(lead))
        if not name or not dims:
            return None
        out.setdefault(name, []).append(dims)
    return out


def validate_profile_shapes(mn: dict, mx: dict, opt: dict) -> bool:
    """ORT's ValidateProfileShapes, literally (including its `&&` on the three size checks)."""
    if not mn and not mx and not opt:
        return True
    if len(mn) != len(mx) and len(mn) != len(opt) and len(mx) != len(opt):
        return False
    for name, profiles in mn.items():
        if name not in mx or name not in opt:
            return False
        if len(profiles) != len(mx[name]) or len(profiles) != len(opt[name]):
            return False
    return True


def make_fake_ort(providers=(TRT, CUDA, CPU), version: str = "1.20.1", min_runs_before_capture: int = 2) -> types.ModuleType:
    """A fresh fake `onnxruntime` module (own device, own stats)."""
    mod = types.ModuleType("onnxruntime")
    mod.__doc__ = __doc__
    mod.__version__ = version
    stats = Stats()
    device = Device(stats)
    mod.stats, mod.device, mod.Fail, mod.FakeOrtMisuse = stats, device, Fail, FakeOrtMisuse
    mod.SessionOptions, mod.GraphOptimizationLevel, mod.ExecutionMode = _real.SessionOptions, _real.GraphOptimizationLevel, _real.ExecutionMode
    mod.set_default_logger_severity = _real.set_default_logger_severity
    mod.get_available_providers = lambda: list(providers)
    mod.get_device = lambda: "GPU" if CUDA in providers else "CPU"
    multi_graph = tuple(int(x) for x in version.split(".")[:2]) >= (1, 18)

    # -- OrtValue ------------------------------------------------------------------------
    class OrtValue:
        def __init__(self, device_type: str, shape, dtype, *, host: np.ndarray | None = None, addr: int | None = None):
            self._device_type, self._shape, self._dtype = device_type, tuple(int(d) for d in shape), np.dtype(dtype)
            self._host, self._addr = host, addr
            if addr is not None:
                weakref.finalize(self, device.free, addr)

        @staticmethod
        def ortvalue_from_numpy(numpy_obj, device_type="cpu", device_id=0, vendor_id=-1):
            arr = np.asarray(numpy_obj)
            if device_type == "cpu":
                return OrtValue("cpu", arr.shape, arr.dtype, host=arr)  # wraps the array's memory
            _check_device(device_type, device_id)
            addr = device.alloc(arr.shape, arr.dtype)
            device.buffers[addr][...] = arr
            stats.h2d_bytes += arr.nbytes
            return OrtValue("cuda", arr.shape, arr.dtype, addr=addr)

        @staticmethod
        def ortvalue_from_shape_and_type(shape, element_type, device_type="cpu", device_id=0, vendor_id=-1):
            dtype = np.dtype(element_type)
            if device_type == "cpu":
                return OrtValue("cpu", shape, dtype, host=np.empty(tuple(shape), dtype))
            _check_device(device_type, device_id)
            return OrtValue("cuda", shape, dtype, addr=device.alloc(shape, dtype))

        def device_name(self) -> str:
            return self._device_type

        def shape(self) -> list[int]:
            return list(self._shape)

        def data_type(self) -> str:
            return _NP_TO_ORT[self._dtype]

        def element_type(self):
            return self._dtype.type

        def data_ptr(self) -> int:
            return self._addr if self._addr is not None else self._host.__array_interface__["data"][0]

        def has_value(self) -> bool:
            return True

        def is_tensor(self) -> bool:
            return True

        def _buffer(self) -> np.ndarray:
            return self._host if self._addr is None else device.read(self._addr)

        def numpy(self) -> np.ndarray:
            if self._addr is None:
                return self._host
            out = device.read(self._addr).copy()
            stats.d2h_bytes += out.nbytes
            return out

        def update_inplace(self, data) -> None:
            arr = np.ascontiguousarray(data)
            if arr.dtype != self._dtype:
                raise Fail(f"Type mismatch: the OrtValue holds {self._dtype}, the update is {arr.dtype}")
            if arr.size != int(np.prod(self._shape)):
                raise Fail(f"Size mismatch: the OrtValue holds {int(np.prod(self._shape))} elements, the update {arr.size}")
            self._buffer()[...] = arr.reshape(self._shape)
            if self._addr is not None:
                stats.h2d_bytes += arr.nbytes

    def _check_device(device_type, device_id):
        if device_type != "cuda" or CUDA not in providers:
            raise Fail(f"this onnxruntime build has no {device_type!r} device")
        if int(device_id) != 0:
            raise Fail(f"CUDA device {device_id} does not exist (one GPU)")

    # -- RunOptions ----------------------------------------------------------------------
    class RunOptions:
        def __init__(self) -> None:
            self._config: dict[str, str] = {}
            self.log_severity_level = 2
            self.terminate = False

        def add_run_config_entry(self, key: str, value: str) -> None:
            self._config[str(key)] = str(value)

        def get_run_config_entry(self, key: str) -> str:
            if key not in self._config:
                raise Fail(f"Run config entry {key!r} was not set")
            return self._config[key]

    # -- IOBinding -----------------------------------------------------------------------
    class IOBinding:
        def __init__(self, session: "InferenceSession") -> None:
            self._session = session
            self._inputs: dict[str, OrtValue] = {}
            self._outputs: dict[str, OrtValue | None] = {}  # None: ORT allocates at run time
            self._output_device: dict[str, str] = {}
            self._results: dict[str, OrtValue] = {}

        def _to_session_device(self, name: str, value: OrtValue) -> OrtValue:
            if value.device_name() == "cpu" and self._session._input_device == "cuda":  # copied when bound
                return OrtValue.ortvalue_from_numpy(np.array(value.numpy(), copy=True), "cuda", 0)
            return value

        def bind_cpu_input(self, name, arr_on_cpu) -> None:
            self._session._check_input_name(name)
            self._inputs[name] = self._to_session_device(name, OrtValue.ortvalue_from_numpy(np.asarray(arr_on_cpu)))

        def bind_ortvalue_input(self, name, ortvalue) -> None:
            self._session._check_input_name(name)
            self._inputs[name] = self._to_session_device(name, ortvalue)

        def bind_input(self, name, device_type, device_id, element_type, shape, buffer_ptr) -> None:
            self._session._check_input_name(name)
            if device_type == "cpu":
                raise Fail("the fake binds host inputs with bind_cpu_input only")
            if buffer_ptr not in device.buffers:
                raise FakeOrtMisuse(f"bind_input({name!r}) at {buffer_ptr:#x}: no device buffer there")
            self._inputs[name] = _View(buffer_ptr, shape, element_type)

        def bind_output(self, name, device_type="cpu", device_id=0, element_type=None, shape=None, buffer_ptr=None) -> None:
            self._session._check_output_name(name)
            if device_type != "cpu":
                _check_device(device_type, device_id)
            if buffer_ptr is not None:
                raise Fail("the fake binds pre-allocated outputs with bind_ortvalue_output only")
            self._outputs[name] = None
            self._output_device[name] = device_type
            self._results.pop(name, None)

        def bind_ortvalue_output(self, name, ortvalue) -> None:
            self._session._check_output_name(name)
            self._outputs[name] = ortvalue
            self._output_device[name] = ortvalue.device_name()
            self._results.pop(name, None)

        def clear_binding_inputs(self) -> None:
            self._inputs.clear()

        def clear_binding_outputs(self) -> None:
            self._outputs.clear()
            self._output_device.clear()
            self._results.clear()

        def synchronize_inputs(self) -> None:
            pass

        def synchronize_outputs(self) -> None:
            pass

        def get_outputs(self) -> list:
            out = []
            for name in self._outputs:
                if name not in self._results:
                    raise Fail(f"output {name!r} holds no value: it was bound after the last run")
                out.append(self._results[name])
            return out

        def copy_outputs_to_cpu(self) -> list:
            out = []
            for v, name in zip(self.get_outputs(), self._outputs):
                arr = np.array(v._buffer(), copy=True)
                if v.device_name() != "cpu":
                    stats.d2h_bytes += arr.nbytes
                    stats.d2h_by_name[name] = stats.d2h_by_name.get(name, 0) + arr.nbytes
                out.append(arr)
            return out

    class _View(OrtValue):
        """bind_input by pointer: a device tensor over an existing buffer (no ownership)."""

        def __init__(self, addr, shape, element_type):
            OrtValue.__init__(self, "cuda", shape, element_type)
            self._addr = addr

    # -- InferenceSession ----------------------------------------------------------------
    class InferenceSession:
        def __init__(self, path_or_bytes, sess_options=None, providers=None, provider_options=None, **kwargs):
            names, opts = _normalise_providers(providers, provider_options)
            self._path = Path(path_or_bytes)
            self._inner = _real.InferenceSession(str(path_or_bytes), sess_options=sess_options, providers=[CPU])
            self._providers = names
            self._options = opts
            self._input_device = "cuda" if names[0] in (CUDA, TRT) else "cpu"
            self._inputs = {a.name: a for a in self._inner.get_inputs()}
            self._outputs = {a.name: a for a in self._inner.get_outputs()}
            cuda_o, trt_o = opts.get(CUDA, {}), opts.get(TRT, {})
            self._graph_ep = None
            if names[0] == TRT and _parse_bool("trt_cuda_graph_enable", trt_o.get("trt_cuda_graph_enable", "0")):
                self._graph_ep = TRT
            if CUDA in names and _parse_bool("enable_cuda_graph", cuda_o.get("enable_cuda_graph", "0")):
                if names[0] != CUDA:
                    raise Fail("This session cannot use the graph capture feature as requested by the user as all compute "
                               f"graph nodes have not been partitioned to the {CUDA}")
                self._graph_ep = CUDA
            if self._graph_ep is not None:
                import onnx

                ops = {n.op_type for n in onnx.load(str(self._path), load_external_data=False).graph.node}
                if ops & {"If", "Loop", "Scan"}:
                    raise Fail("This session cannot use the CUDA Graph feature as requested by the user as the model has "
                               "control flow nodes which can't be supported by CUDA Graphs.")
            self._run_counts: dict[int, int] = {}
            self._graphs: dict[int, dict] = {}
            self._trt = _TrtState(self, trt_o) if names[0] == TRT else None
            override_off = os.environ.get("NVIDIA_TF32_OVERRIDE") == "0"  # read when the libraries initialise
            if names[0] == TRT:
                self._tf32 = not override_off  # no EP option; TensorRT's TF32 builder flag is on by default
            elif names[0] == CUDA:
                self._tf32 = not override_off and _parse_bool("use_tf32", cuda_o.get("use_tf32", "1"))
            else:
                self._tf32 = False
            stats.tf32_sessions += self._tf32
            stats.sessions += 1
            stats.session_log.append((self._path.name, tuple(names), {k: dict(v) for k, v in opts.items()}))

        # what the real session answers
        def get_providers(self) -> list[str]:
            return list(self._providers)

        def get_provider_options(self) -> dict:
            return {k: dict(v) for k, v in self._options.items()}

        def get_inputs(self):
            return self._inner.get_inputs()

        def get_outputs(self):
            return self._inner.get_outputs()

        def io_binding(self) -> IOBinding:
            return IOBinding(self)

        def _check_input_name(self, name) -> None:
            if name not in self._inputs:
                raise Fail(f"Invalid input name: {name}")

        def _check_output_name(self, name) -> None:
            if name not in self._outputs:
                raise Fail(f"Invalid output name: {name}")

        def run(self, output_names, input_feed, run_options=None):
            if self._graph_ep is not None:
                raise FakeOrtMisuse("session.run() on a CUDA-graph session: graphs need IOBinding (fixed device buffers)")
            for n, a in input_feed.items():
                self._check_input_name(n)
                if self._input_device == "cuda":
                    stats.h2d_bytes += np.asarray(a).nbytes
            self._trt_check({n: np.asarray(a).shape for n, a in input_feed.items()})
            outs = self._inner.run(output_names, input_feed)
            stats.regular_runs += 1
            return outs

        def _trt_check(self, shapes) -> None:
            if self._trt is not None:
                self._trt.on_run(shapes)

        def _compute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            missing = [n for n in self._inputs if n not in inputs]
            if missing:
                raise Fail(f"Required inputs ({missing}) are missing from input feed")
            self._trt_check({n: a.shape for n, a in inputs.items()})
            rnd = tf32_round if self._tf32 else (lambda a: a)
            outs = self._inner.run(None, {n: rnd(np.array(a, copy=True)) for n, a in inputs.items()})
            return dict(zip(self._outputs, (rnd(o) for o in outs)))

        def run_with_iobinding(self, iobinding: IOBinding, run_options=None) -> None:
            gid = 0
            if run_options is not None and "gpu_graph_id" in run_options._config:
                text = run_options._config["gpu_graph_id"]
                try:
                    gid = int(text)
                except ValueError:
                    raise Fail(f"Failed to parse the cuda graph annotation id: {text}") from None
            if self._graph_ep == TRT or (self._graph_ep == CUDA and not multi_graph):
                gid = 0  # one graph per session: the id is not read
            if self._graph_ep is None or gid == -1:
                self._regular(iobinding)
            elif gid in self._graphs:
                self._replay(iobinding, gid)
            else:
                self._capture(iobinding, gid)

        def _regular(self, b: IOBinding) -> dict:
            values = self._compute({n: v._buffer() for n, v in b._inputs.items()})
            for name, slot in b._outputs.items():
                arr = values[name]
                if slot is None:
                    dev = b._output_device[name]
                    if dev == "cpu":
                        v = OrtValue("cpu", arr.shape, arr.dtype, host=np.array(arr, copy=True))
                        if self._input_device == "cuda":
                            stats.d2h_bytes += arr.nbytes
                            stats.d2h_by_name[name] = stats.d2h_by_name.get(name, 0) + arr.nbytes
                    else:
                        v = OrtValue.ortvalue_from_shape_and_type(arr.shape, arr.dtype, "cuda", 0)
                        device.buffers[v._addr][...] = arr
                else:
                    if tuple(slot.shape()) != arr.shape or slot._dtype != arr.dtype:
                        raise Fail(f"Shape mismatch attempting to re-use buffer. {tuple(slot.shape())} != {arr.shape} ({name})")
                    slot._buffer()[...] = arr
                    v = slot
                    if slot.device_name() == "cpu" and self._input_device == "cuda":
                        stats.d2h_bytes += arr.nbytes
                        stats.d2h_by_name[name] = stats.d2h_by_name.get(name, 0) + arr.nbytes
                b._results[name] = v
            stats.regular_runs += 1
            return values

        def _capture(self, b: IOBinding, gid: int) -> None:
            for name, v in b._inputs.items():  # a host input was copied to the device when it was bound
                if v.device_name() != "cuda":
                    raise Fail(f"CUDA graph capture: input {name!r} is not in device memory")
            for name, v in b._outputs.items():  # ORT may allocate a device output (from its warmed-up arena)
                if (v.device_name() if v is not None else b._output_device[name]) != "cuda":
                    raise Fail(f"CUDA graph capture: output {name!r} is bound to host memory (the copy to the host "
                               "is a synchronous cudaMemcpy, illegal inside a capture)")
            # inside this one call: the warm-up regular runs, then the capturing run (+ its replay)
            need = min_runs_before_capture if self._graph_ep == CUDA else 1
            while self._run_counts.get(gid, 0) < need:
                self._regular(b)
                self._run_counts[gid] = self._run_counts.get(gid, 0) + 1
            self._regular(b)
            stats.regular_runs -= 1
            self._graphs[gid] = {
                "inputs": {n: (v._addr, tuple(v.shape()), v._dtype) for n, v in b._inputs.items()},
                "outputs": {n: (b._results[n]._addr, tuple(b._results[n].shape()), b._results[n]._dtype) for n in b._outputs},
                # ORT-allocated outputs come from its arena, which keeps the block: the graph keeps writing there
                "arena": [b._results[n] for n, v in b._outputs.items() if v is None],
            }
            stats.captures += 1

        def _replay(self, b: IOBinding, gid: int) -> None:
            g = self._graphs[gid]
            now = {n: tuple(v.shape()) for n, v in b._inputs.items()}
            then = {n: s for n, (_, s, _) in g["inputs"].items()}
            if now != then:
                raise FakeOrtMisuse(f"graph {gid} was captured for input shapes {then}; this run binds {now} "
                                    "(real ORT would replay the old graph): a new shape set needs a new gpu_graph_id")
            values = self._compute({n: device.read(addr) for n, (addr, _, _) in g["inputs"].items()})
            for name, (addr, shape, dtype) in g["outputs"].items():
                device.read(addr)[...] = values[name]  # the capture-time address, whatever is bound now
            stats.replays += 1

    class _TrtState:
        """The TensorRT EP's engine of one session: explicit profile, engine and timing caches."""

        def __init__(self, session: "InferenceSession", o: dict) -> None:
            self.s = session
            self.fp16 = _parse_bool("trt_fp16_enable", o.get("trt_fp16_enable", "0"))
            self.engine_cache = _parse_bool("trt_engine_cache_enable", o.get("trt_engine_cache_enable", "0"))
            self.timing_cache = _parse_bool("trt_timing_cache_enable", o.get("trt_timing_cache_enable", "0"))
            self.cache_path = Path(o.get("trt_engine_cache_path", "") or ".")
            self.timing_path = Path(o.get("trt_timing_cache_path", "") or self.cache_path)
            for flag, folder in ((self.engine_cache, self.cache_path), (self.timing_cache, self.timing_path)):
                if flag and not folder.is_dir():
                    if not folder.parent.is_dir():
                        raise Fail(f"TensorRT EP failed to create directory {folder}")
                    folder.mkdir()
            texts = [o.get(f"trt_profile_{k}_shapes", "") for k in ("min", "max", "opt")]
            parsed = []
            for k, text in zip(("min", "max", "opt"), texts):
                p = parse_profile_shapes(text)
                if p is None:
                    stats.warnings.append(f"[TensorRT EP] The format of provider option 'trt_profile_{k}_shapes' is wrong, "
                                          "please follow the format of 'input1:dim1xdimd2...,input2:dim1xdim2...,...'")
                    p = {}
                parsed.append(p)
            mn, mx, opt = parsed
            if not validate_profile_shapes(mn, mx, opt):
                stats.warnings.append("[TensorRT EP] Profile shapes validation failed. Make sure the provider options "
                                      "'trt_profile_min_shapes', 'trt_profile_max_shapes' and 'trt_profile_opt_shapes' "
                                      "have same input name and number of profile.")
                mn, mx, opt = {}, {}, {}
            self.explicit = bool(mn)
            self.ranges: dict[str, tuple[list[int], list[int]]] = {}
            if self.explicit:
                for name, arg in session._inputs.items():
                    dyn = any(not isinstance(d, int) or d < 0 for d in (arg.shape or []))
                    if name not in mn:
                        if dyn:
                            raise Fail(f"TensorRT EP failed to create engine from network: dynamic input {name!r} has "
                                       "no explicit profile shape")
                        continue
                    lo, hi, mid = mn[name][0], mx[name][0], opt[name][0]
                    rank = len(arg.shape or [])
                    if not (len(lo) == len(hi) == len(mid) == rank):
                        raise Fail(f"TensorRT EP: profile of {name!r} has the wrong rank")
                    for d, a, b, c in zip(arg.shape, lo, mid, hi):
                        if not a <= b <= c or (isinstance(d, int) and d >= 0 and not a == b == c == d):
                            raise Fail(f"TensorRT EP failed to create engine: bad profile for {name!r}: {lo}/{mid}/{hi}")
                    self.ranges[name] = (lo, hi)
                self._engine()
            self.built = self.explicit

        def _name(self) -> str:
            h = hashlib.sha256(f"{self.s._path.name}|{version}".encode()).hexdigest()[:16]
            return f"TensorrtExecutionProvider_TRTKernel_graph_{self.s._path.stem}_{h}_0_0{'_fp16' if self.fp16 else ''}_{SM}"

        def _engine(self) -> None:
            """Load the cached engine if its profile covers the ranges, else build (and cache) one."""
            name = self._name()
            eng, prof = self.cache_path / f"{name}.engine", self.cache_path / f"{name}.profile"
            want = {n: [list(lo), list(hi)] for n, (lo, hi) in self.ranges.items()}
            if self.engine_cache and eng.is_file() and prof.is_file():
                try:
                    have = json.loads(prof.read_text())
                except ValueError:
                    have = None
                if have is not None and all(n in have and all(a <= b and c >= d for a, b, c, d in
                                                             zip(have[n][0], lo, have[n][1], hi)) for n, (lo, hi) in want.items()):
                    stats.trt_engine_loads += 1
                    return
            stats.trt_engine_builds += 1
            if self.engine_cache:
                eng.write_bytes(b"fake TensorRT engine " + json.dumps({"fp16": self.fp16, "profile": want}).encode())
                prof.write_text(json.dumps(want))
            if self.timing_cache:
                (self.timing_path / f"TensorrtExecutionProvider_cache_{SM}.timing").write_bytes(b"fake timing cache")

        def on_run(self, shapes: dict) -> None:
            grow = False
            for name, shape in shapes.items():
                if name not in self.ranges:
                    if self.explicit:
                        continue  # a static input
                    self.ranges[name] = (list(shape), list(shape))
                    grow = True
                    continue
                lo, hi = self.ranges[name]
                inside = all(a <= d <= b for a, d, b in zip(lo, shape, hi))
                if not inside:
                    if self.explicit:
                        raise Fail(f"TensorRT EP: input {name!r} shape {list(shape)} is outside the explicit profile {lo}..{hi}")
                    self.ranges[name] = ([min(a, d) for a, d in zip(lo, shape)], [max(b, d) for b, d in zip(hi, shape)])
                    grow = True
            if grow or not self.built:
                self._engine()
                self.built = True

    def _normalise_providers(providers, provider_options):
        providers = list(providers) if providers is not None else [CPU]
        names, opts = [], {}
        if provider_options is not None and len(provider_options) != len(providers):
            raise ValueError("'providers' and 'provider_options' should be the same length if both are given.")
        for i, p in enumerate(providers):
            name, o = (p if isinstance(p, tuple) else (p, {}))
            if provider_options is not None:
                o = provider_options[i]
            if name not in mod.get_available_providers():
                raise ValueError(f"Specified provider '{name}' is not in available provider names."
                                 f"Available providers: '{', '.join(mod.get_available_providers())}'")
            known = CUDA_OPTIONS if name == CUDA else TRT_OPTIONS if name == TRT else set()
            if name == CUDA and not multi_graph:  # "use_tf32" came with ORT 1.18, like gpu_graph_id
                known = known - {"use_tf32"}
            o = {str(k): str(v) for k, v in (o or {}).items()}
            for k, v in o.items():
                if k not in known:
                    raise Fail(f"[ONNXRuntimeError] : 1 : FAIL : Unknown provider option: \"{k}\".")
                if k in _BOOL_OPTIONS:
                    _parse_bool(k, v)
            names.append(name)
            opts[name] = o
        return names, opts

    mod.OrtValue, mod.RunOptions, mod.IOBinding, mod.InferenceSession = OrtValue, RunOptions, IOBinding, InferenceSession
    return mod


def install(monkeypatch, **kwargs) -> types.ModuleType:
    """make_fake_ort(**kwargs) as `onnxruntime` for the rest of the test."""
    import sys

    fake = make_fake_ort(**kwargs)
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    return fake


def engine_dir_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root` -> (size, mtime_ns): the listing a run must leave unchanged."""
    root = Path(root)
    out = {".": (0, root.stat().st_mtime_ns)}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns)
    return out


__all__ = ["CPU", "CUDA", "TRT", "Fail", "FakeOrtMisuse", "Stats", "make_fake_ort", "install", "parse_profile_shapes", "tf32_round",
           "validate_profile_shapes", "engine_dir_snapshot"]
