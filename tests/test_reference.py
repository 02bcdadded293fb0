"""The PyTorch reference against an independent MONKEY built on diffusers' own pipeline and loader."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from monkey_trt.cli import main
from monkey_trt.core.config import MonkeyConfig, Request
from monkey_trt.reference.pipeline import (
    ReferencePipeline,
    lcm_schedule,
    torch_noise_plan,
)
from monkey_trt.runtime.method import run_pass
from monkey_trt.runtime.noise import save_noise_file
from tests.diffusers_monkey import (
    diffusers_ip_adapter,
    diffusers_monkey,
    image_embeds,
    load_diffusers_pipeline,
)

PROMPTS = ["a toy on the beach", "a toy in the jungle", "a toy on top of a wooden floor"]


@pytest.fixture(scope="module")
def diffusers_pipe(tiny_model_dir):
    return load_diffusers_pipeline(tiny_model_dir / "base", tiny_model_dir / "ip-adapter")


def generate_cli(tiny_model_dir, out, prompt, seed, height=64, width=64, extra=()):
    argv = ["generate", "--image", str(tiny_model_dir / "subject.png"), "--prompt", prompt, "--out", str(out),
            "--base", str(tiny_model_dir / "base"), "--ip-adapter", str(tiny_model_dir / "ip-adapter"),
            *(("--seed", str(seed)) if seed is not None else ()), "--height", str(height), "--width", str(width), "--backend", "torch", "--save-arrays", *extra]
    assert main(argv) == 0
    return np.load(out / "arrays.npz"), json.loads((out / "result.json").read_text())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_generate_matches_independent_diffusers_monkey(tiny_model_dir, tmp_path, diffusers_pipe, subject, seed, prompt):
    arrays, record = generate_cli(tiny_model_dir, tmp_path / "out", prompt, seed)
    pipe, encoder = diffusers_pipe
    image, mask, _ = diffusers_monkey(pipe, image_embeds(encoder, subject), prompt, seed, 64, 64)
    assert np.array_equal(arrays["mask"], mask)
    assert 0 < mask.mean() < 1, "the tiny model's demo subject must give a mask neither empty nor full"
    assert np.abs(arrays["image"] - image).max() <= 1e-4
    assert record["seed"] == seed and record["config"] == MonkeyConfig().to_dict()
    assert {"monkey.png", "mask.png", "overlay.png", "result.json", "arrays.npz"} <= {p.name for p in (tmp_path / "out").iterdir()}
    png_mask = np.asarray(Image.open(tmp_path / "out" / "mask.png"))
    assert png_mask.shape == (64, 64) and set(np.unique(png_mask)) <= {0, 255}


def test_non_square_and_other_knobs_match(tiny_model_dir, diffusers_pipe, subject, reference):
    cfg = MonkeyConfig(mask_steps=(0, 1, 2), mask_token=2, threshold=0.3, masked_steps=(1, 2, 3), scale_final=0.8)
    out = reference(Request("a toy in the snow", height=64, width=96, seed=5, config=cfg), subject)
    pipe, encoder = diffusers_pipe
    knobs = {"mask_steps": cfg.mask_steps, "mask_token": 2, "threshold": 0.3, "masked_steps": cfg.masked_steps, "scale_final": 0.8}
    image, mask, _ = diffusers_monkey(pipe, image_embeds(encoder, subject), "a toy in the snow", 5, 64, 96, knobs)
    assert out.mask.grid == (2, 3)
    assert np.array_equal(out.mask.mask, mask)
    assert np.abs(out.image - image).max() <= 1e-4


def test_baseline_equals_diffusers_ip_adapter(tiny_model_dir, tmp_path, diffusers_pipe, subject):
    arrays, record = generate_cli(tiny_model_dir, tmp_path / "out", PROMPTS[0], 3, extra=("--baseline", "--baseline-scale", "0.7"))
    pipe, encoder = diffusers_pipe
    base = diffusers_ip_adapter(pipe, image_embeds(encoder, subject), PROMPTS[0], 3, 64, 64, scale=0.7)
    assert np.abs(arrays["baseline"] - base).max() <= 1e-4
    assert (tmp_path / "out" / "grid.png").is_file() and (tmp_path / "out" / "ipadapter.png").is_file()
    assert Image.open(tmp_path / "out" / "grid.png").size[0] >= 4 * 64


def test_noise_file_equals_seed(tiny_model_dir, tmp_path, reference, subject):
    req = Request(PROMPTS[1], 64, 64, seed=11)
    plan = torch_noise_plan(11, req.latent_shape(reference.dims), 8)
    save_noise_file(tmp_path / "noise.npz", plan)
    a, rec = generate_cli(tiny_model_dir, tmp_path / "a", PROMPTS[1], 11)
    b, rec_b = generate_cli(tiny_model_dir, tmp_path / "b", PROMPTS[1], None, extra=("--noise", str(tmp_path / "noise.npz")))
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["mask"], b["mask"])
    assert rec_b["seed"] is None and rec_b["noise_file"]["sha256"] == hashlib.sha256((tmp_path / "noise.npz").read_bytes()).hexdigest()


def test_degenerate_map_gives_full_mask_and_is_recorded(reference, subject):
    """Zero K_ip at the mask layer -> uniform softmax -> constant map -> full mask, warned and recorded."""
    m = reference.m
    layer = m.ip_layers.index(MonkeyConfig().mask_layer)
    proc = m.unet.attn_processors[m.ip_layers[layer] + ".processor"]
    saved = proc.to_k_ip.weight.detach().clone()
    try:
        proc.to_k_ip.weight.data.zero_()
        req = Request(PROMPTS[0], 64, 64, seed=0)
        out = reference(req, subject)
        assert out.mask.degenerate and out.mask.degenerate_steps == (1, 2)
        assert out.mask.mask.min() == 1.0
        assert any("constant" in w for w in out.warnings)
        # A full mask is plain IP-Adapter at the masked steps.
        text, _ = reference.encode_prompt(req.prompt)
        ip = reference.encode_subject(subject)
        plain, _ = run_pass(reference, text, ip, reference.guidance(8.5), reference.noise_for(req), 8, MonkeyConfig().final_scales())
        assert np.abs(reference.decode(plain) - out.image).max() <= 1e-5
    finally:
        proc.to_k_ip.weight.data.copy_(saved)


def test_mask_pass_stops_early_without_changing_the_mask(reference, subject):
    """The method stops pass 1 after its last mask step; a full 4-step pass 1 gives the same mask."""
    from monkey_trt.runtime.mask import extract_mask

    req = Request(PROMPTS[2], 64, 64, seed=4)
    out = reference(req, subject)
    assert out.timings["mask_pass"] > 0
    text, _ = reference.encode_prompt(req.prompt)
    ip = reference.encode_subject(subject)
    _, maps_full = run_pass(reference, text, ip, reference.guidance(8.5), reference.noise_for(req), 4, [1.0] * 4, map_steps=(1, 2))
    full = extract_mask(maps_full, 64, 64, token=1, threshold=0.5)
    assert np.array_equal(full.mask, out.mask.mask)


def test_lcm_step_matches_diffusers_scheduler(tiny_model_dir):
    """The numpy LCM step the method uses, with torch's coefficient table, equals diffusers' step bit for bit."""
    from diffusers import LCMScheduler

    sched = LCMScheduler.from_pretrained(tiny_model_dir / "base", subfolder="scheduler")
    schedule = lcm_schedule(sched)
    for steps in (4, 8):
        sched.set_timesteps(steps)
        ts = sched.timesteps.clone()
        g = torch.Generator().manual_seed(steps)
        sample = torch.randn(1, 4, 8, 8, generator=g)
        ours = sample.numpy().copy()
        for i, t in enumerate(ts):
            eps = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(100 + i))
            g_state = g.get_state()
            sample, denoised = sched.step(eps, t, sample, generator=g, return_dict=False)
            g2 = torch.Generator()
            g2.set_state(g_state)
            noise = torch.randn(1, 4, 8, 8, generator=g2) if i < steps - 1 else None
            assert np.array_equal(schedule.timesteps(steps), ts.numpy())
            ours, ours_denoised = schedule.step(eps.numpy(), i, ts.numpy(), ours, None if noise is None else noise.numpy())
            assert np.array_equal(ours, sample.numpy()) and np.array_equal(ours_denoised, denoised.numpy())
    assert sched.timesteps.tolist() == [999, 879, 759, 639, 499, 379, 259, 139]


def test_bin_ip_adapter_weights_load_like_safetensors(tiny_model_dir, tmp_path, reference, subject):
    """h94 ships `.bin` too: a nested {"image_proj", "ip_adapter"} dict, loaded with weights_only=True."""
    import shutil

    from safetensors.torch import load_file

    ip_dir = tmp_path / "ip-bin"
    shutil.copytree(tiny_model_dir / "ip-adapter", ip_dir)
    flat = load_file(ip_dir / "models" / "ip-adapter_sd15.safetensors")
    nested = {part: {k[len(part) + 1:]: v for k, v in flat.items() if k.startswith(part + ".")} for part in ("image_proj", "ip_adapter")}
    torch.save(nested, ip_dir / "models" / "ip-adapter_sd15.bin")
    (ip_dir / "models" / "ip-adapter_sd15.safetensors").unlink()
    from_bin = ReferencePipeline.from_pretrained(str(tiny_model_dir / "base"), str(ip_dir))
    req = Request(PROMPTS[0], 64, 64, seed=2)
    a, b = reference(req, subject), from_bin(req, subject)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask.mask, b.mask.mask)


def test_hub_ids_fetch_only_what_is_needed(monkeypatch, tmp_path):
    """Real-weights path: one weight format per component (no fp16 variants), safetensors preferred."""
    import huggingface_hub

    from monkey_trt.reference import loading

    files = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
             "unet/diffusion_pytorch_model.fp16.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.bin",
             "safety_checker/model.safetensors", "models/ip-adapter_sd15.bin", "models/ip-adapter_sd15.safetensors",
             "models/image_encoder/config.json", "models/image_encoder/model.safetensors", "models/ip-adapter-plus_sd15.bin"]
    asked = {}

    def snapshot_download(repo_id, allow_patterns=None, local_files_only=False):
        asked[repo_id] = allow_patterns
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo_id: files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(loading, "hub_unreachable", lambda: None)  # the tests run with HF_HUB_OFFLINE=1
    loading.resolve_repo("owner/base", ("unet/", "vae/"), extra=(("model_index.json",),))
    assert sorted(asked["owner/base"]) == ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                                           "vae/config.json", "vae/diffusion_pytorch_model.bin"]
    (tmp_path / "models" / "image_encoder").mkdir(parents=True)
    (tmp_path / "models" / "image_encoder" / "config.json").write_text("{}")
    loading.resolve_ip_adapter("owner/ip", "ip-adapter_sd15")
    assert "models/ip-adapter_sd15.safetensors" in asked["owner/ip"] and "models/ip-adapter_sd15.bin" not in asked["owner/ip"]
    loading.resolve_ip_adapter("owner/ip", "ip-adapter_sd15.bin")
    assert "models/ip-adapter_sd15.bin" in asked["owner/ip"]


def test_unknown_hub_id_offline_is_a_clear_error(monkeypatch):
    import huggingface_hub

    from monkey_trt.core.errors import MonkeyError
    from monkey_trt.reference import loading

    def offline(*a, **k):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", offline)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(MonkeyError, match="not in the Hugging Face cache"):
        loading.resolve_base("someone/missing-model")  # HF_HUB_OFFLINE=1: straight to the cache, no retries
    monkeypatch.setattr(loading, "hub_unreachable", lambda: None)
    with pytest.raises(MonkeyError, match="not cached"):
        loading.resolve_base("someone/missing-model")  # online, but the hub fails
