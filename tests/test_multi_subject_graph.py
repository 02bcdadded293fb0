"""Several IP images per UNet call (issue 22): the reference processor, the exported graph's image axis N, the manifest's
`max_subjects`, and the independent check against diffusers' own multi-image IP-Adapter.

Semantics (docs/method.md, "Several subjects and a background"): image n's T tokens are rows n*T .. n*T+T-1 of
`ip_tokens` [B, N*T, D]; each image attends over its own tokens (one softmax per image), its output times its plane
`ip_mask[:, n]` (resized bicubic per layer), the images' outputs added, times the layer's scale. The map is
[B, Q, N*T], one unscaled softmax per image. With N = 1 all of it is today's single-image math."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monkey_trt.cli import main
from monkey_trt.core.errors import EngineDirError, MonkeyError
from monkey_trt.enginedir.load import check_ranges, load_manifest
from monkey_trt.enginedir.manifest import MANIFEST, Manifest
from monkey_trt.enginedir.networks import MAP_NETWORK, MAP_OUTPUT, MAX_SUBJECTS_DEFAULT, ModelDims, Profile, ShapeRange, network_descs
from monkey_trt.reference.attention import IPContext, MonkeyIPAttnProcessor, downsample_mask

T = 4  # IP tokens per image


def _attention(dim=32, cross=16, heads=4, seed=0):
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(seed)
    return Attention(query_dim=dim, cross_attention_dim=cross, heads=heads, dim_head=dim // heads).eval()


def _processor(ctx: IPContext, seed: int = 5, dim: int = 32, cross: int = 16) -> MonkeyIPAttnProcessor:
    g = torch.Generator().manual_seed(seed)
    proc = MonkeyIPAttnProcessor(dim, cross, index=0, level=0, ctx=ctx)
    torch.nn.init.normal_(proc.to_k_ip.weight, generator=g)
    torch.nn.init.normal_(proc.to_v_ip.weight, generator=g)
    return proc


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# -- the reference processor ---------------------------------------------------------------------------
@pytest.mark.parametrize("n_img", [1, 2, 3])
def test_each_image_attends_over_its_own_tokens_like_a_numpy_computation(n_img):
    """Output and map against float64 numpy: one softmax per image, each output times its plane, summed, times scale."""
    attn, heads, d = _attention(), 4, 8
    g = torch.Generator().manual_seed(7)
    B, Q, scale = 2, 24, 0.7
    hidden, text = torch.randn(B, Q, 32, generator=g), torch.randn(B, 77, 16, generator=g)
    ip = torch.randn(B, n_img * T, 16, generator=g)
    planes = torch.rand(B, n_img, Q, 1, generator=g) * 1.5  # weight x mask, already at this layer's grid
    ctx = IPContext(ip_tokens=ip, scales=[scale], masks={0: planes}, map_layer=0, n_ip_tokens=T)
    proc = _processor(ctx)
    attn.set_processor(proc)
    with torch.no_grad():
        got = attn(hidden, encoder_hidden_states=text).numpy()
    f64 = lambda t: t.detach().double().numpy()  # noqa: E731
    split = lambda x: x.reshape(B, -1, heads, d).transpose(0, 2, 1, 3)  # noqa: E731  [B, h, L, d]
    h, tx, ipx = f64(hidden), f64(text), f64(ip)
    q = split(h @ f64(attn.to_q.weight).T)
    k, v = split(tx @ f64(attn.to_k.weight).T), split(tx @ f64(attn.to_v.weight).T)
    out = (_softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)) @ v).transpose(0, 2, 1, 3).reshape(B, Q, heads * d)
    k_ip, v_ip = split(ipx @ f64(proc.to_k_ip.weight).T), split(ipx @ f64(proc.to_v_ip.weight).T)  # [B, h, N*T, d]
    want_map = np.zeros((B, Q, n_img * T))
    for n in range(n_img):
        rows = slice(n * T, (n + 1) * T)
        logits = q @ k_ip[:, :, rows].transpose(0, 1, 3, 2)  # [B, h, Q, T]
        o = (_softmax(logits / np.sqrt(d)) @ v_ip[:, :, rows]).transpose(0, 2, 1, 3).reshape(B, Q, heads * d)
        out = out + scale * o * f64(planes[:, n])
        want_map[:, :, rows] = _softmax(logits).mean(1)  # no 1/sqrt(d) in the map
    want = out @ f64(attn.to_out[0].weight).T + f64(attn.to_out[0].bias)
    assert ctx.attn_map.shape == (B, Q, n_img * T)
    assert np.abs(got - want).max() < 1e-5
    assert np.abs(ctx.attn_map.numpy() - want_map).max() < 1e-6
    assert np.allclose(ctx.attn_map.numpy().reshape(B, Q, n_img, T).sum(-1), 1.0, atol=1e-6)  # a softmax per image


def test_one_image_is_todays_single_image_math_bit_for_bit():
    """N = 1 computes exactly what the single-image processor computed (its formula, frozen here)."""
    attn, heads, d = _attention(), 4, 8
    g = torch.Generator().manual_seed(8)
    B, Q = 2, 24
    hidden, text, ip = torch.randn(B, Q, 32, generator=g), torch.randn(B, 77, 16, generator=g), torch.randn(B, T, 16, generator=g)
    mask = (torch.rand(B, 1, Q, 1, generator=g) > 0.5).float()  # [B, N=1, Q, 1]
    for scale, masks in ((1.0, None), (0.6, {0: mask})):
        ctx = IPContext(ip_tokens=ip, scales=[scale], masks=masks, map_layer=0, n_ip_tokens=T)
        proc = _processor(ctx)
        attn.set_processor(proc)
        with torch.no_grad():
            got = attn(hidden, encoder_hidden_states=text)
            view = lambda x: x.view(B, -1, heads, d).transpose(1, 2)  # noqa: E731
            q, k, v = view(attn.to_q(hidden)), view(attn.to_k(text)), view(attn.to_v(text))
            out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, -1, heads * d)
            ip_k, ip_v = view(proc.to_k_ip(ip)), view(proc.to_v_ip(ip))
            ip_out = F.scaled_dot_product_attention(q, ip_k, ip_v).transpose(1, 2).reshape(B, -1, heads * d)
            if masks is not None:
                ip_out = ip_out * mask[:, 0]  # today's [B, Q, 1] mask
            want = attn.to_out[0](out + scale * ip_out)
            want_map = torch.softmax(q @ ip_k.transpose(-1, -2), dim=-1).mean(dim=1)
        assert torch.equal(got, want) and torch.equal(ctx.attn_map, want_map)


def test_scale_0_skips_the_ip_branch_in_eager_mode():
    attn = _attention()
    g = torch.Generator().manual_seed(9)
    hidden, text = torch.randn(1, 24, 32, generator=g), torch.randn(1, 77, 16, generator=g)
    ctx = IPContext(ip_tokens=torch.randn(1, 2 * T, 16, generator=g), scales=[0.0], n_ip_tokens=T)
    proc = _processor(ctx)
    calls = []
    proc.to_v_ip.register_forward_hook(lambda *a: calls.append(1))
    attn.set_processor(proc)
    with torch.no_grad():
        got = attn(hidden, encoder_hidden_states=text)
        ctx.ip_tokens = None  # never read at scale 0
        assert torch.equal(attn(hidden, encoder_hidden_states=text), got)
    assert calls == []


def test_masked_images_equal_diffusers_ip_adapter_with_several_images_and_masks():
    """diffusers' IPAdapterAttnProcessor2_0, one adapter with 3 images [B, 3, T, D] and per-image masks [1, 3, H, W],
    per-image scales: the same layer output as ours with planes = scale_n x mask_n."""
    from diffusers.image_processor import IPAdapterMaskProcessor
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    attn = _attention()
    g = torch.Generator().manual_seed(10)
    grid, image, weights = (8, 8), (64, 64), [0.5, 1.0, 1.3]
    hidden, text = torch.randn(1, 64, 32, generator=g), torch.randn(1, 77, 16, generator=g)
    ip = torch.randn(1, 3, T, 16, generator=g)
    masks = (torch.rand(1, 3, *image, generator=g) > 0.5).float()
    theirs = IPAdapterAttnProcessor2_0(hidden_size=32, cross_attention_dim=16, num_tokens=(T,), scale=[weights])
    planes = masks * torch.tensor(weights)[None, :, None, None]  # [1, 3, H, W]
    ctx = IPContext(ip_tokens=ip.reshape(1, 3 * T, 16), scales=[1.0], masks={0: downsample_mask(planes, grid)}, n_ip_tokens=T)
    ours = _processor(ctx)
    theirs.to_k_ip[0].weight.data.copy_(ours.to_k_ip.weight)
    theirs.to_v_ip[0].weight.data.copy_(ours.to_v_ip.weight)
    with torch.no_grad():
        attn.set_processor(theirs)
        want = attn(hidden, encoder_hidden_states=(text, [ip]), ip_adapter_masks=[masks])
        attn.set_processor(ours)
        got = attn(hidden, encoder_hidden_states=text)
    assert IPAdapterMaskProcessor is not None and torch.allclose(got, want, atol=1e-6, rtol=0)


# -- the exported graph -----------------------------------------------------------------------------------
def _feeds(m: Manifest, batch: int, height: int, width: int, n_img: int, seed: int) -> dict[str, np.ndarray]:
    d, g = m.dims, np.random.default_rng(seed)
    return {
        "sample": g.standard_normal((batch, d.latent_channels, height // 8, width // 8)).astype(np.float32),
        "timestep": np.full((batch,), 759.0, np.float32),
        "encoder_hidden_states": g.standard_normal((batch, d.text_len, d.text_dim)).astype(np.float32),
        "timestep_cond": g.standard_normal((batch, d.time_cond_dim)).astype(np.float32),
        "ip_tokens": g.standard_normal((batch, n_img * d.n_ip_tokens, d.text_dim)).astype(np.float32),
        "ip_scale": g.uniform(0.0, 1.5, (d.n_ip_layers,)).astype(np.float32),
        "ip_mask": ((g.random((batch, n_img, height, width)) > 0.5) * g.uniform(0.5, 1.5, (batch, n_img, 1, 1))).astype(np.float32),
    }


def test_the_unet_graphs_have_a_dynamic_image_axis_and_the_manifest_its_limit(engine_dir):
    import onnx

    m = load_manifest(engine_dir)
    assert m.max_subjects == MAX_SUBJECTS_DEFAULT == 4 and m.max_ip_images == 5 and m.background_slot
    assert json.loads((engine_dir / MANIFEST).read_text())["max_subjects"] == 4
    for net in ("unet", MAP_NETWORK):
        for p in ("fp32", "fp16"):
            graph = onnx.load(str(engine_dir / m.networks[net].files(p)[0]), load_external_data=False).graph
            dims = {v.name: [x.dim_param or x.dim_value for x in v.type.tensor_type.shape.dim] for v in (*graph.input, *graph.output)}
            assert dims["ip_tokens"][:2] == ["B", "NT"] and dims["ip_mask"] == ["B", "N", "H", "W"], (net, p)
            assert dims[MAP_OUTPUT] == ["B", "Q", "NT"]
    shapes = m.networks["unet"].desc.profile_shapes(m.profile, m.dims, m.max_ip_images)
    d = m.dims.text_dim
    assert shapes["ip_tokens"] == ((1, 4, d), (1, 4, d), (2, 20, d))  # T .. T*(max_subjects+1), opt one image
    assert shapes["ip_mask"] == ((1, 1, 64, 64), (1, 1, 64, 64), (2, 5, 128, 128))


def test_ort_runs_every_image_count_of_the_profile_and_the_map_only_graph_keeps_the_map_bits(engine_dir):
    """N = 1..max_subjects+1 on the runtime's own runners (their profile: one more is refused); the map-only graph's map
    is the full graph's bit for bit at N = 1 and 3 (fp32 and fp16)."""
    from monkey_trt.runtime.backend import BackendSpec
    from monkey_trt.runtime.pipeline import open_runners

    m = load_manifest(engine_dir)
    for precision in ("fp32", "fp16"):
        runners = open_runners(engine_dir, m, BackendSpec(backend="ort", precision=precision, threads=1), ("unet", MAP_NETWORK))
        try:
            for n_img in range(1, m.max_ip_images + 1):
                feeds = _feeds(m, 2, 64, 72, n_img, seed=n_img)
                out = runners["unet"].infer(feeds)
                assert out["noise_pred"].shape == (2, 4, 8, 9) and np.isfinite(out["noise_pred"]).all()
                amap = out[MAP_OUTPUT]
                assert amap.shape == (2, 2 * 3, n_img * T)  # Q = 2 x 3 at the mask layer for 8 x 9 latents
                assert np.allclose(amap.reshape(2, -1, n_img, T).sum(-1), 1.0, atol=1e-5)  # fp16 too: the map path is fp32
                if n_img in (1, 3):
                    cut = runners[MAP_NETWORK].infer(feeds, outputs=(MAP_OUTPUT,))[MAP_OUTPUT]
                    assert np.array_equal(amap.view(np.uint32), cut.view(np.uint32)), f"{precision} N={n_img}: map bits differ"
            with pytest.raises(MonkeyError, match="outside the engine profile"):
                runners["unet"].infer(_feeds(m, 1, 64, 64, m.max_ip_images + 1, seed=0))
        finally:
            for r in runners.values():
                r.deactivate()


