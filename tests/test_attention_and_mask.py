"""MONKEY's masked IP attention vs diffusers' processors; mask extraction vs docs/method.md ("Pass 1: the mask")."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monkey_trt.reference.attention import (
    IPContext,
    MonkeyIPAttnProcessor,
    downsample_mask,
    layer_level,
    level_grids,
)
from monkey_trt.runtime.mask import (
    extract_mask,
    normalized_step_map,
    query_grid,
    upsample_nearest,
)


def make_attention(dim=32, cross=16, heads=4, seed=0):
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(seed)
    return Attention(query_dim=dim, cross_attention_dim=cross, heads=heads, dim_head=dim // heads).eval()


@pytest.mark.parametrize("grid,image", [((8, 8), (64, 64)), ((4, 6), (32, 48)), ((6, 4), (48, 32))])
@pytest.mark.parametrize("scale", [0.0, 0.6, 1.0])
def test_masked_ip_attention_equals_diffusers(grid, image, scale):
    from diffusers.image_processor import IPAdapterMaskProcessor
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    attn = make_attention()
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, grid[0] * grid[1], 32, generator=g)
    text = torch.randn(2, 77, 16, generator=g)
    ip = torch.randn(2, 4, 16, generator=g)
    pix_mask = (torch.rand(1, 1, *image, generator=g) > 0.5).float()  # [1, 1, H, W]

    theirs = IPAdapterAttnProcessor2_0(hidden_size=32, cross_attention_dim=16, num_tokens=(4,), scale=scale)
    torch.nn.init.normal_(theirs.to_k_ip[0].weight, generator=g)
    torch.nn.init.normal_(theirs.to_v_ip[0].weight, generator=g)
    ctx = IPContext(ip_tokens=ip, scales=[scale], masks={0: downsample_mask(pix_mask.expand(2, -1, -1, -1), grid)})
    ours = MonkeyIPAttnProcessor(32, 16, index=0, level=0, ctx=ctx)
    ours.to_k_ip.weight.data.copy_(theirs.to_k_ip[0].weight)
    ours.to_v_ip.weight.data.copy_(theirs.to_v_ip[0].weight)

    with torch.no_grad():
        ip_mask = IPAdapterMaskProcessor().preprocess(pix_mask[0], height=image[0], width=image[1])  # [1, 1, H, W]
        attn.set_processor(theirs)
        want = attn(hidden, encoder_hidden_states=(text, [ip[:, None]]), ip_adapter_masks=[ip_mask])
        attn.set_processor(ours)
        got = attn(hidden, encoder_hidden_states=text)
        ctx.masks = None  # unmasked: plain IP-Adapter
        got_plain = attn(hidden, encoder_hidden_states=text)
        attn.set_processor(theirs)
        want_plain = attn(hidden, encoder_hidden_states=(text, [ip[:, None]]))
    assert torch.allclose(got, want, atol=1e-6, rtol=0)
    assert torch.allclose(got_plain, want_plain, atol=1e-6, rtol=0)


def test_map_is_unscaled_head_mean_softmax():
    attn = make_attention()
    g = torch.Generator().manual_seed(2)
    hidden, text, ip = torch.randn(1, 24, 32, generator=g), torch.randn(1, 77, 16, generator=g), torch.randn(1, 4, 16, generator=g)
    ctx = IPContext(ip_tokens=ip, scales=[1.0], map_layer=0)
    proc = MonkeyIPAttnProcessor(32, 16, index=0, level=0, ctx=ctx)
    attn.set_processor(proc)
    with torch.no_grad():
        attn(hidden, encoder_hidden_states=text)
        q = attn.to_q(hidden).view(1, -1, 4, 8).transpose(1, 2)
        k = proc.to_k_ip(ip).view(1, -1, 4, 8).transpose(1, 2)
        want = torch.softmax(q @ k.transpose(-1, -2), dim=-1).mean(1)  # no 1/sqrt(8)
        scaled = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1).mean(1)
    assert ctx.attn_map.shape == (1, 24, 4)
    assert torch.equal(ctx.attn_map, want)
    assert not torch.allclose(ctx.attn_map, scaled)



def test_fp16_model_computes_the_mask_map_in_fp32():
    """SD1.5's head dim is 40 and the map's logits are unscaled: fp16 logits lose the precision the
    threshold needs. Weights and inputs exactly representable in fp16, so the fp32 model sees the same
    numbers: the fp16 model's map must then be the fp32 map (fp32 arithmetic), and its mask the same."""
    heads, head_dim, cross = 8, 40, 64
    g = torch.Generator().manual_seed(4)
    fp16_exact = lambda t: t.half().float()  # noqa: E731
    hidden = fp16_exact(8.0 * torch.randn(1, 16 * 16, heads * head_dim, generator=g))  # [B, Q, C]
    text, ip = fp16_exact(torch.randn(1, 77, cross, generator=g)), fp16_exact(8.0 * torch.randn(1, 4, cross, generator=g))
    k_ip, v_ip = (fp16_exact(torch.randn(heads * head_dim, cross, generator=g) / 8) for _ in range(2))
    maps = {}
    for dtype in (torch.float32, torch.float16):
        attn = make_attention(dim=heads * head_dim, cross=cross, heads=heads, seed=3)
        for prm in attn.parameters():
            prm.data = fp16_exact(prm.data)
        attn = attn.to(dtype)
        ctx = IPContext(ip_tokens=ip.to(dtype), scales=[1.0], map_layer=0)
        proc = MonkeyIPAttnProcessor(heads * head_dim, cross, index=0, level=0, ctx=ctx).to(dtype)
        proc.to_k_ip.weight.data.copy_(k_ip.to(dtype))
        proc.to_v_ip.weight.data.copy_(v_ip.to(dtype))
        attn.set_processor(proc)
        with torch.no_grad():
            attn(hidden.to(dtype), encoder_hidden_states=text.to(dtype))
        maps[dtype] = ctx.attn_map
    full, half = maps[torch.float32].float().numpy(), maps[torch.float16].float().numpy()
    assert np.abs(full - half).max() < 1e-5  # fp16 logits: ~5e-3
    m32, m16 = (extract_mask({0: m}, 128, 128, 1, 0.5).mask for m in (full[0], half[0]))
    assert np.array_equal(m32, m16)
    assert maps[torch.float16].dtype == torch.float32


