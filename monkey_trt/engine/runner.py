"""The runner interface: one network on one backend (Polygraphy-style, a context manager).

    with OrtRunner(onnx_path, providers=...) as unet:
        outputs = unet.infer({"sample": x, ...})   # name -> np.ndarray

Lean: numpy only. Backends live in sibling modules (ort.py, trt.py).
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
        """Run once. Inputs are host numpy arrays; outputs are host numpy arrays owned by the caller."""

    @property
    @abstractmethod
    def input_specs(self) -> list[TensorSpec]: ...

    @property
    @abstractmethod
    def output_specs(self) -> list[TensorSpec]: ...