def test_the_exported_graph_equals_the_reference_with_several_images(engine_dir, reference):
    """Three images, one sample unmasked (planes of ones) and one with weighted planes: ONNX (ORT CPU) vs torch."""
    import onnxruntime as ort

    m = load_manifest(engine_dir)
    d, g = reference.dims, torch.Generator().manual_seed(11)
    reference.map_layer = reference.m.ip_layers.index(m.mask_layer)
    text, cond = torch.randn(1, 77, d.text_dim, generator=g), torch.randn(1, d.time_cond_dim, generator=g)
    tokens = torch.randn(1, 3 * T, d.text_dim, generator=g)
    rng = np.random.default_rng(3)
    planes = ((rng.random((3, 64, 80)) > 0.5) * np.array([0.4, 1.0, 1.7])[:, None, None]).astype(np.float32)
    latents = rng.standard_normal((2, 4, 8, 10)).astype(np.float32)
    eps, amap = reference.unet_session(text, tokens, cond, [None, planes])(latents, np.array([759, 499]), 0.8, True)
    sess = ort.InferenceSession(str(engine_dir / "unet.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"sample": latents, "timestep": np.array([759, 499], np.float32),
             "encoder_hidden_states": np.repeat(text.numpy(), 2, 0), "timestep_cond": np.repeat(cond.numpy(), 2, 0),
             "ip_tokens": np.repeat(tokens.numpy(), 2, 0), "ip_scale": np.full(d.n_ip_layers, 0.8, np.float32),
             "ip_mask": np.stack([np.ones_like(planes), planes])}
    got_eps, got_map = sess.run(None, feeds)
    assert amap.shape == got_map.shape == (2, 6, 12)
    assert np.abs(got_eps - eps).max() < 1e-5 and np.abs(got_map - amap).max() < 1e-5  # ORT vs torch (old vs new graph: bit-equal)


def test_the_fp16_graphs_keep_fp32_values_between_fp32_nodes(engine_dir):
    """No Cast(to fp16) -> Cast(to fp32) round trip: the converter alone rounded every value between two fp32-island
    nodes (the map path's logits and softmax included) to fp16 (export/fp16.collapse_round_trips)."""
    import onnx
    from onnx import TensorProto

    m = load_manifest(engine_dir)
    for net in ("unet", MAP_NETWORK):
        graph = onnx.load(str(engine_dir / m.networks[net].files("fp16")[0]), load_external_data=False).graph
        to = {n.output[0]: next(a.i for a in n.attribute if a.name == "to") for n in graph.node if n.op_type == "Cast"}
        trips = [n.name for n in graph.node if n.op_type == "Cast" and to[n.output[0]] == TensorProto.FLOAT
                 and to.get(n.input[0]) == TensorProto.FLOAT16]
        assert trips == [], f"{net}: {trips[:3]}"
        assert any(v == TensorProto.FLOAT16 for v in to.values())  # an fp16 graph still


# -- the manifest and the export option ------------------------------------------------------------------
def _old_style(raw: dict) -> dict:
    """A manifest as exported before the image axis: no max_subjects, the UNet's ip inputs of one image."""
    raw = json.loads(json.dumps(raw))
    raw.pop("max_subjects")
    n_tokens = raw["dims"]["n_ip_tokens"]
    for net in ("unet", MAP_NETWORK):
        for t in (*raw["networks"][net]["inputs"], *raw["networks"][net]["outputs"]):
            if t["name"] == "ip_mask":
                t["shape"][1] = 1
            elif t["name"] in ("ip_tokens", MAP_OUTPUT):
                t["shape"][-1 if t["name"] == MAP_OUTPUT else 1] = n_tokens
    return raw


def test_a_manifest_from_before_the_image_axis_means_one_subject_and_no_background(engine_dir):
    m = Manifest.from_json(_old_style(json.loads((engine_dir / MANIFEST).read_text())))
    assert (m.max_subjects, m.max_ip_images, m.background_slot) == (1, 1, False)
    shapes = m.networks["unet"].desc.profile_shapes(m.profile, m.dims, m.max_ip_images)
    assert [s[1] for s in shapes["ip_mask"]] == [1, 1, 1] and [s[1] for s in shapes["ip_tokens"]] == [4, 4, 4]
    assert "--max-subjects" not in m.export_command(engine_dir, "fp16")
    assert "--max-subjects 4" in load_manifest(engine_dir).export_command(engine_dir, "fp16")
    lying = Manifest(**{**m.__dict__, "max_subjects": 3})  # claims 3 subjects for a one-image UNet
    with pytest.raises(EngineDirError, match="max_subjects 3 but the UNet takes 1 IP image"):
        check_ranges(lying, engine_dir / MANIFEST)


def test_descriptors_resolve_the_image_axis():
    descs = network_descs(ModelDims(text_dim=32))
    unet = descs["unet"]
    assert descs[MAP_NETWORK].inputs == unet.inputs and descs[MAP_NETWORK].output_names == [MAP_OUTPUT]
    p = Profile(ShapeRange(1, 1, 2), ShapeRange(64, 64, 128), ShapeRange(64, 96, 128))
    shapes = unet.profile_shapes(p, ModelDims(text_dim=32), 7)
    assert shapes["ip_tokens"] == ((1, 4, 32), (1, 4, 32), (2, 28, 32)) and shapes["ip_mask"][2] == (2, 7, 128, 128)
    assert unet.profile_shapes(p, ModelDims(text_dim=32))["ip_mask"][2] == (2, 1, 128, 128)  # default: one image


@pytest.mark.parametrize("k", ["0", "17", "-1", "two"])
def test_export_max_subjects_out_of_range_is_one_line(tiny_model_dir, tmp_path, capsys, k):
    out = tmp_path / "engine"
    code = main(["export", "--base", str(tiny_model_dir / "base"), "--ip-adapter", str(tiny_model_dir / "ip-adapter"),
                 "--out", str(out), "--height", "64", "--width", "64", "--max-subjects", k])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ") and "--max-subjects" in err
    assert not out.exists()
    with pytest.raises(MonkeyError, match="--max-subjects must be an integer in 1..16"):
        from monkey_trt.export.onnx_export import ExportOptions
        from monkey_trt.core.config import ModelSource

        ExportOptions(ModelSource("b", "i"), out, Profile.static(1, 64, 64), max_subjects=int(k) if k.lstrip("-").isdigit() else k)


# -- the independent check: diffusers' own multi-image IP-Adapter with per-image masks ---------------------------
@pytest.fixture(scope="module")
def diffusers_pipe(tiny_model_dir):
    from tests.diffusers_monkey import load_diffusers_pipeline

    return load_diffusers_pipeline(tiny_model_dir / "base", tiny_model_dir / "ip-adapter")


def _two_subjects(subject):
    from PIL import ImageOps

    return [subject, ImageOps.invert(subject)]  # two images with different IP tokens


def _two_masks(h: int, w: int) -> np.ndarray:
    """[2, H, W] {0,1}: two disjoint blobs (MONKEY's final masks never overlap), neither empty."""
    y, x = np.mgrid[:h, :w] / np.array([h, w])[:, None, None]
    left = ((x - 0.3) ** 2 / 0.06 + (y - 0.5) ** 2 / 0.15) < 1
    right = (((x - 0.75) ** 2 / 0.04 + (y - 0.4) ** 2 / 0.09) < 1) & ~left
    return np.stack([left, right]).astype(np.float32)


@torch.no_grad()
def test_one_unet_call_equals_diffusers_with_two_images_and_two_masks(diffusers_pipe, reference, subject):
    """The whole tiny UNet (16 IP layers, every level's resize), fp32: diffusers' UNet with image_embeds [1, 2, E],
    ip_adapter_masks [1, 2, H, W] and per-image scales vs the reference's unet_session with planes = scale x mask."""
    from tests.diffusers_monkey import image_embeds

    pipe, encoder = diffusers_pipe
    subjects, weights, masks = _two_subjects(subject), [0.8, 1.3], _two_masks(64, 64)
    text, _ = reference.encode_prompt("a toy and its negative on the beach")
    w_emb = reference.guidance(8.5)
    tokens = torch.cat([reference.encode_subject(s) for s in subjects], 1)  # [1, 2*T, D]
    latents = np.random.default_rng(4).standard_normal((1, 4, 8, 8)).astype(np.float32)
    planes = masks * np.array(weights, np.float32)[:, None, None]  # [2, H, W]
    eps, _ = reference.unet_session(text, tokens, w_emb, [planes])(latents, np.array([759]), 1.0, False)
    embeds = torch.cat([image_embeds(encoder, s) for s in subjects], 1)  # [1, 2, E]
    procs = [p for p in pipe.unet.attn_processors.values() if hasattr(p, "to_k_ip")]
    try:
        for p in procs:
            p.scale = [list(weights)]  # one adapter, a scale per image
        want = pipe.unet(torch.from_numpy(latents), 759, encoder_hidden_states=text, timestep_cond=w_emb,
                         added_cond_kwargs={"image_embeds": [embeds]},
                         cross_attention_kwargs={"ip_adapter_masks": [torch.from_numpy(masks)[None]]}).sample.numpy()
        pipe.set_ip_adapter_scale(1.0)
        unmasked = pipe.unet(torch.from_numpy(latents), 759, encoder_hidden_states=text, timestep_cond=w_emb,
                             added_cond_kwargs={"image_embeds": [embeds]}).sample.numpy()
    finally:
        pipe.set_ip_adapter_scale(1.0)
    assert np.abs(eps - want).max() < 1e-5
    assert np.abs(eps - unmasked).max() > 1e-3  # the masks matter (the comparison is not vacuous)


@torch.no_grad()
def test_pass_2_with_two_subjects_equals_diffusers_multi_image_ip_adapter(diffusers_pipe, reference, subject):
    """A whole pass 2 (8 LCM steps, IP on with the two masks at steps 2-5, off elsewhere, then the VAE): the reference's
    UNet calls stepped by the runtime's LCM schedule vs diffusers' LCM pipeline with two images and two masks."""
    from tests.diffusers_monkey import image_embeds

    from monkey_trt.reference.pipeline import torch_noise_plan

    pipe, encoder = diffusers_pipe
    subjects, masks, prompt, seed = _two_subjects(subject), _two_masks(64, 64), "a toy and its negative on the beach", 3
    scales = [1.0 if i in (2, 3, 4, 5) else 0.0 for i in range(8)]
    text, _ = reference.encode_prompt(prompt)
    w_emb = reference.guidance(8.5)
    tokens = torch.cat([reference.encode_subject(s) for s in subjects], 1)
    noise = torch_noise_plan(seed, (1, 4, 8, 8), 8)
    call = reference.unet_session(text, tokens, w_emb, [masks])
    timesteps = reference.schedule.timesteps(8)
    latents = noise.latents.copy()
    for i in range(8):
        eps, _ = call(latents, np.array([timesteps[i]]), scales[i], False)
        latents, denoised = reference.schedule.step(eps, i, timesteps, latents, noise.step_noise[i] if i < 7 else None)
    ours = reference.decode(denoised)

    def switch(p, i, t, kwargs):
        if i + 1 < 8:
            p.set_ip_adapter_scale(scales[i + 1])
        return kwargs

    embeds = torch.cat([image_embeds(encoder, s) for s in subjects], 1)  # [1, 2, E]
    try:
        pipe.set_ip_adapter_scale(scales[0])
        theirs = pipe(prompt, ip_adapter_image_embeds=[embeds], num_inference_steps=8, guidance_scale=8.5, height=64, width=64,
                      generator=torch.Generator("cpu").manual_seed(seed), output_type="np", callback_on_step_end=switch,
                      cross_attention_kwargs={"ip_adapter_masks": [torch.from_numpy(masks)[None]]}).images[0]
    finally:
        pipe.set_ip_adapter_scale(1.0)
    assert np.abs(ours - theirs).max() <= 1e-4  # the single-subject reference's tolerance against diffusers (test_reference.py)


def test_adding_a_precision_with_another_max_subjects_is_refused_in_one_line(engine_dir, tiny_model_dir, capsys):
    """The graphs do not depend on K, but the manifest's limit does: another --max-subjects needs --force."""
    before = (engine_dir / MANIFEST).read_bytes()
    code = main(["export", "--base", str(tiny_model_dir / "base"), "--ip-adapter", str(tiny_model_dir / "ip-adapter"),
                 "--out", str(engine_dir), "--height", "64", "--width", "64", "--min", "64x64", "--max", "128x128",
                 "--batch", "2", "--precision", "fp16", "--max-subjects", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--max-subjects: pass --force" in err
    assert (engine_dir / MANIFEST).read_bytes() == before
