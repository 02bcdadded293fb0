"""CUDA-graph replay of the reference UNet (`--backend torch --device cuda --cuda-graph`).

One graph per layout: (sample shape, IP tokens shape (N images), masked or not, map recorded or not). Each call copies its
inputs into the graph's static tensors and replays; the IP scale is a device tensor [n_ip_layers]
(so a graph serves every scale: at scale 0 the IP branch is computed and multiplied by 0, which
adds exactly 0). Graphs share one memory pool. CUDA only; needs a GPU to run (tests: `gpu`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]  # static inputs, filled by copy_ before each replay
    masks: dict[int, torch.Tensor] | None  # static per-level planes [B, N, Q_level, 1]
    eps: torch.Tensor  # static output [B, 4, h, w]
    attn_map: torch.Tensor | None  # static output [B, Q, N*T]


class GraphedUNet:
    """`unet(sample, t, text, cond, tokens, scales, masks, map_layer) -> (eps, map)` with CUDA-graph replay."""

    def __init__(self, models, warmup: int = 2):
        self.m, self.warmup = models, warmup
        self.graphs: dict[tuple, _Graph] = {}
        self.pool = torch.cuda.graph_pool_handle()

    def _forward(self, x: dict[str, torch.Tensor], masks, map_layer):
        m = self.m
        m.ctx.ip_tokens, m.ctx.scales, m.ctx.masks, m.ctx.map_layer = x["tokens"], x["scales"], masks, map_layer
        try:
            eps = m.unet(x["sample"], x["t"], encoder_hidden_states=x["text"], timestep_cond=x["cond"]).sample
            return eps, m.ctx.attn_map if map_layer is not None else None
        finally:
            m.ctx.ip_tokens, m.ctx.masks, m.ctx.map_layer, m.ctx.attn_map = None, None, None, None

    def _capture(self, x: dict[str, torch.Tensor], masks, map_layer) -> _Graph:
        static = {k: v.clone() for k, v in x.items()}
        static_masks = None if masks is None else {k: v.clone() for k, v in masks.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):  # cuBLAS/cuDNN workspaces and autotuning before capture
                self._forward(static, static_masks, map_layer)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            eps, attn_map = self._forward(static, static_masks, map_layer)
        return _Graph(graph, static, static_masks, eps, attn_map)

    @torch.no_grad()
    def __call__(self, x: dict[str, torch.Tensor], masks: dict[int, torch.Tensor] | None, map_layer: int | None):
        """x: sample [B,4,h,w], t [B], text [B,77,D], cond [B,T], tokens [B,N*T,D], scales [n_ip_layers] (device tensors)."""
        key = (tuple(x["sample"].shape), tuple(x["tokens"].shape), masks is not None, map_layer)
        g = self.graphs.get(key)
        if g is None:
            g = self.graphs[key] = self._capture(x, masks, map_layer)
        for k, v in x.items():
            g.inputs[k].copy_(v, non_blocking=True)
        if masks is not None:
            for level, v in masks.items():
                g.masks[level].copy_(v, non_blocking=True)
        g.graph.replay()
        return g.eps, g.attn_map
