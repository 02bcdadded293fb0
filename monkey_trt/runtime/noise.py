"""Seed -> noise without torch: `torch.randn(..., generator=torch.Generator("cpu").manual_seed(seed))`.

torch's CPU generator is a standard MT19937 seeded with `seed & 0xffffffff` (init_genrand) — the same
generator as numpy's legacy `RandomState(seed)`, whose raw 32-bit words we take. A float uniform is
`(word & 0xffffff) * 2**-24`. `randn` of numel >= 16 (contiguous float32) fills the tensor with uniforms,
then runs Box–Muller on blocks of 16 (`u[0:8]` radius, `u[8:16]` angle); if numel % 16 != 0 the last 16
values are redrawn and recomputed. torch's x86 AVX2/AVX512 builds use `avx_mathfun.h` (Cephes-style
log/sincos polynomials, compiled with FMA contraction); its DEFAULT (no-AVX2) and ARM builds use libm
`logf`/`cosf`/`sinf`. numel < 16 takes a double-precision scalar path that caches the second sample.

Both kernels are reproduced: "avx2" bit-exactly in numpy, "scalar" through the C library's float
functions (ctypes; falls back to correctly rounded float64 maths, <= 1 ulp off, if libm is not found).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import io
import math
import os
import platform
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from monkey_trt.core.errors import MonkeyError

f32 = np.float32
_VARIANTS = ("avx2", "scalar")


# --------------------------------------------------------------------------------------- kernels


def _fma(a: np.ndarray, b, c) -> np.ndarray:
    """float32 fused multiply-add (a*b is exact in float64; one rounding to float64, then to float32)."""
    return (np.float64(a) * np.float64(b) + np.float64(c)).astype(np.float32)


_LOG_P = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
          -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)  # fmt: skip


def _log_avx(x: np.ndarray) -> np.ndarray:
    """`log256_ps` of avx_mathfun.h for x in (0, 1], with GCC's FMA contractions."""
    x = np.maximum(x, f32(np.finfo(np.float32).tiny))
    exp = (x.view(np.uint32) >> 23).astype(np.int32) - 0x7F
    x = ((x.view(np.int32) & np.int32(~0x7F800000)) | np.float32(0.5).view(np.int32)).view(np.float32)
    e = exp.astype(np.float32) + f32(1)
    small = x < f32(0.707106781186547524)
    x = (x - f32(1)) + np.where(small, x, f32(0))
    e = e - np.where(small, f32(1), f32(0))
    z = x * x
    y = np.full_like(x, f32(_LOG_P[0]))
    for p in _LOG_P[1:]:
        y = _fma(y, x, f32(p))
    y = y * x
    y = _fma(y, z, e * f32(-2.12194440e-4))
    y = _fma(z, f32(-0.5), y)
    return _fma(e, f32(0.693359375), x + y)


