"""CUDA-graph replay for OrtRunner (the mixin `CudaGraphReplay`): one captured graph per input-shape set, each with
fixed device buffers bound before its capturing run (ORT replays read and write the addresses bound at capture).

CUDA EP with ONNX Runtime >= 1.18 (GRAPH_IDS_SINCE): one session, one graph per shape set (RunOptions
"gpu_graph_id"); the TensorRT EP (one graph per session) or an older ORT: one extra session per shape set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from monkey_trt.engine.ort.providers import import_ort
from monkey_trt.engine.runner import StaticInputs, TensorDesc


@dataclass(eq=False)
class CapturedGraph:
    """One captured CUDA graph: its session, binding, run options and fixed device buffers (ORT requirement)."""

    key: tuple
    session: object
    binding: object
    run_options: object
    inputs: dict
    outputs: dict
    graph_id: int | None = None
    loaded: dict = field(default_factory=dict)  # static input name -> id of the StaticInputs its buffer holds


class CudaGraphReplay:
    """OrtRunner's CUDA-graph mode (its `_graph_mode`, `_graphs`, `_next_graph_id`, session and helpers)."""

    def _infer_graph(self, merged: dict, feeds: Mapping, static: StaticInputs | None, wanted: list[TensorDesc]) -> dict:
        """CUDA-graph mode: one captured graph per input-shape set, each with fixed device buffers bound before
        its capturing run (ORT replays read and write the addresses bound at capture). A call copies its inputs
        into the graph's input buffers (a static input only when the buffer holds another handle's values),
        replays, and copies back the outputs asked for."""
        key = tuple((s.name, tuple(merged[s.name].shape)) for s in self._inputs)
        g = self._graphs.get(key)
        if g is None:
            self._graphs[key] = self._capture(key, merged, static, feeds)
        else:
            for s in self._inputs:
                n = s.name
                if static is not None and n in static.host and n not in feeds:
                    if g.loaded.get(n) == static.id:
                        continue
                    g.inputs[n].update_inplace(static.host[n])
                    g.loaded[n] = static.id
                else:
                    g.inputs[n].update_inplace(np.ascontiguousarray(merged[n]))
                    g.loaded.pop(n, None)
            self._run(g.session, g.binding, g.run_options)
        g = self._graphs[key]
        return {s.name: np.array(g.outputs[s.name].numpy(), copy=True) for s in wanted}

    def _capture(self, key: tuple, merged: dict, static: StaticInputs | None, feeds: Mapping) -> CapturedGraph:
        ort = import_ort()
        dev = ("cuda", self.device_id)
        # 1. the output shapes, from a regular run that captures nothing (gpu_graph_id -1, or the graph-less session)
        probe_opts = None
        if self._graph_mode == "ids":
            probe_opts = ort.RunOptions()
            probe_opts.add_run_config_entry("gpu_graph_id", "-1")
        probe = self.session.io_binding()
        keep = []
        for s in self._inputs:
            arr = np.ascontiguousarray(merged[s.name])
            keep.append(arr)
            probe.bind_cpu_input(s.name, arr)
        for s in self._outputs:
            probe.bind_output(s.name, *dev)
        self._run(self.session, probe, probe_opts)
        shapes = {s.name: tuple(v.shape()) for s, v in zip(self._outputs, probe.get_outputs())}
        del probe
        # 2. fixed device buffers for every input and output, sized from those shapes
        inputs = {s.name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(merged[s.name]), *dev) for s in self._inputs}
        outputs = {s.name: ort.OrtValue.ortvalue_from_shape_and_type(shapes[s.name], np.dtype(s.dtype), *dev)
                   for s in self._outputs}
        # 3. the graph's session and binding: the shared session with a new gpu_graph_id, or a session of its own
        graph_id = None
        if self._graph_mode == "ids":
            sess, graph_id = self.session, self._next_graph_id
            self._next_graph_id += 1
            run_options = ort.RunOptions()
            run_options.add_run_config_entry("gpu_graph_id", str(graph_id))
        else:
            sess, run_options = self._create(self.model_path, self._session_options(), graph=True), None
            self._commit_stage()
        binding = sess.io_binding()
        for n, v in inputs.items():
            binding.bind_ortvalue_input(n, v)
        for n, v in outputs.items():
            binding.bind_ortvalue_output(n, v)
        # 4. the first run of this graph: ORT's warm-up runs and the capture happen inside it (then a replay)
        self._run(sess, binding, run_options)
        loaded = {n: static.id for n in static.host if n not in feeds} if static is not None else {}
        return CapturedGraph(key, sess, binding, run_options, inputs, outputs, graph_id, loaded)
