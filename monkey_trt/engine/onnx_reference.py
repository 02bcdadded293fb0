"""`onnx.reference.ReferenceEvaluator` behind the Runner interface: an independent ONNX executor.

Slow (numpy, op by op) but it runs every op in the dtype the graph declares — an fp16 node
computes in fp16 — and shares no code with the exporter, ONNX Runtime or TensorRT. It measures
the fidelity of the fp16 graphs on machines without a GPU (ONNX Runtime's CPU provider would
silently run fp16 nodes it has no kernel for in fp32, via inserted casts).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from monkey_trt.core.errors import BackendUnavailable
from monkey_trt.engine.runner import ProfileShapes, Runner, StaticInputs, TensorDesc

_ONNX_TO_NP = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 9: "bool"}


class OnnxReferenceRunner(Runner):
    """One ONNX file run by onnx's reference evaluator (needs the `export` extra's `onnx`)."""

    backend = "onnx-reference"

    def __init__(self, onnx_path: str | os.PathLike, name: str | None = None, profile: ProfileShapes | None = None) -> None:
        self.path = Path(onnx_path)
        self.name = name or self.path.stem
        self.profile = dict(profile or {})  # input -> (min, opt, max): shapes outside are refused (the Runner contract)
        self._ev = None
        self._inputs: list[TensorDesc] = []
        self._outputs: list[TensorDesc] = []

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
    def is_active(self) -> bool:
        return self._ev is not None

    def input_profile(self) -> ProfileShapes:
        return self.profile

    @property
    def input_specs(self) -> list[TensorDesc]:
        return list(self._inputs)

    @property
    def output_specs(self) -> list[TensorDesc]:
        return list(self._outputs)

    def _infer(self, merged: dict[str, np.ndarray], feeds: Mapping[str, np.ndarray], static: StaticInputs | None,
               wanted: list[TensorDesc]) -> dict[str, np.ndarray]:
        outs = self._ev.run([s.name for s in wanted], {s.name: merged[s.name] for s in self._inputs})
        return {s.name: np.array(o, copy=True) for s, o in zip(wanted, outs)}


def _spec(value_info) -> TensorDesc:
    t = value_info.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or -1) for d in t.shape.dim)
    return TensorDesc(value_info.name, _ONNX_TO_NP.get(t.elem_type, "float32"), dims)
