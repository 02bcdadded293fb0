"""cuda-python for the TensorRT backend: its lazy import, native handles, the device query, CUDA error
unpacking and pinned host buffers (cuda-python 12.x and 13.x runtime bindings)."""

from __future__ import annotations

import ctypes
import weakref
from dataclasses import dataclass

import numpy as np

from monkey_trt.core.errors import BackendUnavailable, MonkeyError, first_line

CUDA_PYTHON_MISSING = "cuda-python is not installed: pip install 'monkey-trt[gpu]' on a machine with an NVIDIA GPU"


def require_cudart():
    """cuda-python's runtime bindings (`cuda.bindings.runtime` >= 12.6, `cuda.cudart` before)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise BackendUnavailable(CUDA_PYTHON_MISSING) from None
        except Exception as e:
            raise BackendUnavailable(f"cuda-python does not load ({type(e).__name__}: {first_line(e)})") from None
    except Exception as e:
        raise BackendUnavailable(f"cuda-python does not load ({type(e).__name__}: {first_line(e)})") from None
    return cudart


def native_handle(obj) -> int:
    """The raw CUDA handle (an address) held by a cuda-python object such as a `cudaStream_t`.

    cuda-python 13 deprecates `int(obj)` for this; `cuda.bindings.utils.get_cuda_native_handle`
    (cuda-python >= 12.9) is the documented accessor. Older 12.x releases only have `int(obj)`.
    """
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(obj)
    try:
        return int(get_cuda_native_handle(obj))
    except TypeError:  # not a cuda-python handle type (plain ints, test doubles)
        return int(obj)


@dataclass(frozen=True)
class CudaDevice:
    index: int
    name: str
    compute_capability: str  # "9.0"
    total_memory: int  # bytes


def require_cuda_device(index: int = 0) -> CudaDevice:
    """The visible NVIDIA GPU `index`, or BackendUnavailable when there is no GPU/driver."""
    cudart = require_cudart()
    try:
        err, count = cudart.cudaGetDeviceCount()
    except Exception as e:  # driver library missing entirely
        raise BackendUnavailable(f"no NVIDIA GPU is visible (CUDA: {first_line(e)})") from None
    if is_error(cudart, err) or count == 0:
        why = err_name(cudart, err) if is_error(cudart, err) else "0 devices"
        raise BackendUnavailable(f"no NVIDIA GPU is visible ({why}): TensorRT needs an NVIDIA GPU and its driver")
    if not 0 <= index < count:
        raise BackendUnavailable(f"CUDA device {index} does not exist ({count} visible)")
    prop = cu(cudart, cudart.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    name = prop.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\0", 1)[0].decode("utf-8", "replace")
    return CudaDevice(index, str(name).strip(), f"{prop.major}.{prop.minor}", int(prop.totalGlobalMem))


def is_error(cudart, err) -> bool:
    return err != cudart.cudaError_t.cudaSuccess


def err_name(cudart, err) -> str:
    return getattr(err, "name", None) or str(err)


def cu(cudart, ret, what: str):
    """Unpack a cuda-python (err, *values) tuple; MonkeyError on a CUDA error."""
    err = ret[0]
    if is_error(cudart, err):
        raise MonkeyError(f"CUDA error in {what}: {err_name(cudart, err)}")
    if len(ret) == 1:
        return None
    return ret[1] if len(ret) == 2 else ret[1:]


class Pinned:
    """Page-locked host memory with a numpy byte view (falls back to plain numpy memory)."""

    def __init__(self, cudart, nbytes: int) -> None:
        self.cudart, self.nbytes, self.ptr = cudart, max(int(nbytes), 1), None
        err, ptr = cudart.cudaMallocHost(self.nbytes)
        if is_error(cudart, err):
            self.raw = np.empty(self.nbytes, np.uint8)  # pageable: copies still correct, just synchronous
        else:
            self.ptr = int(ptr)
            self.raw = np.ctypeslib.as_array((ctypes.c_uint8 * self.nbytes).from_address(self.ptr))

    @property
    def address(self) -> int:
        return int(self.raw.ctypes.data)

    def view(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        return self.raw[:n].view(dtype).reshape(shape)

    def free(self) -> None:
        if self.ptr is not None:
            self.raw = None
            self.cudart.cudaFreeHost(self.ptr)
            self.ptr = None


def _cuda_free(cudart, ptr: int) -> None:
    try:
        cudart.cudaFree(ptr)
    except Exception:  # pragma: no cover - interpreter shutdown, driver gone: nothing left to free
        pass


class DeviceBuffer:
    """`nbytes` of device memory (cudaMalloc: 256-byte aligned), freed by `free()` or when the object is collected."""

    def __init__(self, cudart, nbytes: int, what: str) -> None:
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(cu(cudart, cudart.cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes}) for {what}"))
        self._free = weakref.finalize(self, _cuda_free, cudart, self.ptr)

    def free(self) -> None:
        self._free()

    @property
    def alive(self) -> bool:
        return self._free.alive
