"""In-process fakes of tensorrt, polygraphy + cuda-python, so the TensorRT backend's whole build/run
control flow runs everywhere (tests/test_engine_trt.py).

The fakes follow the bindings' conventions as engine/trt/api.py lists them: (err, value) tuples,
stream objects whose native handle TensorRT's enqueue takes, name-based tensor I/O, work queued
on a stream and done only when that stream is synchronised, graphs that bake in the device
addresses seen at capture time. The fake engine runs the plan's ONNX graph with onnx's reference
evaluator, reading and writing device memory in the dtypes the graph declares (HALF = float16);
the tests compare against ONNX Runtime on the same graph, so neither side reuses the other's formula.
"""

from __future__ import annotations

import ctypes
import enum
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
from onnx import TensorProto

from tests.test_trt_api import _params  # parameter names a Polygraphy callable accepts


class Err(enum.Enum):
    cudaSuccess = 0
    cudaErrorNoDevice = 100
    cudaErrorStreamCaptureInvalidated = 901


OK = Err.cudaSuccess


class FakeStream:
    """Like cuda-python's `cudaStream_t`: an object holding the native handle (`int()` gives it)."""

    def __init__(self, handle: int) -> None:
        self.handle = handle

    def __int__(self) -> int:
        return self.handle


class FakeCudart:
    cudaError_t = Err

    class cudaMemcpyKind(enum.Enum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStreamCaptureMode(enum.Enum):
        cudaStreamCaptureModeGlobal = 0

    def __init__(self, devices: int = 1) -> None:
        self.devices, self.dev, self.host = devices, {}, {}
        self.queues: dict[int, list] = {}  # native stream handle -> work not yet done
        self.capturing: tuple[int, list] | None = None  # (stream handle, captured ops)
        self.captures = self.launches = self.graphs_alive = self.syncs = 0
        self.copies: list[tuple[str, int, int]] = []  # (kind name, device pointer, bytes) of every copy queued
        self.instantiate_error: Err | None = None  # make cudaGraphInstantiate fail with this error

    def cudaGetDeviceCount(self):
        return (OK, self.devices) if self.devices else (Err.cudaErrorNoDevice, 0)

    def cudaGetDeviceProperties(self, i):
        return OK, SimpleNamespace(name=b"Fake GPU 80GB\0\0\0", major=9, minor=0, totalGlobalMem=80 << 30)

    def cudaSetDevice(self, i):
        return (OK,)

    def _alloc(self, table, n):
        buf = np.full(n, 0xAB, np.uint8)  # garbage, like fresh device memory
        table[buf.ctypes.data] = buf
        return OK, buf.ctypes.data

    def cudaMalloc(self, n):
        return self._alloc(self.dev, n)

    def cudaMallocHost(self, n):
        return self._alloc(self.host, n)

    def cudaFree(self, p):
        del self.dev[p]
        return (OK,)

    def cudaFreeHost(self, p):
        del self.host[p]
        return (OK,)

    def cudaStreamCreate(self):
        stream = FakeStream(0x5000 + 16 * len(self.queues) + 1)
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
        queue = self.queues[self._handle(s)]
        self.syncs += 1
        while queue:
            queue.pop(0)()
        return (OK,)

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        assert isinstance(kind, self.cudaMemcpyKind)
        assert self.capturing is None, "copies are not part of the captured graph"
        h2d = kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice
        dev_ptr, host_ptr = (int(dst), int(src)) if h2d else (int(src), int(dst))
        assert dev_ptr in self.dev and host_ptr not in self.dev  # pinned host <-> device
        self.copies.append((kind.name, dev_ptr, int(n)))
        self.enqueue(stream, lambda: ctypes.memmove(int(dst), int(src), n))  # done at the stream's next sync
        return (OK,)

    def h2d_counts(self, eng) -> dict[str, int]:
        """H2D copies per tensor name since the last `copies.clear()` (by the engine's current buffers)."""
        names = {ptr: name for name, (ptr, _cap) in eng._dev.items()}
        counts: dict[str, int] = {}
        for kind, ptr, _n in self.copies:
            if kind == "cudaMemcpyHostToDevice":
                counts[names.get(ptr, "?")] = counts.get(names.get(ptr, "?"), 0) + 1
        return counts

    def cudaStreamBeginCapture(self, stream, mode):
        assert isinstance(mode, self.cudaStreamCaptureMode)
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


def fake_tensorrt(cudart: FakeCudart, version: str = "11.4.0.106"):
    """A TensorRT 11 look-alike runtime: a plan is b"FAKEPLAN" + JSON header (profile) + the ONNX graph it runs."""
    from onnx.reference import ReferenceEvaluator

    class DataType(enum.Enum):  # TensorRT's members; HALF is float16
        FLOAT, HALF, INT8, INT32, BOOL, UINT8, FP8, BF16, INT64, INT4 = range(10)

    to_np = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT32: np.int32, DataType.INT64: np.int64}
    from_onnx = {TensorProto.FLOAT: DataType.FLOAT, TensorProto.FLOAT16: DataType.HALF, TensorProto.INT64: DataType.INT64}

    class TensorIOMode(enum.Enum):
        NONE, INPUT, OUTPUT = range(3)

    class MemoryPoolType(enum.Enum):
        WORKSPACE = 0

    class Logger:
        ERROR, WARNING = 1, 2

        def __init__(self, sev):
            self.sev = sev

    class Context:
        def __init__(self, engine):
            self.engine, self.in_shapes, self.addr = engine, {}, {}

        def set_input_shape(self, name, shape):
            mn, _, mx = self.engine.get_tensor_profile_shape(name, 0)
            if not all(a <= d <= b for d, a, b in zip(shape, mn, mx)):
                return False
            self.in_shapes[name] = tuple(shape)
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
            return tuple(sizes.get(d, -1) if isinstance(d, str) else d for d in self.engine.outputs[name][1])

        def set_tensor_address(self, name, ptr):
            self.addr[name] = int(ptr)
            return True

        def execute_async_v3(self, stream_handle):
            assert type(stream_handle) is int, f"execute_async_v3 takes the native stream handle (int), got {stream_handle!r}"
            eng, addr = self.engine, dict(self.addr)  # addresses baked in, like a CUDA graph
            shapes = {n: self.get_tensor_shape(n) for n in (*eng.inputs, *eng.outputs)}

            def device(name):
                dt = np.dtype(to_np[eng.dtypes[name]])
                n = int(np.prod(shapes[name])) * dt.itemsize
                return np.ctypeslib.as_array((ctypes.c_uint8 * n).from_address(addr[name])).view(dt).reshape(shapes[name])

            def run():
                outs = eng.evaluator.run(None, {n: device(n).copy() for n in eng.inputs})
                for name, value in zip(eng.outputs, outs):
                    device(name)[...] = value

            cudart.enqueue(stream_handle, run)
            return True

    class Engine:
        infer_shapes_error = False

        def __init__(self, profile, model):
            self.profile, self.evaluator = profile, ReferenceEvaluator(model)

            def info(v):
                t = v.type.tensor_type
                return from_onnx[t.elem_type], tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim)

            self.inputs = {v.name: info(v) for v in model.graph.input}
            self.outputs = {v.name: info(v) for v in model.graph.output}
            self.dtypes = {n: i[0] for n, i in {**self.inputs, **self.outputs}.items()}
            self.names = [*self.inputs, *self.outputs]

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

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            data = bytes(data)
            if not data.startswith(b"FAKEPLAN"):
                return None
            n = int.from_bytes(data[8:12], "little")
            return Engine(json.loads(data[12:12 + n]), onnx.load_model_from_string(data[12 + n:]))

    return SimpleNamespace(
        __version__=version, DataType=DataType, TensorIOMode=TensorIOMode, MemoryPoolType=MemoryPoolType,
        Logger=Logger, Runtime=Runtime, nptype=lambda dt: to_np[dt],
    )


def fake_polygraphy(trt, log: list):
    """polygraphy.backend.trt look-alikes; every call is bound to the real Polygraphy signature first
    (a renamed or unknown keyword fails), and recorded in `log` as (name, kwargs)."""
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
        header = json.dumps(shapes).encode()
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
