"""In-process fakes of tensorrt, polygraphy + cuda-python, so the TensorRT backend's whole build/run
control flow runs everywhere (tests/test_engine_trt.py).

They model the real APIs, not ours, and are strict where those are (each class says where from):
(err, value) tuples; stream objects whose native handle TensorRT's enqueue takes; work queued on a
stream and done only when that stream is synchronised (a host buffer a device->host copy targets
reads as NaN garbage until then); graphs that replay exactly the device addresses (and shapes) seen
at capture; name-based tensor I/O where every I/O tensor needs an address before an enqueue; input
shapes outside the optimisation profile refused; user-managed context memory that must be set, live,
256-byte aligned and at least the engine's device memory size before an enqueue. The fake engine runs
the plan's ONNX graph with onnx's reference evaluator, reading and writing device memory in the
dtypes the graph declares (HALF = float16); the tests compare against ONNX Runtime on the same graph,
so neither side reuses the other's formula.
"""

from __future__ import annotations

import ctypes
import enum
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from tests.test_trt_api import _params  # parameter names a Polygraphy callable accepts

ALIGN = 256  # cudaMalloc's alignment; TensorRT wants user-managed context memory 256-byte aligned
POISON = 0xFF  # what a host buffer holds while a device->host copy into it is still pending (NaN as float)


class Err(enum.Enum):
    """cuda-python's `cudaError_t` members the backend meets (NVIDIA/cuda-python cuda_bindings/docs/source/module/runtime.rst)."""

    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorNoDevice = 100
    cudaErrorStreamCaptureInvalidated = 901


OK = Err.cudaSuccess


class FakeStream:
    """Like cuda-python's `cudaStream_t`: an object holding the native handle (`int()` gives it).

    Upstream: NVIDIA/cuda-python cuda_bindings/docs/source/module/runtime.rst (cudaStream_t; `getPtr()` /
    `cuda.bindings.utils.get_cuda_native_handle` give the handle TensorRT's `execute_async_v3(stream_handle: int)` takes).
    """

    def __init__(self, handle: int) -> None:
        self.handle = handle

    def __int__(self) -> int:
        return self.handle


