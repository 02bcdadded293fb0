"""torch modules with exactly the inputs/outputs of enginedir.networks' descriptors, for tracing.

    TextEncoderNet   input_ids [B,77] int64           -> text_embeds [B,77,D]
    ImageEncoderNet  pixel_values [B,3,224,224]       -> ip_tokens [B,4,D]   (CLIP vision + IP projection)
    UNetNet          sample, timestep, encoder_hidden_states, timestep_cond, ip_tokens [B,N*T,D] (N IP images),
                     ip_scale [n_ip_layers], ip_mask [B,N,H,W] (one plane per image)
                                                      -> noise_pred [B,4,h,w], ip_attn_map [B,Q,N*T]
    VaeDecoderNet    latents [B,4,h,w] (unscaled)     -> images [B,3,H,W] in [0,1]
"""

from __future__ import annotations

import torch
from torch import nn

from monkey_trt.reference.attention import IPContext, downsample_mask


class TextEncoderNet(nn.Module):
    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids)[0]  # last_hidden_state [B, 77, D]


class ImageEncoderNet(nn.Module):
    def __init__(self, image_encoder: nn.Module, image_proj: nn.Module):
        super().__init__()
        self.image_encoder, self.image_proj = image_encoder, image_proj

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.image_proj(self.image_encoder(pixel_values).image_embeds)  # [B, 4, D]


class UNetNet(nn.Module):
    """The LCM UNet with MONKEY's IP inputs; the pixel planes are downsampled once per UNet level (N from the shapes:
    the image axis stays dynamic in the traced graph).

    The map of IP layer `map_layer` is always an output (a build option recorded in the manifest).
    """

    def __init__(self, unet: nn.Module, ctx: IPContext, map_layer: int):
        super().__init__()
        self.unet, self.ctx, self.map_layer = unet, ctx, map_layer
        self.n_levels = len(unet.config.block_out_channels)

    def forward(self, sample, timestep, encoder_hidden_states, timestep_cond, ip_tokens, ip_scale, ip_mask):
        h, w = sample.shape[2], sample.shape[3]
        masks = {}
        for level in range(self.n_levels):
            masks[level] = downsample_mask(ip_mask, (h, w))  # [B, N, h*w, 1]
            h, w = (h + 1) // 2, (w + 1) // 2  # stride-2 conv, pad 1: ceil(s / 2)
        ctx = self.ctx
        ctx.ip_tokens, ctx.scales, ctx.masks, ctx.map_layer = ip_tokens, ip_scale, masks, self.map_layer
        try:
            noise_pred = self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, timestep_cond=timestep_cond).sample
            attn_map = ctx.attn_map
        finally:
            ctx.ip_tokens, ctx.masks, ctx.map_layer, ctx.attn_map = None, None, None, None
        return noise_pred, attn_map


class VaeDecoderNet(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        self.scaling_factor = vae.config.scaling_factor

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        image = self.vae.decode(latents / self.scaling_factor).sample  # [B, 3, H, W] in [-1, 1]
        return (image / 2 + 0.5).clamp(0, 1)