def test_layer_levels_and_grids():
    assert layer_level("down_blocks.0.attentions.1.transformer_blocks.0.attn2", 4) == 0
    assert layer_level("mid_block.attentions.0.transformer_blocks.0.attn2", 4) == 3
    assert layer_level("up_blocks.1.attentions.1.transformer_blocks.0.attn2", 4) == 2
    assert level_grids(64, 64, 4) == [(64, 64), (32, 32), (16, 16), (8, 8)]
    assert level_grids(10, 14, 4) == [(10, 14), (5, 7), (3, 4), (2, 2)]


def test_bicubic_downsample_matches_ipadapter_mask_processor():
    from diffusers.image_processor import IPAdapterMaskProcessor

    mask = (torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(3)) > 0.5).float()  # 3 images' planes
    for side in (64, 32, 16, 8):
        ours = downsample_mask(mask, (side, side))
        assert ours.shape == (1, 3, side * side, 1)
        for n in range(3):  # each image's plane resized on its own, as diffusers resizes each image's mask
            theirs = IPAdapterMaskProcessor.downsample(mask[:, n], 1, side * side, 1)  # [1, Q, 1]
            assert torch.equal(ours[:, n], theirs)


# -- mask extraction (numpy, shared by every backend) -----------------------------------------
def spec_mask_torch(maps, grid, token, thr, h, w):
    total = torch.zeros(grid)
    for m in maps:
        col = torch.from_numpy(m[:, token]).reshape(grid)
        col = (col - col.min()) / (col.max() - col.min())
        col[col < thr] = 0
        total += col
    return (F.interpolate(total[None, None], size=(h, w), mode="nearest")[0, 0] > 0).float().numpy()


@pytest.mark.parametrize("h,w", [(512, 512), (256, 256), (512, 768), (768, 512), (64, 96)])
def test_extract_mask_matches_spec(h, w):
    grid = (-(-h // 32), -(-w // 32))
    rng = np.random.default_rng(h * w)
    maps = {1: rng.random((grid[0] * grid[1], 4), dtype=np.float32), 2: rng.random((grid[0] * grid[1], 4), dtype=np.float32)}
    res = extract_mask(maps, h, w, token=1, threshold=0.5)
    assert res.grid == grid and res.mask.shape == (h, w) and res.mask.dtype == np.float32
    assert np.array_equal(res.mask, spec_mask_torch([maps[1], maps[2]], grid, 1, 0.5, h, w))
    assert not res.degenerate and 0 < res.coverage < 1


def test_query_grid_never_assumes_square():
    assert query_grid(16 * 24, 512, 768) == (16, 24)
    assert query_grid(24 * 16, 768, 512) == (24, 16)
    assert query_grid(2 * 2, 80, 112) == (2, 2)  # ceil-halving of a 10x14 latent
    assert query_grid(6, 48, 72, vae_factor=1000) == (2, 3)  # unknown topology: closest aspect


def test_threshold_edges():
    col = np.array([0.0, 0.25, 0.5, 0.75, 1.0, 0.5], np.float32)
    m = np.stack([col, col, col, col], 1)
    norm, deg = normalized_step_map(m, (2, 3), token=0, threshold=0.5)
    assert not deg
    assert norm.ravel().tolist() == [0.0, 0.0, 0.5, 0.75, 1.0, 0.5]  # exactly 0.5 is kept (< threshold -> 0)
    norm0, _ = normalized_step_map(m, (2, 3), token=0, threshold=0.0)
    assert norm0.ravel().tolist() == col.tolist()


def test_degenerate_maps():
    """All steps constant -> full mask; one constant step is skipped and the others decide."""
    flat = np.full((4, 4), 0.25, np.float32)
    res = extract_mask({1: flat, 2: flat}, 64, 64, token=1, threshold=0.5)
    assert res.degenerate_steps == (1, 2) and res.mask.min() == 1.0
    informative = np.eye(4, dtype=np.float32)  # column 1 peaks at query 1 only
    one = extract_mask({1: flat, 2: informative}, 64, 64, token=1, threshold=0.5)
    alone = extract_mask({2: informative}, 64, 64, token=1, threshold=0.5)
    assert one.degenerate_steps == (1,) and np.array_equal(one.mask, alone.mask) and 0 < one.coverage < 1


def test_non_finite_map_is_an_error():
    bad = np.full((4, 4), np.nan, np.float32)
    with pytest.raises(FloatingPointError):
        extract_mask({1: bad}, 64, 64, token=1, threshold=0.5)


def test_upsample_nearest_matches_torch():
    x = np.random.default_rng(0).random((3, 5)).astype(np.float32)
    for h, w in ((96, 160), (7, 11), (3, 5), (64, 100)):
        want = F.interpolate(torch.from_numpy(x)[None, None], size=(h, w), mode="nearest")[0, 0].numpy()
        assert np.array_equal(upsample_nearest(x, h, w), want)
