"""`onnx.reference.ReferenceEvaluator` behind the Runner interface: an independent ONNX executor.

Slow (numpy, op by op) but it runs every op in the dtype the graph declares — an fp16 node
computes in fp16 — and shares no code with the exporter, ONNX Runtime or TensorRT. It measures
the fidelity of the fp16 graphs on machines without a GPU (ONNX Runtime's CPU provider would
silently run fp16 nodes it has no kernel for in fp32, via inserted casts).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path

import numpy as np

from monkey_trt.core.errors import BackendUnavailable, MonkeyError
from monkey_trt.engine.runner import Runner, StaticInputs, TensorSpec, validate_feeds

_ONNX_TO_NP = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 9: "bool"}


class OnnxReferenceRunner(Runner):
    """One ONNX file run by onnx's reference evaluator (needs the `export` extra's `onnx`)."""

    backend = "onnx-reference"

    def __init__(self, onnx_path: str | os.PathLike, name: str | None = None) -> None:
        self.path = Path(onnx_path)
        self.name = name or self.path.stem
        self._ev = None
        self._inputs: list[TensorSpec] = []
        self._outputs: list[TensorSpec] = []

    def activate(self) -> None:
        if self._ev is not None:
            return
        try:
            import onnx
            from onnx.reference import ReferenceEvaluator
        except ImportError:
            raise BackendUnavailable("the onnx reference evaluator needs onnx: pip install 'monkey-trt[export]'") from None
        model = onnx.load(str(self.path))
        self._inputs = [_spec(v) for v in model.graph.input]
        self._outputs = [_spec(v) for v in model.graph.output]
        self._ev = ReferenceEvaluator(model)

    def deactivate(self) -> None:
        self._ev = None

    @property
    def input_specs(self) -> list[TensorSpec]:
        return list(self._inputs)

    @property
    def output_specs(self) -> list[TensorSpec]:
        return list(self._outputs)

    def infer(self, feeds: Mapping[str, np.ndarray], static: StaticInputs | None = None,
              outputs: Collection[str] | None = None) -> dict[str, np.ndarray]:
        if self._ev is None:
            raise MonkeyError(f"{self.name}: the runner is not active")
        merged = self._merged(feeds, static)
        validate_feeds(self.name, self._inputs, merged)
        wanted = self._wanted(outputs)
        outs = self._ev.run([s.name for s in wanted], {s.name: merged[s.name] for s in self._inputs})
        return {s.name: np.array(o, copy=True) for s, o in zip(wanted, outs)}


def _spec(value_info) -> TensorSpec:
    t = value_info.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or -1) for d in t.shape.dim)
    return TensorSpec(value_info.name, _ONNX_TO_NP.get(t.elem_type, "float32"), dims)
