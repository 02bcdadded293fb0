"""The runner interface: one network on one backend (Polygraphy-style, a context manager).

    with OrtRunner(onnx_path, providers=...) as unet:
        outputs = unet.infer({"sample": x, ...})   # name -> np.ndarray

Lean: numpy only. Backends live beside it (ort.py, the trt/ package).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype name and shape of one network input/output; -1 or a str marks a dynamic axis."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


class Runner(ABC):
    """Runs one network. `activate` loads it (session/engine + buffers); `infer` maps names to arrays."""

    name: str = "runner"
    backend: str = "?"
    _static: dict[str, np.ndarray] = {}  # replaced per instance by set_static_inputs

    def __enter__(self) -> "Runner":
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()

    @abstractmethod
    def activate(self) -> None: ...

    def deactivate(self) -> None:  # pragma: no cover - default is a no-op
        pass

    @abstractmethod
    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once. Inputs are host numpy arrays; outputs are host numpy arrays owned by the caller.

        `feeds` may leave out the inputs given to `set_static_inputs`.
        """

    def set_static_inputs(self, feeds: dict[str, np.ndarray]) -> None:
        """Inputs that stay fixed over the coming infer() calls (e.g. one LCM pass: text embeddings,
        IP tokens, timestep_cond, ip_mask); a device backend uploads them once. infer() then takes
        only the remaining inputs. Calling it again replaces the set."""
        self._static = {name: np.ascontiguousarray(a) for name, a in feeds.items()}

    def _with_static(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**self._static, **feeds} if self._static else feeds

    @property
    @abstractmethod
    def input_specs(self) -> list[TensorSpec]: ...

    @property
    @abstractmethod
    def output_specs(self) -> list[TensorSpec]: ...