class FakeCudart:
    """cuda-python's runtime bindings as the backend calls them.

    Upstream: NVIDIA/cuda-python cuda_bindings/docs/source/module/runtime.rst and the CUDA Runtime API reference
    (docs.nvidia.com/cuda/cuda-runtime-api: group__CUDART__MEMORY cudaMalloc/cudaMallocHost/cudaMemcpyAsync,
    group__CUDART__STREAM cudaStreamSynchronize/cudaStreamBeginCapture/cudaStreamEndCapture,
    group__CUDART__GRAPH cudaGraphInstantiate/cudaGraphLaunch). Strict where CUDA is:
    - cudaMemcpyAsync is asynchronous: the bytes move when the stream that queued the copy is synchronised;
      until then the host destination of a device->host copy holds garbage (POISON), so a host read before
      `cudaStreamSynchronize` on *that* stream sees NaNs. Pointers must lie in live allocations of the
      direction's kind (device / page-locked host), `count` bytes included.
    - stream capture records work instead of running it; a graph replays the recorded work with the
      addresses captured (TensorRT's enqueue bakes them in); replaying onto freed memory fails.
    - cudaMalloc memory is 256-byte aligned (CUDA guarantees at least that).
    """

    cudaError_t = Err

    class cudaMemcpyKind(enum.Enum):  # the runtime's values
        cudaMemcpyHostToHost = 0
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2
        cudaMemcpyDeviceToDevice = 3

    class cudaStreamCaptureMode(enum.Enum):
        cudaStreamCaptureModeGlobal = 0

    def __init__(self, devices: int = 1) -> None:
        self.devices = devices
        self.dev: dict[int, np.ndarray] = {}  # device pointer -> its bytes
        self.host: dict[int, np.ndarray] = {}  # page-locked host pointer -> its bytes
        self.internal: dict[int, np.ndarray] = {}  # memory TensorRT allocates by itself (STATIC contexts)
        self._keep: dict[int, np.ndarray] = {}  # the over-allocated backing arrays (alignment)
        self.queues: dict[int, list] = {}  # native stream handle -> work not yet done
        self.capturing: tuple[int, list] | None = None  # (stream handle, captured ops)
        self.captures = self.launches = self.graphs_alive = self.syncs = 0
        self.copies: list[tuple[str, int, int]] = []  # (kind name, device pointer (dst for D2D), bytes) of every copy queued
        self.instantiate_error: Err | None = None  # make cudaGraphInstantiate fail with this error
        self.peak_bytes = 0  # the most device memory (cudaMalloc + TensorRT's own) live at once

    def cudaGetDeviceCount(self):
        return (OK, self.devices) if self.devices else (Err.cudaErrorNoDevice, 0)

    def cudaGetDeviceProperties(self, i):
        return OK, SimpleNamespace(name=b"Fake GPU 80GB\0\0\0", major=9, minor=0, totalGlobalMem=80 << 30)

    def cudaSetDevice(self, i):
        return (OK,)

    # -- memory --------------------------------------------------------------------------------
    def live_bytes(self) -> int:
        return sum(a.nbytes for a in self.dev.values()) + sum(a.nbytes for a in self.internal.values())

    def _alloc(self, table, n):
        n = int(n)
        raw = np.full(n + ALIGN, 0xAB, np.uint8)  # garbage, like fresh device memory
        off = (-raw.ctypes.data) % ALIGN
        buf = raw[off:off + n]
        table[buf.ctypes.data] = buf
        self._keep[buf.ctypes.data] = raw
        self.peak_bytes = max(self.peak_bytes, self.live_bytes())
        return OK, buf.ctypes.data

    def cudaMalloc(self, n):
        return self._alloc(self.dev, n)

    def cudaMallocHost(self, n):
        return self._alloc(self.host, n)

    def cudaFree(self, p):
        assert int(p) in self.dev, f"cudaFree of {p:#x}: not a live device allocation"
        del self.dev[int(p)], self._keep[int(p)]
        return (OK,)

    def cudaFreeHost(self, p):
        assert int(p) in self.host, f"cudaFreeHost of {p:#x}: not a live page-locked allocation"
        del self.host[int(p)], self._keep[int(p)]
        return (OK,)

    @staticmethod
    def find(table: dict, ptr: int, n: int) -> int | None:
        """The base of the allocation in `table` holding [ptr, ptr + n), or None."""
        for base, arr in table.items():
            if base <= ptr and ptr + n <= base + arr.nbytes:
                return base
        return None

    def device_array(self, ptr: int, n: int, why: str) -> np.ndarray:
        """A byte view of live device memory [ptr, ptr + n) (AssertionError when it is not all live)."""
        for table in (self.dev, self.internal):
            base = self.find(table, ptr, n)
            if base is not None:
                return table[base][ptr - base:ptr - base + n]
        raise AssertionError(f"{why}: {n} bytes at {ptr:#x} are not live device memory")

    # -- streams -------------------------------------------------------------------------------
    def cudaStreamCreate(self):
        stream = FakeStream(0x5000 + 16 * (len(self.queues) + self.syncs % 7) + 1)
        while stream.handle in self.queues:
            stream.handle += 16
        self.queues[stream.handle] = []
        return OK, stream

    def _handle(self, stream) -> int:
        """cuda-python takes a cudaStream_t (or its int handle); anything else is a wrong handle."""
        handle = stream.handle if isinstance(stream, FakeStream) else stream
        assert isinstance(handle, int) and handle in self.queues, f"not a live stream: {stream!r}"
        return handle

    def enqueue(self, stream, op) -> None:
        handle = self._handle(stream)
        if self.capturing is not None and self.capturing[0] == handle:
            self.capturing[1].append(op)
        else:
            self.queues[handle].append(op)

    def cudaStreamDestroy(self, s):
        assert not self.queues.pop(self._handle(s)), "stream destroyed with work pending"
        return (OK,)

    def cudaStreamSynchronize(self, s):
        handle = self._handle(s)
        assert self.capturing is None or self.capturing[0] != handle, "cudaStreamSynchronize on a capturing stream"
        queue = self.queues[handle]
        self.syncs += 1
        while queue:
            queue.pop(0)()
        return (OK,)

    def pending(self, stream) -> int:
        return len(self.queues[self._handle(stream)])

    # -- copies --------------------------------------------------------------------------------
    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        assert isinstance(kind, self.cudaMemcpyKind)
        assert self.capturing is None, "copies are not part of the captured graph"
        dst, src, n = int(dst), int(src), int(n)
        K = self.cudaMemcpyKind
        if kind == K.cudaMemcpyHostToDevice:
            self.device_array(dst, n, "H2D destination")
            assert self.find(self.host, src, n) is not None, f"H2D source {src:#x}: not page-locked host memory (cudaMallocHost)"
            dev_ptr = dst
        elif kind == K.cudaMemcpyDeviceToHost:
            self.device_array(src, n, "D2H source")
            base = self.find(self.host, dst, n)
            assert base is not None, f"D2H destination {dst:#x}: not page-locked host memory (cudaMallocHost)"
            self.host[base][dst - base:dst - base + n] = POISON  # nothing valid there until the stream is synchronised
            dev_ptr = src
        elif kind == K.cudaMemcpyDeviceToDevice:
            self.device_array(src, n, "D2D source")
            self.device_array(dst, n, "D2D destination")
            dev_ptr = dst
        else:
            raise AssertionError(f"{kind.name} is not a copy the backend makes")
        self.copies.append((kind.name, dev_ptr, n))

        def run():  # done at the stream's next synchronisation; the memory must still be there
            if kind != K.cudaMemcpyHostToDevice:
                self.device_array(src, n, "copy source at execution")
            if kind != K.cudaMemcpyDeviceToHost:
                self.device_array(dst, n, "copy destination at execution")
            ctypes.memmove(dst, src, n)

        self.enqueue(stream, run)
        return (OK,)

    def count(self, kind: str, ptrs) -> int:
        """Copies of `kind` ("H2D", "D2H", "D2D") whose device side is one of `ptrs` since the last `copies.clear()`."""
        name = {"H2D": "cudaMemcpyHostToDevice", "D2H": "cudaMemcpyDeviceToHost", "D2D": "cudaMemcpyDeviceToDevice"}[kind]
        ptrs = set(ptrs)
        return sum(1 for k, p, _n in self.copies if k == name and p in ptrs)

    # -- graphs --------------------------------------------------------------------------------
    def cudaStreamBeginCapture(self, stream, mode):
        assert isinstance(mode, self.cudaStreamCaptureMode)
        assert self.capturing is None, "a capture is already under way"
        self.capturing = (self._handle(stream), [])
        return (OK,)

    def cudaStreamEndCapture(self, stream):
        assert self.capturing is not None and self.capturing[0] == self._handle(stream)
        (_h, ops), self.capturing = self.capturing, None
        self.captures += 1
        self.graphs_alive += 1
        return OK, SimpleNamespace(ops=ops)

    def cudaGraphInstantiate(self, graph, flags):  # cuda-python 12+: (graph, flags) -> (err, graphExec)
        assert isinstance(flags, int)
        if self.instantiate_error is not None:
            return self.instantiate_error, None
        self.graphs_alive += 1
        return OK, SimpleNamespace(ops=list(graph.ops))

    def cudaGraphLaunch(self, exe, stream):
        self.launches += 1
        for op in exe.ops:
            self.enqueue(stream, op)
        return (OK,)

    def cudaGraphExecDestroy(self, e):
        self.graphs_alive -= 1
        return (OK,)

    def cudaGraphDestroy(self, g):
        self.graphs_alive -= 1
        return (OK,)

    def cudaGetLastError(self):
        return (OK,)