def _sincos_avx(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`sincos256_ps` of avx_mathfun.h for x >= 0, with GCC's FMA contractions."""
    j = ((x * f32(1.27323954473516)).astype(np.int32) + 1) & np.int32(~1)
    y = j.astype(np.float32)
    sin_sign = (j & 4) << 29
    cos_sign = (~(j - 2) & 4) << 29
    poly1 = (j & 2) == 0  # sin uses the sine polynomial, cos the cosine one
    for dp in (-0.78515625, -2.4187564849853515625e-4, -3.77489497744594108e-8):
        x = _fma(y, f32(dp), x)
    z = x * x
    yc = _fma(np.full_like(x, f32(2.443315711809948e-5)), z, f32(-1.388731625493765e-3))
    yc = _fma(yc, z, f32(4.166664568298827e-2))
    yc = _fma(yc * z, z, -(z * f32(0.5))) + f32(1)
    ys = _fma(np.full_like(x, f32(-1.9515295891e-4)), z, f32(8.3321608736e-3))
    ys = _fma(ys, z, f32(-1.6666654611e-1))
    ys = _fma(ys * z, x, x)
    s, c = np.where(poly1, ys, yc), np.where(poly1, yc, ys)
    return (s.view(np.int32) ^ sin_sign).view(np.float32), (c.view(np.int32) ^ cos_sign).view(np.float32)


@lru_cache(maxsize=None)
def _libm_funcs():
    """(logf, cosf, sinf) of the C library as ctypes functions, or None."""
    for name in ("libm.so.6", ctypes.util.find_library("m")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            out = []
            for fn in ("logf", "cosf", "sinf"):
                f = getattr(lib, fn)
                f.restype, f.argtypes = ctypes.c_float, [ctypes.c_float]
                out.append(f)
            return tuple(out)
        except (OSError, AttributeError):
            continue
    return None


def _map_f32(fn, x: np.ndarray) -> np.ndarray:
    return np.fromiter((fn(v) for v in x.ravel().tolist()), np.float32, x.size).reshape(x.shape)


def _box_muller16(u: np.ndarray, variant: str) -> np.ndarray:
    """u: [B, 16] float32 uniforms in [0, 1) -> [B, 16] standard normals, torch's `NormalFill16`."""
    u1, u2 = f32(1) - u[:, :8], u[:, 8:]  # [B, 8] each; 1 - u is exact
    if variant == "avx2":
        radius = np.sqrt(f32(-2) * _log_avx(u1))
        s, c = _sincos_avx(f32(2.0 * math.pi) * u2)
    else:
        theta = (np.float64(2.0 * math.pi) * np.float64(u2)).astype(np.float32)  # double maths, float store
        libm = _libm_funcs()
        if libm is not None:
            lg, c, s = _map_f32(libm[0], u1), _map_f32(libm[1], theta), _map_f32(libm[2], theta)
        else:  # correctly rounded stand-ins: <= 1 ulp from the C library
            lg = np.log(np.float64(u1)).astype(np.float32)
            c, s = np.cos(np.float64(theta)).astype(np.float32), np.sin(np.float64(theta)).astype(np.float32)
        radius = np.sqrt(f32(-2) * lg)
    return np.concatenate([radius * c, radius * s], axis=1)


def torch_cpu_variant() -> str:
    """The Box–Muller kernel torch's CPU build picks on this machine: "avx2" (x86-64 with AVX2+FMA,
    AVX512 included) or "scalar" (no AVX2, ATEN_CPU_CAPABILITY=default, ARM)."""
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() == "default":
        return "scalar"
    if platform.machine().lower() not in ("x86_64", "amd64", "x64"):
        return "scalar"
    try:
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        return "avx2"  # no /proc (macOS, Windows): assume a CPU from the last decade
    return "avx2" if {"avx2", "fma"} <= set(flags) else "scalar"


# --------------------------------------------------------------------------------------- generator


class TorchCPURandn:
    """`torch.Generator("cpu").manual_seed(seed)` followed by float32 `torch.randn` calls, in numpy."""

    def __init__(self, seed: int, variant: str | None = None) -> None:
        seed = int(seed)
        if not 0 <= seed < 2**64:
            raise MonkeyError(f"seed must be in 0..2**64-1, got {seed}")
        variant = variant or torch_cpu_variant()
        if variant not in _VARIANTS:
            raise MonkeyError(f"noise variant must be one of {list(_VARIANTS)}, got {variant!r}")
        self.seed, self.variant = seed, variant
        self._mt = np.random.RandomState(seed & 0xFFFFFFFF)  # same MT19937 + init_genrand as torch
        self._cached_normal: float | None = None  # torch's next_double_normal_sample

    def _words(self, n: int) -> np.ndarray:
        return self._mt.randint(0, 2**32, size=n, dtype=np.uint32)  # [n] raw MT19937 outputs

    def _uniform(self, n: int) -> np.ndarray:
        return (self._words(n) & 0xFFFFFF).astype(np.float32) * f32(2.0**-24)  # [n] in [0, 1)

    def _scalar_normal(self) -> float:
        """numel < 16: `at::normal_distribution<double>` (53-bit uniforms, log1p, sin cached for next call)."""
        if self._cached_normal is not None:
            out, self._cached_normal = self._cached_normal, None
            return out
        hi_lo = self._words(4).astype(np.uint64)
        u1, u2 = (float(((hi_lo[i] << np.uint64(32)) | hi_lo[i + 1]) & np.uint64(2**53 - 1)) * 2.0**-53 for i in (0, 2))
        r = math.sqrt(-2.0 * math.log1p(-u2))
        theta = 2.0 * math.pi * u1
        self._cached_normal = r * math.sin(theta)
        return r * math.cos(theta)

    def randn(self, shape) -> np.ndarray:
        """Next `torch.randn(shape, dtype=float32)` draw: float32 array of `shape`."""
        shape = tuple(int(s) for s in shape)
        n = math.prod(shape)
        if n < 16:
            return np.array([self._scalar_normal() for _ in range(n)], np.float64).astype(np.float32).reshape(shape)
        data = self._uniform(n)  # [n]
        full = n // 16
        data[: full * 16] = _box_muller16(data[: full * 16].reshape(full, 16), self.variant).reshape(-1)
        if n % 16:  # torch redraws and recomputes the last 16 values
            data[n - 16 :] = _box_muller16(self._uniform(16)[None], self.variant)[0]
        return data.reshape(shape)


# --------------------------------------------------------------------------------------- plans


@dataclass(frozen=True, eq=False)
class NoisePlan:
    """All the noise of one LCM pass: initial latents and the noise injected after each step but the last."""

    latents: np.ndarray  # [1, 4, h, w] float32
    step_noise: np.ndarray  # [K, 1, 4, h, w] float32, entry i is used after step i

    def __post_init__(self) -> None:
        lat, sn = np.asarray(self.latents, np.float32), np.asarray(self.step_noise, np.float32)
        _check_latent_shape(lat.shape)
        if sn.ndim != 5 or sn.shape[1:] != lat.shape:
            raise MonkeyError(f"step_noise must be [K, {', '.join(map(str, lat.shape))}], got {list(sn.shape)}")
        object.__setattr__(self, "latents", lat)
        object.__setattr__(self, "step_noise", sn)

    @classmethod
    def from_seed(cls, seed: int, latent_shape, num_steps: int, variant: str | None = None) -> "NoisePlan":
        """diffusers' LCM pipeline order on a freshly seeded CPU generator: latents, then one draw per step."""
        shape = _check_latent_shape(latent_shape)
        if num_steps < 1:
            raise MonkeyError(f"num_steps must be >= 1, got {num_steps}")
        rng = TorchCPURandn(seed, variant)
        latents = rng.randn(shape)
        steps = [rng.randn(shape) for _ in range(num_steps - 1)]
        return cls(latents, np.stack(steps) if steps else np.zeros((0, *shape), np.float32))

    def for_steps(self, num_steps: int) -> "NoisePlan":
        """The plan for a pass of `num_steps` steps (uses the first num_steps-1 step noises)."""
        if self.step_noise.shape[0] < num_steps - 1:
            raise MonkeyError(f"noise plan has {self.step_noise.shape[0]} step noises, a {num_steps}-step pass needs {num_steps - 1}")
        return NoisePlan(self.latents, self.step_noise[: max(num_steps - 1, 0)])


def _check_latent_shape(latent_shape) -> tuple[int, int, int, int]:
    shape = tuple(int(s) for s in latent_shape)
    if len(shape) != 4 or shape[0] != 1 or shape[1] != 4 or min(shape) < 1:
        raise MonkeyError(f"latent shape must be [1, 4, h, w], got {list(shape)}")
    return shape  # type: ignore[return-value]


MAX_STEP_NOISES = 49  # a pass has at most 50 steps (MonkeyConfig): no plan needs more step noises
MAX_LATENT_ELEMENTS = 4 * (2048 // 8) ** 2  # the largest request (2048 x 2048) has latents [1, 4, 256, 256]
_MEMBERS = ("latents", "step_noise")


def _plan_bytes_limit(numel: int) -> int:
    """The most bytes a noise file for latents of `numel` elements can take: float64 arrays, headers, zip directory."""
    return (1 + MAX_STEP_NOISES) * numel * 8 + 2**16


def _read_npy_header(f, where: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header bytes) of the .npy stream `f`, read without touching its data."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise MonkeyError(f"{where} is a .npy of format version {version[0]}.{version[1]}; 1.0 and 2.0 are accepted")
    return tuple(int(s) for s in shape), np.dtype(dtype), f.tell()


@dataclass(frozen=True, eq=False)
class NoiseFile:
    """An `.npz` noise file, read once: its bytes' SHA-256 (result.json records it) and its two members'
    headers, checked; the arrays are read by `plan` only after their shapes fit the request."""

    path: Path
    sha256: str
    data: bytes = field(repr=False)
    headers: dict  # member -> (shape, dtype, header bytes)

    def plan(self, latent_shape, steps_needed: int) -> NoisePlan:
        """`latents` [1,4,h,w] and `step_noise` [K,1,4,h,w] (steps_needed-1 <= K <= 49) as a NoisePlan.

        Every shape is checked on the headers before any array is read; MonkeyError otherwise."""
        shape = _check_latent_shape(latent_shape)
        name = repr(str(self.path))
        limit = _plan_bytes_limit(math.prod(shape))
        if len(self.data) > limit:
            raise MonkeyError(f"noise file {name} is {len(self.data)} bytes; a plan for latents {list(shape)} takes at most {limit}")
        for key, want in (("latents", shape), ("step_noise", (None, *shape))):
            got = self.headers[key][0]
            if len(got) != len(want) or any(w is not None and w != g for w, g in zip(want, got)):
                shown = ["K" if w is None else w for w in want]
                raise MonkeyError(f"noise file {name}: {key} has shape {list(got)}, expected {shown}")
        k = self.headers["step_noise"][0][0]
        if k < steps_needed - 1:
            raise MonkeyError(f"noise file {name}: step_noise has {k} entries, a {steps_needed}-step pass needs {steps_needed - 1}")
        out = {}
        try:
            with zipfile.ZipFile(io.BytesIO(self.data)) as zf:
                for key in _MEMBERS:
                    with zf.open(f"{key}.npy") as f:
                        a = np.lib.format.read_array(f, allow_pickle=False).astype(np.float32)
                    if not np.isfinite(a).all():
                        raise MonkeyError(f"noise file {name}: {key} holds NaN or infinite values")
                    out[key] = a
        except MonkeyError:
            raise
        except Exception as e:  # zip/npy format errors come in many types
            raise MonkeyError(f"noise file {name} is not a readable .npz: {type(e).__name__}: {e}".splitlines()[0]) from None
        return NoisePlan(out["latents"], out["step_noise"])


def read_noise_file(path, latent_shape=None) -> NoiseFile:
    """Read an `.npz` noise file once and check it by its size, zip directory and .npy headers.

    Nothing big is allocated before it is checked: the file size (against `latent_shape` when known,
    else the largest request's), then the zip directory (exactly `latents` and `step_noise`, no other
    member, none twice), then each member's header (a float dtype, ranks 4 and 5, K <= 49) and its
    stored size against that header. The shapes are checked against the request by `NoiseFile.plan`."""
    p = Path(path)
    name = repr(str(p))
    if not p.is_file():
        raise MonkeyError(f"noise file {name} does not exist or is not a file")
    numel = math.prod(_check_latent_shape(latent_shape)) if latent_shape is not None else MAX_LATENT_ELEMENTS
    limit, size = _plan_bytes_limit(numel), p.stat().st_size
    if size > limit:
        shown = f"a plan for latents {list(latent_shape)}" if latent_shape is not None else "the largest plan"
        raise MonkeyError(f"noise file {name} is {size} bytes; {shown} takes at most {limit}")
    data = p.read_bytes()
    headers = {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = [info.filename for info in zf.infolist()]
            extra = sorted({n for n in names if n not in {f"{k}.npy" for k in _MEMBERS}})
            if extra:
                shown = [n[:-4] if n.endswith(".npy") else n for n in extra[:5]]
                raise MonkeyError(f"noise file {name} holds other arrays than 'latents' and 'step_noise': {shown}"
                                  + (f" and {len(extra) - 5} more" if len(extra) > 5 else ""))
            missing = [k for k in _MEMBERS if f"{k}.npy" not in names]
            if missing:
                raise MonkeyError(f"noise file {name} lacks {missing}; it needs 'latents' and 'step_noise'")
            if len(names) != len(_MEMBERS):
                raise MonkeyError(f"noise file {name} holds an array twice (a zip member repeated)")
            for key, rank in (("latents", 4), ("step_noise", 5)):
                info = zf.getinfo(f"{key}.npy")
                with zf.open(info) as f:
                    got, dtype, header = _read_npy_header(f, f"noise file {name}: {key}")
                if dtype.kind != "f" or dtype.itemsize > 8:
                    raise MonkeyError(f"noise file {name}: {key} must be a float array, got dtype {dtype}")
                if key == "step_noise" and got and got[0] > MAX_STEP_NOISES:
                    raise MonkeyError(f"noise file {name}: step_noise has {got[0]} entries; at most {MAX_STEP_NOISES} are accepted")
                if len(got) == rank and info.file_size != header + math.prod(got) * dtype.itemsize:
                    raise MonkeyError(f"noise file {name}: {key} holds {info.file_size} bytes, its header says "
                                      f"{header + math.prod(got) * dtype.itemsize}")
                headers[key] = (got, dtype, header)
    except MonkeyError:
        raise
    except Exception as e:  # zip/npy format errors come in many types
        raise MonkeyError(f"noise file {name} is not a readable .npz: {type(e).__name__}: {e}".splitlines()[0]) from None
    return NoiseFile(p, hashlib.sha256(data).hexdigest(), data, headers)


def load_noise_file(path, latent_shape, steps_needed: int) -> NoisePlan:
    """Read an `.npz` with `latents` [1,4,h,w] and `step_noise` [K,1,4,h,w] (steps_needed-1 <= K <= 49)."""
    return read_noise_file(path, latent_shape).plan(latent_shape, steps_needed)


def save_noise_file(path, plan: NoisePlan) -> None:
    """Write `plan` as an uncompressed `.npz` (atomically: temp file, then rename)."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, latents=plan.latents.astype(np.float32), step_noise=plan.step_noise.astype(np.float32))
    os.replace(tmp, p)
