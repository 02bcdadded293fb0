"""The embedded model: deterministic bytes, hub layouts, and diffusers/transformers load it as the real repos."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from monkey_trt.core.config import DEFAULT_MASK_LAYER
from monkey_trt.embedded.bpe import (
    SPECIAL_BOS,
    SPECIAL_EOS,
    build_clip_bpe,
    bytes_to_unicode,
)
from monkey_trt.embedded.presets import (
    PRESETS,
    meta_models,
    scheduler_config,
    unet_config,
)
from monkey_trt.embedded.tiny import write_tiny_model
from monkey_trt.embedded.weights import ip_adapter_tensor_specs

IP_WEIGHT = "ip-adapter_sd15.safetensors"
PROMPTS = [
    "a dog on the beach",
    "a toy with the Eiffel Tower in the background",
    "A backpack floating in an ocean of milk",
    "a zebra's café, 42 stripes!!  unseen-words xylophone",
]
# Log lines that would mean our files do not match what the loaders expect.
_BAD_LOAD_MESSAGE = re.compile(
    r"missing|unexpected|were not used|newly initiali|were not initiali|mismatch|not expected|ignored", re.I
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _weight_hashes(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): _sha256(p) for p in sorted(out.rglob("*.safetensors"))}


@contextmanager
def _captured_library_logs():
    """diffusers/transformers loggers do not propagate to pytest's caplog: capture them directly."""
    records: list[logging.LogRecord] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = _Keep(level=logging.WARNING)
    loggers = [logging.getLogger("diffusers"), logging.getLogger("transformers")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield records
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


@pytest.fixture(scope="module")
def pipe(tiny_model_dir: Path):
    """The tiny model loaded exactly as the real repos are (pipeline + IP-Adapter)."""
    from diffusers import LatentConsistencyModelPipeline

    base, ip_dir = tiny_model_dir / "base", tiny_model_dir / "ip-adapter"
    with _captured_library_logs() as records:
        p = LatentConsistencyModelPipeline.from_pretrained(base)
        p.load_ip_adapter(str(ip_dir), subfolder="models", weight_name=IP_WEIGHT, low_cpu_mem_usage=False)
    p.set_progress_bar_config(disable=True)
    p.load_records = records  # inspected by test_loads_without_weight_warnings
    return p


@pytest.fixture(scope="module")
def image_embeds(tiny_model_dir: Path) -> torch.Tensor:
    from transformers import CLIPVisionModelWithProjection

    enc = CLIPVisionModelWithProjection.from_pretrained(tiny_model_dir / "ip-adapter" / "models" / "image_encoder")
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return enc(pixel_values=pixels).image_embeds


# ------------------------------------------------------------------ layout and determinism


def test_layout(tiny_model_dir: Path):
    base, ip_dir = tiny_model_dir / "base", tiny_model_dir / "ip-adapter"
    index = json.loads((base / "model_index.json").read_text())
    assert index["_class_name"] == "LatentConsistencyModelPipeline"
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    for comp in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "feature_extractor"):
        assert comp in index and (base / comp).is_dir()
    for f in ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"):
        assert (base / "tokenizer" / f).is_file()
    assert (base / "tokenizer" / "merges.txt").read_text().startswith("#version: 0.2\n")
    assert (base / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (base / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert (base / "text_encoder" / "model.safetensors").is_file()
    assert (ip_dir / "models" / IP_WEIGHT).is_file()
    assert (ip_dir / "models" / "image_encoder" / "model.safetensors").is_file()

    from PIL import Image

    subject = Image.open(tiny_model_dir / "subject.png")
    assert subject.mode == "RGB" and subject.size == (256, 256)
    assert len(set(subject.getdata())) > 3


def test_scheduler_and_feature_extractor_configs(tiny_model_dir: Path):
    from diffusers import LCMScheduler
    from transformers import CLIPImageProcessor

    sched = LCMScheduler.from_pretrained(tiny_model_dir / "base" / "scheduler")
    cfg = sched.config
    assert (cfg.beta_start, cfg.beta_end, cfg.beta_schedule) == (0.00085, 0.012, "scaled_linear")
    assert (cfg.num_train_timesteps, cfg.original_inference_steps, cfg.steps_offset) == (1000, 50, 1)
    assert cfg.prediction_type == "epsilon" and cfg.set_alpha_to_one and cfg.timestep_spacing == "leading"
    assert cfg.timestep_scaling == 10.0 and not cfg.clip_sample
    fields = set(inspect.signature(LCMScheduler.__init__).parameters) - {"self"}
    assert set(scheduler_config()) == fields  # every field of the defaults
    sched.set_timesteps(4)
    assert sched.timesteps.tolist() == [999, 759, 499, 259]  # docs/method.md, "Models"
    sched.set_timesteps(8)
    assert sched.timesteps.tolist() == [999, 879, 759, 639, 499, 379, 259, 139]

    proc = CLIPImageProcessor.from_pretrained(tiny_model_dir / "base" / "feature_extractor")
    assert proc.size == {"shortest_edge": 224} and proc.crop_size == {"height": 224, "width": 224}
    assert int(proc.resample) == 3
    assert np.allclose(proc.image_mean, [0.48145466, 0.4578275, 0.40821073])


def test_two_writes_are_byte_identical_and_ignore_torch_rng(tiny_model_dir: Path, tmp_path: Path):
    torch.manual_seed(12345)  # must not matter
    again = tmp_path / "again"
    write_tiny_model(again, preset="tiny")
    first, second = _weight_hashes(tiny_model_dir), _weight_hashes(again)
    assert len(first) == 5 and first == second
    for rel in ("base/tokenizer/vocab.json", "base/tokenizer/merges.txt", "base/scheduler/scheduler_config.json"):
        assert _sha256(tiny_model_dir / rel) == _sha256(again / rel)
    from PIL import Image

    a, b = (np.asarray(Image.open(d / "subject.png")) for d in (tiny_model_dir, again))
    assert np.array_equal(a, b)


def test_tensor_names_as_in_hub_checkpoints(tiny_model_dir: Path):
    from safetensors import safe_open

    def keys(rel: str) -> list[str]:
        with safe_open(tiny_model_dir / rel, "pt") as f:
            return list(f.keys())

    text = keys("base/text_encoder/model.safetensors")
    assert all(k.startswith("text_model.") for k in text)  # as SD1.5's text_encoder (transformers < 5 layout)
    assert "text_model.embeddings.token_embedding.weight" in text
    vision = keys("ip-adapter/models/image_encoder/model.safetensors")
    assert all(k.startswith(("vision_model.", "visual_projection.")) for k in vision)
    unet = keys("base/unet/diffusion_pytorch_model.safetensors")
    assert "time_embedding.cond_proj.weight" in unet and "up_blocks.1.attentions.1.proj_in.weight" in unet
    ip = keys(f"ip-adapter/models/{IP_WEIGHT}")
    assert sorted(k for k in ip if k.startswith("image_proj.")) == [
        "image_proj.norm.bias",
        "image_proj.norm.weight",
        "image_proj.proj.bias",
        "image_proj.proj.weight",
    ]
    assert {int(k.split(".")[1]) for k in ip if k.startswith("ip_adapter.")} == set(range(1, 32, 2))


# sha256 of the tiny preset's files. A change means every machine's tiny model (and anything built
# or cached from it) changes: bump these only for an intended change of weights or tokenizer.
GOLDEN_SHA256 = {
    "base/text_encoder/model.safetensors": "c4562f674cac4f5d9436cba9f450def252efa55302554f60a4a5bde013d000ed",
    "base/tokenizer/merges.txt": "087f283c98345392479841f6a8720e027663f83a94cddf70be1ad8cfc99273fb",
    "base/tokenizer/vocab.json": "81506877fffd9b00901871c54bb98267016cb1a6491ffaf19291b1c3993ead0a",
    "base/unet/diffusion_pytorch_model.safetensors": "e7aa1a4498cdd51cc8af799676086ddadbec6e4a1806e16ac1dd14eae188ff2a",
    "base/vae/diffusion_pytorch_model.safetensors": "b54ea9829819a466e45854d005709a53c94c527db83f578234c48e0ead3a365c",
    "ip-adapter/models/image_encoder/model.safetensors": "1db6a79f629c00f053ab913175daaacc9336b9df914970864f5d0c906f50135c",
    "ip-adapter/models/ip-adapter_sd15.safetensors": "41fc29b7f889c3800e5e8555239ca8d001ef8f6b5969758df5dfa3604b7e267f",
}


def test_golden_hashes(tiny_model_dir: Path):
    got = {rel: _sha256(tiny_model_dir / rel) for rel in GOLDEN_SHA256}
    assert got == GOLDEN_SHA256


# ------------------------------------------------------------------ loading like the real repos


def test_loads_without_weight_warnings(pipe):
    bad = [r.getMessage() for r in pipe.load_records if _BAD_LOAD_MESSAGE.search(r.getMessage())]
    assert not bad, bad


def test_ip_adapter_weights_loaded_equal_file(pipe, tiny_model_dir: Path):
    from safetensors.torch import load_file

    sd = load_file(tiny_model_dir / "ip-adapter" / "models" / IP_WEIGHT)
    unet = pipe.unet
    proj = unet.encoder_hid_proj.image_projection_layers[0]
    assert torch.equal(proj.image_embeds.weight, sd["image_proj.proj.weight"])
    assert torch.equal(proj.image_embeds.bias, sd["image_proj.proj.bias"])
    assert torch.equal(proj.norm.weight, sd["image_proj.norm.weight"])
    assert torch.equal(proj.norm.bias, sd["image_proj.norm.bias"])

    ip_keys = sorted(k for k in sd if k.startswith("ip_adapter."))
    cross = [n for n in unet.attn_processors if n.endswith("attn2.processor")]
    assert len(ip_keys) == 2 * len(cross) == 32
    for i, name in enumerate(cross):
        k = 2 * i + 1
        proc = unet.attn_processors[name]
        assert torch.equal(proc.to_k_ip[0].weight, sd[f"ip_adapter.{k}.to_k_ip.weight"])
        assert torch.equal(proc.to_v_ip[0].weight, sd[f"ip_adapter.{k}.to_v_ip.weight"])
    assert pipe.image_encoder is not None  # load_ip_adapter found models/image_encoder

    text_sd = load_file(tiny_model_dir / "base" / "text_encoder" / "model.safetensors")
    loaded = pipe.text_encoder.state_dict()
    for k, v in text_sd.items():  # transformers 5 drops the "text_model." prefix on load
        assert torch.equal(loaded.get(k, loaded.get(k.removeprefix("text_model."))), v), k


def test_attention_module_order(pipe):
    from diffusers.models.attention_processor import Attention

    names = [n for n, m in pipe.unet.named_modules() if isinstance(m, Attention)]
    assert names[15] == DEFAULT_MASK_LAYER
    assert sum(n.endswith("attn2") for n in names) == 16
    assert pipe.unet.get_submodule(DEFAULT_MASK_LAYER).is_cross_attention


def test_lcm_run_with_ip_adapter(pipe, image_embeds: torch.Tensor):
    assert image_embeds.shape == (1, PRESETS["tiny"].vision.projection_dim)
    assert image_embeds.std() > 0.1
    out = pipe(
        "a dog on the beach",
        height=64,
        width=64,
        num_inference_steps=4,
        guidance_scale=8.5,
        ip_adapter_image_embeds=[image_embeds[:, None]],  # [batch, num_images, embed_dim]
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    img = out.images[0]
    assert img.shape == (64, 64, 3)
    assert np.isfinite(img).all() and img.std() > 0.02


def test_weight_scales_give_sane_outputs(pipe, image_embeds: torch.Tensor):
    g = torch.Generator().manual_seed(1)
    ids = pipe.tokenizer(PROMPTS[:2], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        text = pipe.text_encoder(ids)[0]
        assert 0.3 < text.std() < 3 and (text[0] - text[1]).abs().mean() > 0.01
        cond = pipe.get_guidance_scale_embedding(torch.tensor([7.5]), embedding_dim=pipe.unet.config.time_cond_proj_dim)
        eps = pipe.unet(
            torch.randn(1, 4, 8, 8, generator=g),
            999,
            encoder_hidden_states=text[:1],
            timestep_cond=cond,
            added_cond_kwargs={"image_embeds": [image_embeds[:, None]]},
        ).sample
        assert 0.3 < eps.std() < 3
        img = pipe.vae.decode(torch.randn(1, 4, 16, 16, generator=g) / 0.18215).sample
    assert img.shape == (1, 3, 128, 128)
    assert 0.05 < img.std() < 0.6 and (img.abs() > 1).float().mean() < 0.05


# ------------------------------------------------------------------ tokenizer


def _reference_clip_encode(text: str, vocab: dict[str, int], merges: list[tuple[str, str]]) -> list[int]:
    """openai/CLIP simple_tokenizer's algorithm (without ftfy), independent of transformers/tokenizers."""
    import regex

    ranks = {m: i for i, m in enumerate(merges)}
    b2u = bytes_to_unicode()
    text = re.sub(r"\s+", " ", text).strip().lower()
    pat = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")
    ids = [vocab[SPECIAL_BOS]]
    for token in pat.findall(text):
        chars = "".join(b2u[b] for b in token.encode("utf-8"))
        word = (*chars[:-1], chars[-1] + "</w>")
        while len(word) > 1:
            best = min(zip(word, word[1:]), key=lambda p: ranks.get(p, float("inf")))
            if best not in ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        ids.extend(vocab[w] for w in word)
    return ids + [vocab[SPECIAL_EOS]]


def test_tokenizer_real_format(tiny_model_dir: Path):
    from transformers import CLIPTextConfig, CLIPTokenizer, CLIPTokenizerFast

    folder = tiny_model_dir / "base" / "tokenizer"
    slow, fast = CLIPTokenizer.from_pretrained(folder), CLIPTokenizerFast.from_pretrained(folder)
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines[1:]]

    # CLIP's vocab order: 256 byte chars, the same + "</w>", merges, then the two specials last.
    tokens = sorted(vocab, key=vocab.get)
    assert list(vocab.values()) == sorted(vocab.values()) == list(range(len(vocab)))
    assert tokens[:256] == list(bytes_to_unicode().values())
    assert tokens[256:512] == [c + "</w>" for c in tokens[:256]]
    assert tokens[-2:] == [SPECIAL_BOS, SPECIAL_EOS]
    assert all(a + b in vocab for a, b in merges)
    assert build_clip_bpe().vocab() == vocab

    assert slow.model_max_length == fast.model_max_length == 77
    assert slow.eos_token == slow.pad_token == slow.unk_token == SPECIAL_EOS and slow.bos_token == SPECIAL_BOS
    for prompt in PROMPTS:
        ref = _reference_clip_encode(prompt, vocab, merges)
        assert slow(prompt).input_ids == fast(prompt).input_ids == ref, prompt
    assert len(slow("dog").input_ids) == 3  # corpus words are single tokens
    # Padded to 77 with <|endoftext|>, as diffusers' encode_prompt does.
    padded = slow(PROMPTS[0], padding="max_length", max_length=77, truncation=True).input_ids
    assert len(padded) == 77 and padded[-1] == vocab[SPECIAL_EOS]

    te = CLIPTextConfig.from_pretrained(tiny_model_dir / "base" / "text_encoder")
    assert te.vocab_size == len(slow) == len(vocab) and te.max_position_embeddings == 77
    assert (te.bos_token_id, te.eos_token_id) == (vocab[SPECIAL_BOS], vocab[SPECIAL_EOS])


# ------------------------------------------------------------------ the sd15 preset


def test_sd15_preset_shapes_on_meta():
    from diffusers.models.attention_processor import Attention

    models = meta_models("sd15")
    unet, vae, text, vision = (models[k] for k in ("unet", "vae", "text_encoder", "image_encoder"))
    cfg = unet.config
    assert tuple(cfg.block_out_channels) == (320, 640, 1280, 1280) and cfg.time_cond_proj_dim == 256
    assert cfg.cross_attention_dim == 768 and cfg.attention_head_dim == 8 and cfg.layers_per_block == 2
    # SD1.5's UNet (859,520,964 parameters) + LCM's guidance projection (256 -> 320, no bias).
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964 + 256 * 320
    names = [n for n, m in unet.named_modules() if isinstance(m, Attention)]
    assert names[15] == DEFAULT_MASK_LAYER
    assert tuple(vae.config.block_out_channels) == (128, 256, 512, 512) and vae.config.scaling_factor == 0.18215
    t = text.config
    assert (t.hidden_size, t.num_hidden_layers, t.vocab_size, t.max_position_embeddings) == (768, 12, 49408, 77)
    assert t.eos_token_id == build_clip_bpe().eos_id
    v = vision.config
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.intermediate_size) == (1280, 32, 16, 5120)
    assert (v.patch_size, v.image_size, v.projection_dim) == (14, 224, 1024)
    specs = {s.name: s.shape for s in ip_adapter_tensor_specs(unet, v.projection_dim)}
    assert specs["image_proj.proj.weight"] == (4 * 768, 1024)
    assert specs["ip_adapter.1.to_k_ip.weight"] == (320, 768)
    assert specs["ip_adapter.31.to_v_ip.weight"] == (1280, 768)  # mid block: last in attn_processors order
    assert unet_config("tiny")["down_block_types"] == unet_config("sd15")["down_block_types"]


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MONKEY_TRT_SLOW"), reason="writes ~6.5 GB; set MONKEY_TRT_SLOW=1")
def test_sd15_write_and_load(tmp_path: Path):
    try:
        _check_sd15(tmp_path / "sd15")
    finally:
        shutil.rmtree(tmp_path / "sd15", ignore_errors=True)  # do not leave GBs in /tmp


def _check_sd15(out: Path) -> None:
    from diffusers import LatentConsistencyModelPipeline
    from safetensors import safe_open

    lines: list[str] = []
    paths = write_tiny_model(out, preset="sd15", progress=lines.append)
    assert lines and lines[-1] == "done"
    with safe_open(paths.ip_adapter / "models" / IP_WEIGHT, "pt") as f:
        assert f.get_slice("image_proj.proj.weight").get_shape() == [3072, 1024]
    pipe = LatentConsistencyModelPipeline.from_pretrained(paths.base)
    pipe.load_ip_adapter(str(paths.ip_adapter), subfolder="models", weight_name=IP_WEIGHT, low_cpu_mem_usage=False)
    pipe.set_progress_bar_config(disable=True)
    embeds = torch.randn(1, 1, 1024, generator=torch.Generator().manual_seed(0))
    img = pipe("a dog", height=64, width=64, num_inference_steps=1, ip_adapter_image_embeds=[embeds], output_type="np").images
    assert np.isfinite(img).all() and img.std() > 0.02