def _version(v: str) -> tuple[int, int]:
    major, minor = v.split(".")[:2]
    return int(major), int(minor)


def fake_tensorrt(cudart: FakeCudart, version: str = "11.4.0.106"):
    """A TensorRT look-alike runtime: a plan is b"FAKEPLAN" + JSON header (profile, device memory) + the ONNX graph it runs.

    Upstream: NVIDIA/TensorRT python/src/infer/pyCore.cpp (the bindings) and python/docstrings/infer/pyCoreDoc.h
    (docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Engine.html, ExecutionContext.html),
    include/NvInferRuntime.h (IExecutionContext::setDeviceMemoryV2, enqueueV3). Names follow `version`:
    10.0 has `device_memory_size` and the `device_memory` setter only; 10.1 adds `device_memory_size_v2` and
    `set_device_memory(memory, size)`; 10.14 adds `get_engine_stat`; 11 removes `device_memory_size` and
    `create_execution_context_without_device_memory` (checked against the wheels: tests/data/api_names.json).
    """
    from onnx.reference import ReferenceEvaluator

    ver = _version(version)

    class DataType(enum.Enum):  # TensorRT's members; HALF is float16
        FLOAT, HALF, INT8, INT32, BOOL, UINT8, FP8, BF16, INT64, INT4 = range(10)

    to_np = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT32: np.int32, DataType.INT64: np.int64}
    from_onnx = {TensorProto.FLOAT: DataType.FLOAT, TensorProto.FLOAT16: DataType.HALF, TensorProto.INT64: DataType.INT64}

    class TensorIOMode(enum.Enum):
        NONE, INPUT, OUTPUT = range(3)

    class MemoryPoolType(enum.Enum):
        WORKSPACE = 0

    class ExecutionContextAllocationStrategy(enum.Enum):  # pyCore.cpp: STATIC (default), ON_PROFILE_CHANGE, USER_MANAGED
        STATIC, ON_PROFILE_CHANGE, USER_MANAGED = range(3)

    class EngineStat(enum.Enum):  # TensorRT >= 10.14
        TOTAL_WEIGHTS_SIZE, STRIPPED_WEIGHTS_SIZE = range(2)

    class Logger:
        ERROR, WARNING = 1, 2

        def __init__(self, sev):
            self.sev = sev

    log: list[str] = []  # what TensorRT's logger would print (enqueue failures return False and log)

    class Context:
        """IExecutionContext (pyCoreDoc.h IExecutionContextDoc; NvInferRuntime.h):
        - set_input_shape returns False for a shape outside profile 0 (or of the wrong rank);
        - execute_async_v3 fails (False + a log line) unless every I/O tensor has an address and, for a
          USER_MANAGED context, live device memory of at least the engine's size was set; it reads the
          addresses when it is enqueued (a captured graph replays them);
        - the first enqueue after an input shape change updates the context's internal state ("call
          enqueueV3 once after an input shape change to update internal state" - TensorRT developer guide,
          Best Practices > CUDA Graphs): capturing before it fails, and replaying a graph after the
          context's shapes changed is an error - one context per shape set keeps its graph valid.
        """

        def __init__(self, engine, strategy):
            self.engine, self.strategy, self.in_shapes, self.addr = engine, strategy, {}, {}
            self.memory: tuple[int, int] | None = None  # (pointer, size) of user-managed memory
            self.state: dict | None = None  # input shapes the internal state was last updated for
            if strategy == ExecutionContextAllocationStrategy.STATIC:  # TensorRT allocates it by itself
                _err, ptr = cudart._alloc(cudart.internal, engine.required_memory)
                self.memory = (ptr, engine.required_memory)
                self._own = ptr
            else:
                self._own = None

        def __del__(self):  # TensorRT frees the memory it allocated with the context
            if getattr(self, "_own", None) is not None and self._own in cudart.internal:
                del cudart.internal[self._own], cudart._keep[self._own]

        def set_input_shape(self, name, shape):
            mn, _, mx = self.engine.get_tensor_profile_shape(name, 0)
            shape = tuple(int(d) for d in shape)
            if len(shape) != len(mn) or not all(a <= d <= b for d, a, b in zip(shape, mn, mx)):
                log.append(f"IExecutionContext::setInputShape: {name} {shape} is outside the profile")
                return False
            if self.in_shapes.get(name) != shape:
                self.state = None  # the next enqueue updates the internal state; graphs captured before are stale
            self.in_shapes[name] = shape
            return True

        def infer_shapes(self):  # the binding: names of unresolved tensors; RuntimeError on an error code
            if self.engine.infer_shapes_error:
                raise RuntimeError("infer_shapes error code: -1")
            return [n for n in self.engine.inputs if n not in self.in_shapes]

        def get_tensor_shape(self, name):
            if name in self.engine.inputs:
                return self.in_shapes.get(name, self.engine.get_tensor_shape(name))
            sizes = {sym: self.in_shapes[n][i] for n, dims in self.engine.inputs.items() for i, sym in enumerate(dims[1])
                     if isinstance(sym, str) and n in self.in_shapes}
            shape = tuple(sizes.get(d, -1) if isinstance(d, str) else d for d in self.engine.outputs[name][1])
            if -1 in shape and set(self.in_shapes) == set(self.engine.inputs):
                # a dim no input names (the UNet's map grid Q): TensorRT's shape inference computes it from the input
                # shapes; here, the graph's output shape on zeros of those shapes (once per shape set)
                shape = self.engine.output_shapes(dict(self.in_shapes))[name]
            return shape

        def set_tensor_address(self, name, ptr):
            assert name in self.engine.dtypes, f"set_tensor_address: no tensor {name!r}"
            self.addr[name] = int(ptr)
            return True

        def _set_memory(self, ptr, size):
            assert self.strategy == ExecutionContextAllocationStrategy.USER_MANAGED, "device memory of a context TensorRT allocates for"
            assert int(ptr) % ALIGN == 0, f"context memory {ptr:#x} is not 256-byte aligned"
            self.memory = (int(ptr), int(size))

        if ver >= (10, 1):
            def set_device_memory(self, memory, size):
                self._set_memory(memory, size)

        device_memory = property(None, lambda self, memory: self._set_memory(memory, self.engine.required_memory))  # write-only

        def execute_async_v3(self, stream_handle):
            assert type(stream_handle) is int, f"execute_async_v3 takes the native stream handle (int), got {stream_handle!r}"
            eng = self.engine
            missing = [n for n in eng.names if n not in self.addr]
            if missing:
                log.append(f"IExecutionContext::enqueueV3: Error Code 3: API Usage Error (address of {missing} not set)")
                return False
            if set(self.in_shapes) != set(eng.inputs):
                log.append("IExecutionContext::enqueueV3: input shapes not all specified")
                return False
            if self.memory is None or self.memory[1] < eng.required_memory:
                log.append(f"IExecutionContext::enqueueV3: device memory not set or smaller than {eng.required_memory} bytes")
                return False
            capturing = cudart.capturing is not None and cudart.capturing[0] == stream_handle
            shapes_now = dict(self.in_shapes)
            if capturing and self.state != shapes_now:
                log.append("IExecutionContext::enqueueV3: capture before the enqueue that updates the internal state")
                return False
            if not capturing:
                self.state = shapes_now
            addr, memory = dict(self.addr), self.memory  # addresses baked in, like a CUDA graph
            shapes = {n: self.get_tensor_shape(n) for n in eng.names}

            def device(name):
                dt = np.dtype(to_np[eng.dtypes[name]])
                n = int(np.prod(shapes[name], dtype=np.int64)) * dt.itemsize
                return cudart.device_array(addr[name], n, f"tensor {name!r}").view(dt).reshape(shapes[name])

            def run():
                assert self.state == shapes_now, "graph replayed after its context's input shapes changed (capture per context + shape)"
                scratch = cudart.device_array(memory[0], eng.required_memory, "context device memory") if eng.required_memory else None
                outs = eng.evaluator.run(None, {n: device(n).copy() for n in eng.inputs})
                if scratch is not None:
                    scratch[...] = 0xCD  # activations live here while the network runs
                for name, value in zip(eng.outputs, outs):
                    device(name)[...] = value

            cudart.enqueue(stream_handle, run)
            return True

    class Engine:
        """ICudaEngine (pyCoreDoc.h ICudaEngineDoc): name-based I/O, profile 0's shapes, create_execution_context(strategy),
        device memory sizes by version."""

        infer_shapes_error = False

        def __init__(self, header, model):
            self.profile, self.model, self._evaluator = header["profile"], model, None
            self.required_memory = int(header["device_memory"])
            self.weights = int(header["weights"])

            def info(v):
                t = v.type.tensor_type
                return from_onnx[t.elem_type], tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim)

            self.inputs = {v.name: info(v) for v in model.graph.input}
            self.outputs = {v.name: info(v) for v in model.graph.output}
            self.dtypes = {n: i[0] for n, i in {**self.inputs, **self.outputs}.items()}
            self.names = [*self.inputs, *self.outputs]
            self.contexts = 0

        @property
        def evaluator(self):  # made at the first run (onnx's reference evaluator lacks some opsets' Q/DQ: load still works)
            if self._evaluator is None:
                self._evaluator = ReferenceEvaluator(self.model)
            return self._evaluator

        def output_shapes(self, in_shapes: dict) -> dict:
            key = tuple(sorted(in_shapes.items()))
            known = self.__dict__.setdefault("_out_shapes", {})
            if key not in known:
                zeros = {n: np.zeros(in_shapes[n], to_np[self.dtypes[n]]) for n in self.inputs}
                known[key] = {n: tuple(np.shape(v)) for n, v in zip(self.outputs, self.evaluator.run(None, zeros))}
            return known[key]

        @property
        def num_io_tensors(self):
            return len(self.names)

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name in self.inputs else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return self.dtypes[name]

        def get_tensor_shape(self, name):
            return tuple(-1 if isinstance(d, str) else d for d in {**self.inputs, **self.outputs}[name][1])

        def get_tensor_profile_shape(self, name, i):
            assert i == 0
            return [tuple(s) for s in self.profile[name]]

        def create_execution_context(self, strategy=ExecutionContextAllocationStrategy.STATIC):
            assert isinstance(strategy, ExecutionContextAllocationStrategy)
            self.contexts += 1
            return Context(self, strategy)

        if ver < (11, 0):
            @property
            def device_memory_size(self):
                return self.required_memory

            def create_execution_context_without_device_memory(self):
                return self.create_execution_context(ExecutionContextAllocationStrategy.USER_MANAGED)

        if ver >= (10, 1):
            @property
            def device_memory_size_v2(self):
                return self.required_memory

        if ver >= (10, 14):
            def get_engine_stat(self, stat=EngineStat.TOTAL_WEIGHTS_SIZE):
                assert isinstance(stat, EngineStat)
                return self.weights if stat == EngineStat.TOTAL_WEIGHTS_SIZE else 0

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            data = bytes(data)
            if not data.startswith(b"FAKEPLAN"):
                return None
            n = int.from_bytes(data[8:12], "little")
            return Engine(json.loads(data[12:12 + n]), onnx.load_model_from_string(data[12 + n:]))

    ns = SimpleNamespace(
        __version__=version, DataType=DataType, TensorIOMode=TensorIOMode, MemoryPoolType=MemoryPoolType,
        ExecutionContextAllocationStrategy=ExecutionContextAllocationStrategy,
        Logger=Logger, Runtime=Runtime, nptype=lambda dt: to_np[dt], log=log, Engine=Engine,
    )
    if ver >= (10, 14):
        ns.EngineStat = EngineStat
    return ns


