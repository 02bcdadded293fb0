"""Run TensorRT plans: `TrtEngine` (one plan on one GPU, name-based tensor I/O, `execute_async_v3`,
optional CUDA graphs) and the runtime's entry `open_trt_runners` (the engine directory's verified plans
for the installed TensorRT and this GPU)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from monkey_trt.core.errors import EngineDirError, MonkeyError, first_line
from monkey_trt.engine.ort import validate_feeds
from monkey_trt.engine.precision import check_gpu_precision
from monkey_trt.engine.runner import Runner, TensorSpec
from monkey_trt.engine.trt import cuda, lib
from monkey_trt.engine.trt.cuda import Pinned, cu, err_name, is_error, native_handle
from monkey_trt.enginedir import plans
from monkey_trt.enginedir.networks import NETWORKS
from monkey_trt.enginedir.plans import REBUILD_HINT


def _np_dtype(trt, dt) -> np.dtype:
    table = {
        trt.DataType.FLOAT: np.float32,
        trt.DataType.HALF: np.float16,
        trt.DataType.INT32: np.int32,
        trt.DataType.INT8: np.int8,
        trt.DataType.BOOL: np.bool_,
    }
    for attr, np_t in (("INT64", np.int64), ("UINT8", np.uint8)):
        if hasattr(trt.DataType, attr):
            table[getattr(trt.DataType, attr)] = np_t
    if dt in table:
        return np.dtype(table[dt])
    try:
        return np.dtype(trt.nptype(dt))
    except Exception:
        raise MonkeyError(f"TensorRT dtype {dt} has no numpy equivalent") from None


class TrtEngine(Runner):
    """One TensorRT plan on one GPU, in the style of TensorRT's demo/Diffusion `Engine`.

        eng = TrtEngine(plan_path, use_cuda_graph=True)
        eng.load(); eng.activate()          # or: with TrtEngine(...) as eng:
        out = eng.infer(feeds)              # allocates on the first call / when shapes change

    Device buffers (one per I/O tensor) and pinned host buffers are allocated for the current
    input shapes and reused; they grow when a larger shape arrives. Inputs are copied H2D on
    one stream, `execute_async_v3` runs, outputs are copied D2H, the stream is synchronised
    and caller-owned copies are returned. With `use_cuda_graph`, the enqueue is captured in a
    CUDA graph after a warm-up run and replayed while shapes stay the same (re-captured when
    they change; plain execution if the plan cannot be captured).

    `set_static_inputs` (e.g. one LCM pass's text embeddings, IP tokens, timestep_cond, ip_mask)
    puts those inputs in their device buffers once; each `infer` then copies only the remaining
    inputs. The copies are outside the captured graph, so a graph stays valid across new static
    values; it is re-captured only when a shape changes or a buffer is re-allocated.
    """

    backend = "tensorrt"

    def __init__(self, plan_path: str | os.PathLike, name: str | None = None, *, use_cuda_graph: bool = False, device: int = 0):
        self.plan_path = Path(plan_path)
        self.name = name or self.plan_path.stem
        self.use_cuda_graph = bool(use_cuda_graph)
        self.device = int(device)
        self.engine = None
        self.context = None
        self._runtime = None
        self._cudart = None
        self._stream = None
        self._stream_handle = 0
        self._inputs: list[TensorSpec] = []
        self._outputs: list[TensorSpec] = []
        self._dtypes: dict[str, np.dtype] = {}
        self._dev: dict[str, tuple[int, int]] = {}  # name -> (device ptr, capacity bytes)
        self._host: dict[str, Pinned] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}  # current shapes of every I/O tensor
        self._input_shapes: dict[str, tuple[int, ...]] | None = None
        self._graph = None
        self._graph_exec = None
        self._graph_failed = False
        self._static: dict[str, np.ndarray] = {}
        self._static_on_device: set[str] = set()  # static inputs whose device buffer holds their current value

    # -- lifecycle -----------------------------------------------------------------------
    def load(self) -> None:
        """Deserialise the plan (needs TensorRT and a GPU)."""
        if self.engine is not None:
            return
        trt = lib.require_tensorrt()
        dev = cuda.require_cuda_device(self.device)
        cudart = cuda.require_cudart()
        cu(cudart, cudart.cudaSetDevice(self.device), "cudaSetDevice")
        if not self.plan_path.is_file():
            raise EngineDirError(f"{self.name}: TensorRT plan {self.plan_path} is missing: run `monkey-trt build`")
        data = self.plan_path.read_bytes()
        runtime = trt.Runtime(lib.trt_logger(trt, trt.Logger.ERROR))
        try:
            engine = runtime.deserialize_cuda_engine(data)
        except Exception:
            engine = None
        if engine is None:
            raise EngineDirError(
                f"{self.name}: {self.plan_path} does not load with TensorRT {trt.__version__} on {dev.name} "
                f"(built by another TensorRT version, for another GPU, or damaged): {REBUILD_HINT}"
            )
        self._runtime, self.engine, self._cudart = runtime, engine, cudart
        self._inputs, self._outputs, self._dtypes = [], [], {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dt = _np_dtype(trt, engine.get_tensor_dtype(name))
            self._dtypes[name] = dt
            spec = TensorSpec(name, dt.name, tuple(int(d) for d in engine.get_tensor_shape(name)))
            (self._inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else self._outputs).append(spec)

    def activate(self) -> None:
        """Load (if needed), create the execution context and the stream."""
        if self.context is not None:
            return
        self.load()
        cudart = self._cudart
        context = self.engine.create_execution_context()
        if context is None:
            raise MonkeyError(f"{self.name}: TensorRT could not create an execution context (out of GPU memory?)")
        self.context = context
        self._stream = cu(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._stream_handle = native_handle(self._stream)  # the cudaStream_t value TensorRT's enqueue takes

    def deactivate(self) -> None:
        """Free graphs, buffers, stream, context and engine (best effort; never raises)."""
        cudart = self._cudart
        if cudart is not None:
            if self._stream is not None:
                cudart.cudaStreamSynchronize(self._stream)
            self._drop_graph()
            for ptr, _cap in self._dev.values():
                cudart.cudaFree(ptr)
            for buf in self._host.values():
                buf.free()
            if self._stream is not None:
                cudart.cudaStreamDestroy(self._stream)
        self._dev.clear()
        self._host.clear()
        self._shapes.clear()
        self._static_on_device.clear()  # the host copies in self._static stay: uploaded again after activate()
        self._input_shapes = None
        self._stream = None
        self._stream_handle = 0
        self.context = None
        self.engine = None
        self._runtime = None
        self._graph_failed = False

    # -- specs ---------------------------------------------------------------------------
    @property
    def input_specs(self) -> list[TensorSpec]:
        self.load()
        return list(self._inputs)

    @property
    def output_specs(self) -> list[TensorSpec]:
        self.load()
        return list(self._outputs)

    def profile_range(self, name: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) shape of input `name` in optimisation profile 0."""
        self.load()
        mn, opt, mx = self.engine.get_tensor_profile_shape(name, 0)
        return tuple(int(d) for d in mn), tuple(int(d) for d in opt), tuple(int(d) for d in mx)

    # -- buffers -------------------------------------------------------------------------
    def _require_context(self):
        if self.context is None:
            raise MonkeyError(f"{self.name}: the engine is not active (use it as a context manager or call activate())")
        return self.context

    def allocate(self, shapes: Mapping[str, Iterable[int]]) -> dict[str, tuple[int, ...]]:
        """Set the input shapes, size device/host buffers for them (reused, grown when needed).

        Returns the shape of every I/O tensor. A shape outside the plan's profile raises MonkeyError.
        """
        ctx = self._require_context()
        cudart = self._cudart
        self._input_shapes = None  # until this allocation has fully succeeded
        missing = [s.name for s in self._inputs if s.name not in shapes]
        if missing:
            raise MonkeyError(f"{self.name}: allocate() needs shapes for input(s) {', '.join(missing)}")
        want: dict[str, tuple[int, ...]] = {}
        for spec in self._inputs:
            shape = want[spec.name] = tuple(int(d) for d in shapes[spec.name])
            if len(shape) != len(spec.shape):
                raise MonkeyError(f"{self.name}: input {spec.name!r} needs rank {len(spec.shape)}, got shape {shape}")
            mn, _opt, mx = self.profile_range(spec.name) if any(d < 0 for d in spec.shape) else (shape, shape, shape)
            if len(mn) == len(shape) == len(mx) and any(not lo <= d <= hi for d, lo, hi in zip(shape, mn, mx)):
                raise MonkeyError(
                    f"{self.name}: input {spec.name!r} shape {list(shape)} is outside the engine profile "
                    f"{list(mn)}..{list(mx)} (rebuild with a wider profile: monkey-trt build --min/--max)"
                )
            if not ctx.set_input_shape(spec.name, shape):
                raise MonkeyError(f"{self.name}: TensorRT rejected shape {list(shape)} for input {spec.name!r}")
        try:  # the binding raises RuntimeError when shape inference fails (e.g. inputs that disagree)
            unresolved = ctx.infer_shapes()
        except RuntimeError as e:
            given = ", ".join(f"{n} {list(s)}" for n, s in want.items())
            raise MonkeyError(f"{self.name}: TensorRT cannot infer the output shapes for inputs {given} ({first_line(e)})") from None
        if unresolved:
            raise MonkeyError(f"{self.name}: TensorRT cannot infer the shapes of {', '.join(map(str, unresolved))}")

        cu(cudart, cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        self._drop_graph()  # addresses/shapes change: any captured graph is stale
        new_shapes: dict[str, tuple[int, ...]] = {}
        for spec in self._inputs + self._outputs:
            name = spec.name
            shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise MonkeyError(f"{self.name}: output {name!r} has a data-dependent shape {list(shape)} (not supported)")
            nbytes = max(int(np.prod(shape, dtype=np.int64)) * self._dtypes[name].itemsize, 1)
            ptr, cap = self._dev.get(name, (None, 0))
            if ptr is None or cap < nbytes:
                self._static_on_device.discard(name)  # a new buffer holds no uploaded value
                if ptr is not None:
                    cudart.cudaFree(ptr)
                    del self._dev[name]
                ptr = int(cu(cudart, cudart.cudaMalloc(nbytes), f"cudaMalloc({nbytes}) for {name}"))
                self._dev[name] = (ptr, nbytes)
            host = self._host.get(name)
            if host is None or host.nbytes < nbytes:
                if host is not None:
                    host.free()
                self._host[name] = Pinned(cudart, nbytes)
            if not ctx.set_tensor_address(name, ptr):
                raise MonkeyError(f"{self.name}: TensorRT rejected the address of {name!r}")
            new_shapes[name] = shape
        self._shapes = new_shapes
        self._input_shapes = {s.name: new_shapes[s.name] for s in self._inputs}
        return dict(new_shapes)

    # -- execution -----------------------------------------------------------------------
    def _execute(self) -> None:
        if not self.context.execute_async_v3(self._stream_handle):
            raise MonkeyError(f"{self.name}: TensorRT execute_async_v3 failed (see the TensorRT log above)")

    def _drop_graph(self) -> None:
        cudart = self._cudart
        if self._graph_exec is not None:
            cudart.cudaGraphExecDestroy(self._graph_exec)
            self._graph_exec = None
        if self._graph is not None:
            cudart.cudaGraphDestroy(self._graph)
            self._graph = None

    def _capture(self) -> None:
        """Warm-up enqueue (computes this call's outputs), then capture the enqueue in a CUDA graph."""
        cudart = self._cudart
        self._execute()  # TensorRT wants one enqueue after shape changes before a capture
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
        cu(cudart, cudart.cudaStreamBeginCapture(self._stream, mode), "cudaStreamBeginCapture")
        ok = False
        try:
            ok = bool(self.context.execute_async_v3(self._stream_handle))
        finally:
            err, graph = cudart.cudaStreamEndCapture(self._stream)
        why = None
        if not ok or is_error(cudart, err) or graph is None:
            if graph is not None and not is_error(cudart, err):
                cudart.cudaGraphDestroy(graph)
            why = "this plan cannot be captured in a CUDA graph"
        else:
            err, graph_exec = cudart.cudaGraphInstantiate(graph, 0)  # cuda-python 12+: (graph, flags) -> (err, exec)
            if is_error(cudart, err):
                cudart.cudaGraphDestroy(graph)
                why = f"its CUDA graph does not instantiate ({err_name(cudart, err)})"
            else:
                self._graph, self._graph_exec = graph, graph_exec
        if why is not None:
            cudart.cudaGetLastError()  # clear the error state a failed capture/instantiation leaves, if any
            self._graph_failed = True
            warnings.warn(f"{self.name}: {why}; running without", stacklevel=3)

    def _upload(self, name: str, arr: np.ndarray) -> None:
        """Stage `arr` in the pinned buffer of input `name` and queue its H2D copy on the stream."""
        cudart = self._cudart
        host = self._host[name].view(self._dtypes[name], self._shapes[name])
        np.copyto(host, arr)
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        cu(cudart, cudart.cudaMemcpyAsync(self._dev[name][0], self._host[name].address, host.nbytes, h2d, self._stream), f"H2D {name}")

    def set_static_inputs(self, feeds: dict[str, np.ndarray]) -> None:
        """Inputs fixed over the coming infer() calls: copied to their device buffers once.

        Uploaded here when the engine is active and the shapes match the current buffers; otherwise
        (first use, a shape change, before activate()) at the next infer(), which knows every input's
        shape and (re)allocates/re-captures as needed. Calling it again replaces the set.
        """
        if not isinstance(feeds, Mapping):
            raise MonkeyError(f"{self.name}: static inputs must be a dict of name -> numpy array, got {type(feeds).__name__}")
        if self.engine is not None:  # specs known: refuse bad names/dtypes/ranks now, not at the next infer
            known = {s.name for s in self._inputs}
            unknown = sorted(set(feeds) - known)
            if unknown:
                raise MonkeyError(f"{self.name}: unknown input(s) {', '.join(map(repr, unknown))} (inputs: {', '.join(sorted(known))})")
            validate_feeds(self.name, [s for s in self._inputs if s.name in feeds], feeds)
        super().set_static_inputs(feeds)
        self._static_on_device = set()
        if self.context is None or self._input_shapes is None or not self._static:
            return
        if any(tuple(a.shape) != self._input_shapes.get(n) for n, a in self._static.items()):
            return  # a shape changes: allocate at the next infer(), with every input's shape known
        cu(self._cudart, self._cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")  # pinned staging is free
        for name, arr in self._static.items():
            self._upload(name, arr)
        cu(self._cudart, self._cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        self._static_on_device = set(self._static)

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; `feeds` may leave out the inputs given to `set_static_inputs` (a feed overrides one)."""
        self._require_context()
        cudart, stream = self._cudart, self._stream
        if not isinstance(feeds, Mapping):
            validate_feeds(self.name, self._inputs, feeds)  # raises its one-line error
        merged = self._with_static(feeds)
        validate_feeds(self.name, self._inputs, merged)
        shapes = {s.name: tuple(merged[s.name].shape) for s in self._inputs}
        if shapes != self._input_shapes:
            self.allocate(shapes)
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for spec in self._inputs:
            name = spec.name
            static = name in self._static and name not in feeds
            if static and name in self._static_on_device:
                continue  # uploaded once, still in its buffer
            self._upload(name, merged[name])
            if static:
                self._static_on_device.add(name)
            else:
                self._static_on_device.discard(name)  # a feed replaced the static value on the device
        if self.use_cuda_graph and not self._graph_failed:
            if self._graph_exec is None:
                self._capture()  # its warm-up run already produced this call's outputs
            else:
                cu(cudart, cudart.cudaGraphLaunch(self._graph_exec, stream), "cudaGraphLaunch")
        else:
            self._execute()
        views = {}
        for spec in self._outputs:
            name = spec.name
            host = self._host[name].view(self._dtypes[name], self._shapes[name])
            cu(cudart, cudart.cudaMemcpyAsync(self._host[name].address, self._dev[name][0], host.nbytes, d2h, stream), f"D2H {name}")
            views[name] = host
        cu(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return {name: v.copy() for name, v in views.items()}


# -- runtime entry -------------------------------------------------------------------------
def find_plan_dir(engine_dir: str | os.PathLike, manifest, precision: str = "fp32") -> Path:
    """The plans for this engine directory's `precision` graphs, the installed TensorRT and this GPU
    (enginedir.plans.find_plan_dir with the live TensorRT version and device)."""
    trt = lib.require_tensorrt()
    dev = cuda.require_cuda_device()
    check_gpu_precision(precision, dev.compute_capability, dev.name)
    return plans.find_plan_dir(engine_dir, manifest, precision, trt.__version__, dev.name, dev.compute_capability)


def open_trt_runners(engine_dir: str | os.PathLike, manifest, cuda_graph: bool = False, precision: str = "fp32",
                     verify: str = "sha256") -> dict[str, "TrtEngine"]:
    """One (not yet activated) TrtEngine per network, plans verified; CUDA graphs only for the UNet's fixed-shape steps."""
    folder = find_plan_dir(engine_dir, manifest, precision)
    plans.verify_plans(Path(engine_dir), folder, verify)
    return {n: TrtEngine(folder / f"{n}.plan", name=n, use_cuda_graph=cuda_graph and n == "unet") for n in NETWORKS}
