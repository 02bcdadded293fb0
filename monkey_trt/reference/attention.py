"""MONKEY's IP-Adapter cross-attention for the PyTorch reference and the ONNX exporter.

Same math as diffusers' `IPAdapterAttnProcessor2_0` + `IPAdapterMaskProcessor` with N images of one adapter
(image n's T tokens are rows n*T .. n*T+T-1 of `ip_tokens`; one softmax per image over its own tokens):

    out = text_attn + scale * sum_n (ip_attn_n * plane_n_at_this_grid)

plus, at the mask layer, the map docs/method.md defines ("Pass 1: the mask") (note: no 1/sqrt(head_dim) in the map),
one softmax per image too:

    ip_attn_map[..., n*T:(n+1)*T] = mean_heads(softmax(q @ k_ip_n^T))      [B, Q, N*T]

N comes from the shapes (`ip_tokens.shape[1] // T`), never from a Python branch on values, so a traced graph
keeps the image axis dynamic; with N = 1 every tensor op is today's single-image op on the same data.

All per-forward inputs (IP tokens, per-layer scales, per-level masks) live in one `IPContext`
shared by the 16 processors, so a traced graph sees them as tensors (no Python branching on
tensor values). In eager mode a Python scale of 0 skips the IP branch, exactly like diffusers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class IPContext:
    """What every IP layer reads during one UNet forward."""

    ip_tokens: torch.Tensor | None = None  # [B, N*T, D]: N images of T tokens each
    scales: Sequence[float] | torch.Tensor = ()  # [n_ip_layers]: python floats (eager) or a tensor (export)
    masks: dict[int, torch.Tensor] | None = None  # level -> [B, N, Q_level, 1] per-image planes; None = unmasked
    map_layer: int | None = None  # index of the IP layer whose map is recorded (None: no map)
    attn_map: torch.Tensor | None = field(default=None, repr=False)  # [B, Q, N*T], written by the mask layer
    n_ip_tokens: int = 4  # T: tokens per IP image (the IP projection's num_image_text_embeds)


def ip_layer_names(unet) -> list[str]:
    """Cross-attention (attn2) layers in `unet.attn_processors` order: IP weight key 2*i+1 is layer i."""
    return [n[: -len(".processor")] for n in unet.attn_processors if n.endswith("attn2.processor")]


def layer_level(name: str, n_blocks: int) -> int:
    """How many times the latent grid was halved at this layer (down i -> i, mid -> n-1, up j -> n-1-j)."""
    if m := re.match(r"down_blocks\.(\d+)\.", name):
        return int(m.group(1))
    if name.startswith("mid_block."):
        return n_blocks - 1
    if m := re.match(r"up_blocks\.(\d+)\.", name):
        return n_blocks - 1 - int(m.group(1))
    raise ValueError(f"cannot place attention layer {name!r} in the UNet")


def level_grids(latent_h: int, latent_w: int, n_levels: int) -> list[tuple[int, int]]:
    """Query grid per level: stride-2 convs (pad 1) map a side s to ceil(s / 2)."""
    grids = [(latent_h, latent_w)]
    for _ in range(n_levels - 1):
        h, w = grids[-1]
        grids.append((-(-h // 2), -(-w // 2)))
    return grids


def downsample_mask(mask: torch.Tensor, grid: tuple[int, int] | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """[B, N, H, W] pixel planes (one per IP image) -> [B, N, gh*gw, 1], each bicubic like
    IPAdapterMaskProcessor.downsample (channels are resized independently)."""
    small = F.interpolate(mask, size=grid, mode="bicubic", align_corners=False)  # [B, N, gh, gw]
    return small.flatten(2).unsqueeze(-1)


class MonkeyIPAttnProcessor(nn.Module):
    """IP-Adapter attention for one attn2 layer; `to_k_ip`/`to_v_ip` hold the adapter weights."""

    def __init__(self, hidden_size: int, cross_attention_dim: int, index: int, level: int, ctx: IPContext):
        super().__init__()
        self.to_k_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.index, self.level = index, level
        self.ctx = ctx

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        residual = hidden_states
        batch_size = hidden_states.shape[0]  # hidden_states: [B, Q, C]
        ctx = self.ctx

        # Text cross-attention, as AttnProcessor2_0 (SD1.5 attn2 has no norms, masks or 4-D input).
        query = attn.to_q(hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        q = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # [B, h, Q, d]
        k = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # [B, h, 77, d]
        v = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)  # [B, Q, C]

        scale = ctx.scales[self.index]
        want_map = ctx.map_layer == self.index
        skip_ip = isinstance(scale, (int, float)) and scale == 0 and not want_map
        if not skip_ip:
            tokens = ctx.ip_tokens  # [B, N*T, D]
            T = ctx.n_ip_tokens
            k_ip = self.to_k_ip(tokens)  # [B, N*T, C]
            if want_map:
                ip_k = k_ip.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # [B, h, N*T, d]
                ctx.attn_map = self._map(attn, hidden_states, q, ip_k, batch_size, head_dim)  # [B, Q, N*T]
            if not (isinstance(scale, (int, float)) and scale == 0):
                # one attention per image: the images go to the batch axis, [B*N, h, T, d], against q repeated per image
                n_img = tokens.shape[1] // T
                ip_k = k_ip.view(batch_size * n_img, T, attn.heads, head_dim).transpose(1, 2)  # [B*N, h, T, d]
                ip_v = self.to_v_ip(tokens).view(batch_size * n_img, T, attn.heads, head_dim).transpose(1, 2)
                q_n = q.unsqueeze(1).expand(-1, n_img, -1, -1, -1).reshape(batch_size * n_img, attn.heads, -1, head_dim)  # [B*N, h, Q, d]
                ip_out = F.scaled_dot_product_attention(q_n, ip_k, ip_v, dropout_p=0.0, is_causal=False)
                ip_out = ip_out.transpose(1, 2).reshape(batch_size, n_img, -1, attn.heads * head_dim)  # [B, N, Q, C]
                if ctx.masks is not None:
                    ip_out = ip_out * ctx.masks[self.level]  # [B, N, Q, 1]: each image's plane
                out = out + scale * ip_out.sum(dim=1)  # [B, Q, C]: the images' outputs added

        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


    def _map(self, attn, hidden_states, q, ip_k, batch_size: int, head_dim: int) -> torch.Tensor:
        """softmax(Q K_ip^T) without the 1/sqrt(d) factor, one softmax per image over its own T tokens, mean over
        heads -> [B, Q, N*T] (docs/method.md).

        Always in fp32, like the fp16 ONNX graphs keep it: unscaled logits over SD1.5's head dim of 40
        leave fp16's range and precision, and the thresholded mask then moves. On an fp32 model this is
        exactly `q @ ip_k^T` on the tensors above (nothing recomputed, so the fp32 export is unchanged).
        """
        if q.dtype != torch.float32:
            q = F.linear(hidden_states.float(), attn.to_q.weight.float(),
                         None if attn.to_q.bias is None else attn.to_q.bias.float())
            q = q.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # [B, h, Q, d] fp32
            ip_k = F.linear(self.ctx.ip_tokens.float(), self.to_k_ip.weight.float())
            ip_k = ip_k.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # [B, h, N*T, d] fp32
        logits = q @ ip_k.transpose(-1, -2)  # [B, h, Q, N*T]
        T = self.ctx.n_ip_tokens
        per_image = logits.view(batch_size, attn.heads, logits.shape[2], -1, T)  # [B, h, Q, N, T]
        probs = torch.softmax(per_image, dim=-1).view(logits.shape)  # [B, h, Q, N*T]
        return probs.mean(dim=1)


def install_ip_processors(unet, ip_state_dict: dict[str, torch.Tensor], n_ip_tokens: int = 4) -> tuple[IPContext, list[str]]:
    """Replace every attn2 processor by a MonkeyIPAttnProcessor carrying the adapter's weights.

    ip_state_dict: the adapter file's `ip_adapter` part: "{2*i+1}.to_k_ip.weight" / "...to_v_ip.weight".
    n_ip_tokens: T, the tokens one IP image becomes. Returns the shared context and the IP layer names (scale order).
    """
    ctx = IPContext(n_ip_tokens=n_ip_tokens)
    names = ip_layer_names(unet)
    n_blocks = len(unet.config.block_out_channels)
    modules = dict(unet.named_modules())
    procs = {}
    for name, proc in unet.attn_processors.items():
        layer = name[: -len(".processor")]
        if layer not in names:
            procs[name] = proc
            continue
        i = names.index(layer)
        attn = modules[layer]
        p = MonkeyIPAttnProcessor(
            hidden_size=attn.to_q.out_features,
            cross_attention_dim=attn.to_k.in_features,
            index=i,
            level=layer_level(layer, n_blocks),
            ctx=ctx,
        )
        key = 2 * i + 1
        p.to_k_ip.weight.data.copy_(ip_state_dict[f"{key}.to_k_ip.weight"])
        p.to_v_ip.weight.data.copy_(ip_state_dict[f"{key}.to_v_ip.weight"])
        procs[name] = p.to(device=unet.device, dtype=unet.dtype)
    unet.set_attn_processor(procs)
    return ctx, names
