"""TensorRT activation memory: one device buffer shared by every engine of a pipeline (`ActivationMemory`), and
the version-dependent calls that size and point an execution context at it."""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

from monkey_trt.engine.trt.cuda import DeviceBuffer

if TYPE_CHECKING:
    from monkey_trt.engine.trt.engine import TrtEngine


def context_memory_size(engine) -> int:
    """Device memory one execution context of `engine` needs (its activations): `device_memory_size_v2`
    (TensorRT >= 10.1; it includes weight-streaming scratch), else `device_memory_size` (10.0)."""
    if hasattr(engine, "device_memory_size_v2"):
        return int(engine.device_memory_size_v2)
    return int(engine.device_memory_size)


def set_context_memory(context, ptr: int, nbytes: int) -> None:
    """Give a USER_MANAGED context its device memory: `set_device_memory(ptr, size)` (TensorRT >= 10.1),
    else the write-only `device_memory` property (10.0)."""
    if hasattr(context, "set_device_memory"):
        context.set_device_memory(ptr, nbytes)
    else:
        context.device_memory = ptr


class ActivationMemory:
    """One device buffer for the activations of every TensorRT engine that shares it (a pipeline's networks).

    TensorRT's user-managed execution-context memory, as NVIDIA's demo/Diffusion does (NVIDIA/TensorRT
    demo/Diffusion/demo_diffusion/pipeline/stable_diffusion_pipeline.py: calculateMaxDeviceMemory,
    activateEngines - one buffer for every engine, CUDA graphs replayed on it): each engine's
    contexts are created with `ExecutionContextAllocationStrategy.USER_MANAGED` and all point at this
    buffer, sized for the largest engine (`device_memory_size_v2`), so peak GPU memory for activations
    is the largest network's, not the sum. Safe because the engines never run at the same time: each
    `infer` holds `lock` from its first copy to its stream synchronisation (TensorRT: the memory is in
    use from the enqueue until the work completes; another context must not use it meanwhile).

    Allocated at the first context, freed when the last engine detaches. An engine attaching later
    with a larger need grows it: every attached engine re-points its contexts and drops its CUDA graphs
    (they baked in the old address).
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._needs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # attached engine -> bytes it needs
        self._buffer: DeviceBuffer | None = None
        self._cudart = None

    @property
    def required(self) -> int:
        """The largest need among the attached engines (what the buffer is sized to; it never shrinks while in use)."""
        return max(self._needs.values(), default=0)

    @property
    def nbytes(self) -> int:
        """Bytes allocated now (0 before the first context and after the last engine detached)."""
        return self._buffer.nbytes if self._buffer is not None else 0

    def attach(self, engine: "TrtEngine", nbytes: int, cudart) -> None:
        with self.lock:
            self._cudart = cudart
            self._needs[engine] = int(nbytes)
            if self._buffer is not None and self._buffer.nbytes < nbytes:  # grow: every context moves to the new buffer
                self._buffer.free()
                self._buffer = None
                ptr, size = self.acquire()
                for other in list(self._needs.keys()):
                    other._rebind_memory(ptr, size)

    def detach(self, engine: "TrtEngine") -> None:
        with self.lock:
            self._needs.pop(engine, None)
            if not self._needs and self._buffer is not None:
                self._buffer.free()
                self._buffer = None

    def acquire(self) -> tuple[int, int]:
        """(device pointer, bytes) for a new context; allocates on first use. (0, 0) when no engine needs any."""
        with self.lock:
            need = self.required
            if need == 0:
                return 0, 0
            if self._buffer is None:
                self._buffer = DeviceBuffer(self._cudart, need, "TensorRT activations")
            return self._buffer.ptr, self._buffer.nbytes
