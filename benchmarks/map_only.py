"""The map-only UNet (pass 1's last call): its share of a UNet call's FLOPs, and the time it saves.

    python benchmarks/map_only.py flops --preset sd15 --size 256          # torch's FLOP counter on the meta device: no weights
    python benchmarks/map_only.py time --engine-dir E --size 128 --runs 20  # ORT CPU: full UNet call vs map-only, alternating

`flops` counts the diffusers UNet of a preset at batch 1 with torch.utils.flop_counter (shapes only, on the meta
device), reading the running total as the mask layer's attn2 starts; the map-only graph adds that layer's query
projection, the IP key projection and q.k_ip (the IP-Adapter's 4-token branches elsewhere are left out on both sides).
`time` runs the engine directory's `unet` and `unet_map` graphs through the runtime's opener on the same inputs,
alternating, and checks the map bits are the same.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def count_flops(preset: str, size: int, mask_layer: str) -> dict:
    import torch
    from diffusers.models.attention_processor import AttnProcessor
    from torch.utils.flop_counter import FlopCounterMode

    from monkey_trt.embedded.presets import meta_models

    unet = meta_models(preset)["unet"].eval()
    unet.set_attn_processor(AttnProcessor())  # plain bmm/softmax: counted op by op
    layer = mask_layer.removesuffix(".processor")
    attn = unet.get_submodule(layer)
    cfg, h = unet.config, size // 8
    counter = FlopCounterMode(display=False)
    seen: dict = {}

    def before(_module, args, kwargs):
        seen["before"] = counter.get_total_flops()
        hidden = args[0] if args else kwargs["hidden_states"]
        seen["q"], seen["c"] = hidden.shape[1], hidden.shape[2]  # queries, channels at the mask layer

    attn.register_forward_pre_hook(before, with_kwargs=True)
    with torch.device("meta"), torch.no_grad(), counter:
        sample = torch.zeros(1, cfg.in_channels, h, h)
        text = torch.zeros(1, 77, cfg.cross_attention_dim)
        cond = torch.zeros(1, cfg.time_cond_proj_dim) if cfg.time_cond_proj_dim else None
        unet(sample, torch.tensor([759.0]), encoder_hidden_states=text, timestep_cond=cond)
    total = counter.get_total_flops()
    q, c, d = seen["q"], seen["c"], cfg.cross_attention_dim
    # the map-only graph also runs the mask layer's query projection, its IP key projection and q.k_ip^T
    cut = seen["before"] + 2 * q * c * c + 2 * 4 * d * c + 2 * q * 4 * c
    return {"preset": preset, "size": size, "mask_layer": layer, "full_gflop": total / 1e9, "map_only_gflop": cut / 1e9,
            "fraction": cut / total,
            "note": "diffusers' UNet without the IP-Adapter's 4-token branches (about 0.1% of a call, on both sides)"}


def time_calls(engine_dir: Path, size: int, runs: int, threads: int) -> dict:
    from monkey_trt.enginedir.load import load_manifest
    from monkey_trt.enginedir.networks import MAP_NETWORK, MAP_OUTPUT
    from monkey_trt.runtime.backend import BackendSpec
    from monkey_trt.runtime.pipeline import open_runners

    m = load_manifest(engine_dir)
    runners = open_runners(engine_dir, m, BackendSpec(backend="ort", threads=threads), ("unet", MAP_NETWORK))
    d, g = m.dims, np.random.default_rng(0)
    feeds = {
        "sample": g.standard_normal((1, d.latent_channels, size // 8, size // 8)).astype(np.float32),
        "timestep": np.full((1,), 759.0, np.float32),
        "encoder_hidden_states": g.standard_normal((1, d.text_len, d.text_dim)).astype(np.float32),
        "timestep_cond": g.standard_normal((1, d.time_cond_dim)).astype(np.float32),
        "ip_tokens": g.standard_normal((1, d.n_ip_tokens, d.text_dim)).astype(np.float32),
        "ip_scale": np.ones((d.n_ip_layers,), np.float32),
        "ip_mask": np.ones((1, 1, size, size), np.float32),
    }
    full_s, cut_s = [], []
    try:
        a = runners["unet"].infer(feeds, outputs=("noise_pred", MAP_OUTPUT))[MAP_OUTPUT]  # warm-up + the bits check
        b = runners[MAP_NETWORK].infer(feeds, outputs=(MAP_OUTPUT,))[MAP_OUTPUT]
        for _ in range(runs):
            t0 = time.perf_counter()
            runners["unet"].infer(feeds, outputs=("noise_pred", MAP_OUTPUT))
            t1 = time.perf_counter()
            runners[MAP_NETWORK].infer(feeds, outputs=(MAP_OUTPUT,))
            t2 = time.perf_counter()
            full_s.append(t1 - t0)
            cut_s.append(t2 - t1)
    finally:
        for r in runners.values():
            r.deactivate()
    full, cut = statistics.median(full_s), statistics.median(cut_s)
    return {"engine_dir": str(engine_dir), "size": size, "runs": runs, "full_unet_p50_s": full, "map_only_p50_s": cut,
            "saved_s": full - cut, "time_fraction": cut / full, "map_bits_identical": bool(np.array_equal(a, b))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    f = sub.add_parser("flops")
    f.add_argument("--preset", default="sd15")
    f.add_argument("--size", type=int, default=256)
    f.add_argument("--mask-layer", default="up_blocks.1.attentions.1.transformer_blocks.0.attn2")
    t = sub.add_parser("time")
    t.add_argument("--engine-dir", type=Path, required=True)
    t.add_argument("--size", type=int, default=128)
    t.add_argument("--runs", type=int, default=20)
    t.add_argument("--threads", type=int, default=0)
    a = ap.parse_args(argv)
    out = count_flops(a.preset, a.size, a.mask_layer) if a.what == "flops" else time_calls(a.engine_dir, a.size, a.runs, a.threads)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
