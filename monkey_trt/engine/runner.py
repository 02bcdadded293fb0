"""The runner contract: one network on one backend (Polygraphy-style, a context manager).

    with OrtRunner(onnx_path, providers=...) as unet:
        fixed = unet.bind_static({"encoder_hidden_states": text, ...})   # owned by the caller
        outputs = unet.infer({"sample": x, ...}, static=fixed, outputs=("noise_pred",))

Inputs that stay fixed over many calls (one LCM pass: text embeddings, IP tokens, guidance, mask) are
bound once into a `StaticInputs` handle that the caller owns: a device backend keeps them in device
buffers of that handle, so two handles (two UNet sessions) never share or overwrite each other's
inputs. `outputs` names what to bring back to the host (a device backend skips the other copies).

`Runner.infer` is a template method (Polygraphy's `BaseRunner.infer` around `infer_impl`): it checks once, for
every backend, that the runner is active, merges the static handle under the feeds, validates names, dtypes,
ranks and static dims, refuses shapes outside the runner's profile (`input_profile`) and resolves `outputs`;
then each backend's `_infer` runs. tests/test_runner_contract.py checks the contract for every runner.

Lean: numpy only. Backends live in sibling modules (ort.py, trt/, onnx_reference.py).
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from monkey_trt.core.errors import MonkeyError
from monkey_trt.enginedir.networks import TensorDesc  # name, numpy dtype name, shape (-1 or a str: a dynamic axis)

ProfileShapes = Mapping[str, tuple[Sequence[int], Sequence[int], Sequence[int]]]  # input -> (min, opt, max) shapes

_HANDLE_IDS = itertools.count(1)


@dataclass(eq=False)
class StaticInputs:
    """Inputs bound once for many `infer` calls, owned by whoever called `bind_static`.

    host: name -> C-contiguous host array (the values, always kept).
    device: backend-owned device copies (name -> buffer), filled by a device backend; never shared
        with another handle. `release()` frees them (the runner does it on deactivate too).
    """

    runner: str
    host: dict[str, np.ndarray]
    device: dict = field(default_factory=dict)
    id: int = field(default_factory=lambda: next(_HANDLE_IDS))
    released: bool = False

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(a.shape) for n, a in self.host.items()}

    def release(self) -> None:
        """Drop the device copies (the backend frees them through its finaliser); host values stay."""
        self.device.clear()
        self.released = True


class Runner(ABC):
    """Runs one network. `activate` loads it (session/engine + buffers); `infer` maps names to arrays.

    A backend implements `activate`, `deactivate`, `is_active`, `input_specs`, `output_specs` and `_infer`
    (and, for device memory, `_upload_static`); `infer` does every check once, for all of them."""

    name: str = "runner"
    backend: str = "?"
    profile_hint: str = "re-export with a wider profile: monkey-trt export --min/--max/--batch"

    def __enter__(self) -> "Runner":
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()

    @abstractmethod
    def activate(self) -> None: ...

    def deactivate(self) -> None:  # pragma: no cover - default is a no-op
        pass

    @property
    @abstractmethod
    def is_active(self) -> bool:
        """Whether `activate` has run (and `deactivate` has not since)."""

    def _require_active(self) -> None:
        if not self.is_active:
            raise MonkeyError(f"{self.name}: the runner is not active (use it as a context manager or call activate())")

    # -- what callers may ask ----------------------------------------------------------------
    @property
    def device(self) -> str:
        """Where the network runs: "cpu" or "cuda"."""
        return "cpu"

    @property
    def providers(self) -> tuple[str, ...]:
        """The execution providers that actually run the network (ORT names; ("TensorRT",) for plans)."""
        return ()

    @property
    def max_batch(self) -> int | None:
        """The largest batch the network accepts (None: any; a TensorRT profile bounds it)."""
        return None

    def input_profile(self) -> ProfileShapes:
        """The (min, opt, max) shapes each input accepts (its optimisation profile); {} where any shape goes."""
        return {}

    @property
    @abstractmethod
    def input_specs(self) -> list[TensorDesc]: ...

    @property
    @abstractmethod
    def output_specs(self) -> list[TensorDesc]: ...

    # -- inputs bound once -------------------------------------------------------------------
    def bind_static(self, feeds: Mapping[str, np.ndarray]) -> StaticInputs:
        """Inputs fixed over the coming `infer(..., static=handle)` calls; the caller owns the handle.

        The default keeps host copies; device backends override `_upload_static` to put them on the device once.
        """
        if not isinstance(feeds, Mapping):
            raise MonkeyError(f"{self.name}: static inputs must be a dict of name -> numpy array, got {type(feeds).__name__}")
        known = {s.name: s for s in self.input_specs}
        unknown = sorted(set(feeds) - set(known))
        if unknown:
            raise MonkeyError(f"{self.name}: unknown input(s) {', '.join(map(repr, unknown))} (inputs: {', '.join(known)})")
        validate_feeds(self.name, [known[n] for n in feeds], feeds)
        # copies: the handle owns its values (a caller reusing its arrays cannot change a bound session)
        handle = StaticInputs(self.name, {n: np.array(a, order="C", copy=True) for n, a in feeds.items()})
        self._upload_static(handle)
        return handle

    def _upload_static(self, handle: StaticInputs) -> None:
        """Device backends: copy `handle.host` into device buffers owned by `handle.device`."""

    def _merged(self, feeds: Mapping[str, np.ndarray], static: StaticInputs | None) -> dict[str, np.ndarray]:
        """`feeds` over the static host values; checks that the handle belongs to this runner and is live."""
        if static is None:
            return dict(feeds)
        if not isinstance(static, StaticInputs) or static.runner != self.name or static.released:
            raise MonkeyError(f"{self.name}: static inputs must come from this runner's bind_static() and not be released")
        return {**static.host, **feeds}

    def _wanted(self, outputs: Collection[str] | None) -> list[TensorDesc]:
        specs = self.output_specs
        if outputs is None:
            return specs
        names = {s.name for s in specs}
        unknown = sorted(set(outputs) - names)
        if unknown:
            raise MonkeyError(f"{self.name}: unknown output(s) {', '.join(map(repr, unknown))} (outputs: {', '.join(names)})")
        return [s for s in specs if s.name in outputs]

    def infer(self, feeds: Mapping[str, np.ndarray], static: StaticInputs | None = None,
              outputs: Collection[str] | None = None) -> dict[str, np.ndarray]:
        """Run once. Inputs are host numpy arrays (`static` supplies the bound ones; a feed overrides one);
        returns the `outputs` asked for (default: all) as host arrays owned by the caller."""
        self._require_active()
        if not isinstance(feeds, Mapping):
            raise MonkeyError(f"{self.name}: feeds must be a dict of name -> numpy array, got {type(feeds).__name__}")
        merged = self._merged(feeds, static)
        inputs = self.input_specs
        validate_feeds(self.name, inputs, merged)
        check_profile(self.name, inputs, merged, self.input_profile(), self.profile_hint)
        return self._infer(merged, feeds, static, self._wanted(outputs))

    @abstractmethod
    def _infer(self, merged: dict[str, np.ndarray], feeds: Mapping[str, np.ndarray], static: StaticInputs | None,
               wanted: list[TensorDesc]) -> dict[str, np.ndarray]:
        """Run with `merged` (checked: every input, right dtype and shape); `feeds` are the per-call ones (the rest came
        from `static`); return the `wanted` outputs as host arrays the caller owns."""


def check_profile(name: str, specs: Sequence[TensorDesc], feeds: Mapping[str, np.ndarray], profile: ProfileShapes,
                  hint: str) -> None:
    """Every input's shape within its profile's [min, max] (inputs without a profile entry: any); one line otherwise."""
    for spec in specs:
        bounds = profile.get(spec.name)
        if bounds is None:
            continue
        shape, mn, mx = tuple(feeds[spec.name].shape), tuple(bounds[0]), tuple(bounds[2])
        if len(mn) == len(shape) == len(mx) and any(not lo <= d <= hi for d, lo, hi in zip(shape, mn, mx)):
            raise MonkeyError(f"{name}: input {spec.name!r} shape {list(shape)} is outside the engine profile "
                              f"{list(mn)}..{list(mx)} ({hint})")


def validate_feeds(name: str, specs: Sequence[TensorDesc], feeds: Mapping[str, np.ndarray]) -> None:
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