def plan_header(plan: Path) -> dict:
    data = Path(plan).read_bytes()
    n = int.from_bytes(data[8:12], "little")
    return json.loads(data[12:12 + n])


def set_plan_header(plan: Path, **changes) -> Path:
    """Rewrite a fake plan's header (e.g. device_memory=...) in place."""
    data = Path(plan).read_bytes()
    n = int.from_bytes(data[8:12], "little")
    header = {**json.loads(data[12:12 + n]), **changes}
    blob = json.dumps(header).encode()
    Path(plan).write_bytes(b"FAKEPLAN" + len(blob).to_bytes(4, "little") + blob + data[12 + n:])
    return Path(plan)


def fake_polygraphy(trt, log: list):
    """polygraphy.backend.trt look-alikes; every call is bound to the real Polygraphy signature first
    (a renamed or unknown keyword fails), and recorded in `log` as (name, kwargs).

    Upstream: NVIDIA/TensorRT tools/Polygraphy/polygraphy/backend/trt/ (loader.py: network_from_onnx_path,
    engine_from_network, save_engine; config.py: CreateConfig; profile.py: Profile) - the real module is imported
    for its signatures and its Profile class."""
    from polygraphy.backend import trt as real

    def checked(name, fake):
        def call(*args, **kwargs):
            obj = real
            for part in name.split("."):
                obj = getattr(obj, part)
            allowed = _params(obj)
            unknown = sorted(set(kwargs) - allowed)
            assert not unknown, f"polygraphy {name} takes no {unknown}"
            log.append((name, kwargs))
            return fake(*args, **kwargs)
        return call

    def network_from_onnx_path(path, strongly_typed=None):
        return SimpleNamespace(path=path, strongly_typed=strongly_typed, model=onnx.load(path))

    def engine_from_network(network, config=None, save_timing_cache=None):
        assert network.strongly_typed is True, "networks are always strongly typed"
        (profile,) = config.profiles
        assert isinstance(profile, real.Profile)
        assert set(config.memory_pool_limits) == {trt.MemoryPoolType.WORKSPACE}
        graph_inputs = [v.name for v in network.model.graph.input]
        assert list(profile.keys()) == graph_inputs, "one shape range per network input"
        shapes = {n: [list(profile[n].min), list(profile[n].opt), list(profile[n].max)] for n in graph_inputs}
        old = Path(config.load_timing_cache).read_bytes() if config.load_timing_cache else b""
        if save_timing_cache:
            Path(save_timing_cache).write_bytes(old + b"+")  # Polygraphy writes it in place
        model = network.model
        weights = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
        header = json.dumps({"profile": shapes, "device_memory": 4096 * len(model.graph.node), "weights": weights}).encode()
        return SimpleNamespace(plan=b"FAKEPLAN" + len(header).to_bytes(4, "little") + header + network.model.SerializeToString(),
                               timing_cache_loaded=old)

    def save_engine(engine, path):
        Path(path).write_bytes(engine.plan)
        return engine

    return SimpleNamespace(
        Profile=real.Profile,
        CreateConfig=checked("CreateConfig", lambda **kw: SimpleNamespace(**{"load_timing_cache": None, **kw})),
        network_from_onnx_path=checked("network_from_onnx_path", network_from_onnx_path),
        engine_from_network=checked("engine_from_network", engine_from_network),
        save_engine=checked("save_engine", save_engine),
    )


def install_fake_gpu(monkeypatch, log: list | None = None):
    """Put this module's TensorRT, Polygraphy (logging build calls into `log`) and CUDA runtime where monkey-trt's
    TensorRT layer asks for them (a compute capability 9.0 GPU); returns (the fake tensorrt module, the fake cudart)."""
    from monkey_trt.engine.trt import build as trt_build
    from monkey_trt.engine.trt import cuda as trt_cuda
    from monkey_trt.engine.trt import lib as trt_lib

    cudart = FakeCudart()
    trt = fake_tensorrt(cudart)
    log = [] if log is None else log
    monkeypatch.setattr(trt_lib, "require_tensorrt", lambda: trt)
    monkeypatch.setattr(trt_cuda, "require_cudart", lambda: cudart)
    monkeypatch.setattr(trt_build, "require_polygraphy", lambda: fake_polygraphy(trt, log))
    monkeypatch.setattr(trt_lib, "_LOGGERS", {})
    return trt, cudart
