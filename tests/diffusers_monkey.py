"""An independent MONKEY, written for the tests on top of diffusers' own pipeline and loader.

It shares no code with monkey_trt's reference except the explicit CLIP preprocessing (docs/method.md, "Models":
both must use one identical preprocessing). Mirrors docs/method.md step by step:

- pass 1: `LatentConsistencyModelPipeline` + `load_ip_adapter`, scale `scale_mask_pass`; a forward
  hook on the mask layer recomputes head-mean softmax(Q K_ip^T) (no 1/sqrt(d)) from the layer's
  own inputs at every step;
- mask: column `mask_token`, min-max, `< threshold` -> 0, sum over mask steps, nearest upsample,
  `> 0`;
- pass 2: the same pipeline and seed, `IPAdapterMaskProcessor` mask through
  `cross_attention_kwargs["ip_adapter_masks"]`, the IP scale switched per step by
  `callback_on_step_end` (scale_final at masked steps, 0 elsewhere).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from monkey_trt.runtime.images import clip_preprocess

MASK_LAYER = "up_blocks.1.attentions.1.transformer_blocks.0.attn2"


def load_diffusers_pipeline(base, ip_dir):
    from diffusers import LatentConsistencyModelPipeline
    from transformers import CLIPVisionModelWithProjection

    pipe = LatentConsistencyModelPipeline.from_pretrained(str(base), safety_checker=None, requires_safety_checker=False)
    pipe.load_ip_adapter(str(ip_dir), subfolder="models", weight_name="ip-adapter_sd15.safetensors")
    encoder = CLIPVisionModelWithProjection.from_pretrained(str(ip_dir / "models" / "image_encoder"))
    pipe.set_progress_bar_config(disable=True)
    return pipe, encoder


@torch.no_grad()
def image_embeds(encoder, subject: Image.Image) -> torch.Tensor:
    pixels = torch.from_numpy(clip_preprocess(subject))
    return encoder(pixels).image_embeds[:, None]  # [1, 1, E]: one IP image


class MapRecorder:
    """Forward hook on the mask layer: head-mean softmax(Q K_ip^T) of batch item 0, one per call."""

    def __init__(self, pipe, layer: str = MASK_LAYER):
        self.attn = dict(pipe.unet.named_modules())[layer]
        self.maps: list[np.ndarray] = []
        self.handle = self.attn.register_forward_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        _, ip_states = kwargs["encoder_hidden_states"]
        ip = ip_states[0][:, 0]  # [B, 4, D]
        proc = module.processor
        q = module.to_q(hidden)
        k = proc.to_k_ip[0](ip)
        b, heads = q.shape[0], module.heads
        d = q.shape[-1] // heads
        q = q.view(b, -1, heads, d).transpose(1, 2)
        k = k.view(b, -1, heads, d).transpose(1, 2)
        probs = torch.softmax(q @ k.transpose(-1, -2), dim=-1).mean(dim=1)  # [B, Q, 4]
        self.maps.append(probs[0].numpy())

    def remove(self):
        self.handle.remove()


def spec_mask(maps: list[np.ndarray], steps, token, threshold, height, width) -> np.ndarray:
    q = maps[0].shape[0]
    gh = int(round(math.sqrt(q * height / width)))
    gw = q // gh
    assert gh * gw == q
    total = torch.zeros(gh, gw)
    for s in steps:
        m = torch.from_numpy(maps[s][:, token]).reshape(gh, gw)
        m = (m - m.min()) / (m.max() - m.min())
        m[m < threshold] = 0
        total += m
    up = F.interpolate(total[None, None], size=(height, width), mode="nearest")[0, 0]
    return (up > 0).float().numpy()


@torch.no_grad()
def diffusers_monkey(pipe, embeds, prompt, seed, height, width, cfg=None):
    """-> (image [H,W,3] float32 in [0,1], mask [H,W] {0,1}, pass-1 maps)."""
    from diffusers.image_processor import IPAdapterMaskProcessor

    cfg = cfg or {}
    steps1, mask_steps = cfg.get("steps_mask_pass", 4), cfg.get("mask_steps", (1, 2))
    token, thr = cfg.get("mask_token", 1), cfg.get("threshold", 0.5)
    steps2, masked = cfg.get("steps_final", 8), cfg.get("masked_steps", (2, 3, 4, 5))
    s1, s2, gs = cfg.get("scale_mask_pass", 1.0), cfg.get("scale_final", 1.0), cfg.get("guidance_scale", 8.5)

    rec = MapRecorder(pipe)
    pipe.set_ip_adapter_scale(s1)
    pipe(prompt, ip_adapter_image_embeds=[embeds], num_inference_steps=steps1, guidance_scale=gs, height=height,
         width=width, generator=torch.Generator("cpu").manual_seed(seed), output_type="latent")
    rec.remove()
    mask = spec_mask(rec.maps, mask_steps, token, thr, height, width)

    scales = [s2 if i in masked else 0.0 for i in range(steps2)]

    def switch_scale(p, i, t, kwargs):
        if i + 1 < steps2:
            p.set_ip_adapter_scale(scales[i + 1])
        return kwargs

    ip_mask = IPAdapterMaskProcessor().preprocess(Image.fromarray((mask * 255).astype(np.uint8)), height=height, width=width)
    pipe.set_ip_adapter_scale(scales[0])
    image = pipe(prompt, ip_adapter_image_embeds=[embeds], num_inference_steps=steps2, guidance_scale=gs, height=height,
                 width=width, generator=torch.Generator("cpu").manual_seed(seed), output_type="np",
                 cross_attention_kwargs={"ip_adapter_masks": [ip_mask]}, callback_on_step_end=switch_scale).images[0]
    return image.astype(np.float32), mask, rec.maps


@torch.no_grad()
def diffusers_ip_adapter(pipe, embeds, prompt, seed, height, width, scale=1.0, steps=8, guidance_scale=8.5):
    """Plain IP-Adapter baseline from diffusers: no mask, `scale` at every step."""
    pipe.set_ip_adapter_scale(scale)
    return pipe(prompt, ip_adapter_image_embeds=[embeds], num_inference_steps=steps, guidance_scale=guidance_scale,
                height=height, width=width, generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images[0]
