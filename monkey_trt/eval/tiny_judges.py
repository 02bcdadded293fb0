"""Tiny random CLIP and DINO judges in their hub layouts, for offline tests and demos.

    clip/  config.json model.safetensors  vocab.json merges.txt tokenizer_config.json
           special_tokens_map.json (tokenizer.json)  preprocessor_config.json
    dino/  config.json model.safetensors  preprocessor_config.json

Same layouts as `openai/clip-vit-base-patch32` and `facebook/dino-vits16`, so they load through the
judges' own code path (`from_pretrained` on a folder). The weights are deterministic: every tensor is
drawn from a numpy generator seeded by its name, whatever torch's initialisation does. The scores
they give are numbers, not judgements.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from monkey_trt.core.errors import MonkeyError
from monkey_trt.enginedir.networks import CLIP_MEAN, CLIP_STD
from monkey_trt.eval.judges import IMAGENET_MEAN, IMAGENET_STD

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
IMAGE_SIZE = 224


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's byte -> printable character table (256 characters)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def _fresh(folder: Path) -> Path:
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise MonkeyError(f"{folder} exists and is not an empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _fill(model, seed: int) -> None:
    """Deterministic weights: N(0, 0.5/sqrt(fan_in)) matrices, LayerNorm weights near 1, small biases."""
    import torch

    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
            if name.endswith("logit_scale"):
                value = np.full(p.shape, np.log(100.0))
            elif p.ndim == 1 and ("norm" in name) and name.endswith("weight"):
                value = 1.0 + 0.05 * rng.standard_normal(p.shape)
            elif p.ndim <= 1:
                value = 0.02 * rng.standard_normal(p.shape)
            else:
                fan_in = int(np.prod(p.shape[1:]))
                value = rng.standard_normal(p.shape) * (0.5 / np.sqrt(fan_in))
            p.copy_(torch.from_numpy(value.astype(np.float32)))


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A CLIPModel (ViT-B/32-like shapes, scaled down) with a byte-level CLIP tokenizer."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder = _fresh(folder)
    chars = _bytes_to_unicode()
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + [BOS, EOS])}
    _write_json(folder / "vocab.json", vocab)
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    tokenizer.save_pretrained(folder)
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": vocab[BOS],
                     "eos_token_id": vocab[EOS], "pad_token_id": vocab[EOS]},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": IMAGE_SIZE, "patch_size": 32},
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    _fill(model, seed)
    model.save_pretrained(folder, safe_serialization=True)
    _write_json(folder / "preprocessor_config.json", {
        "crop_size": IMAGE_SIZE, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_processor_type": "CLIPImageProcessor",
        "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD), "resample": 3, "size": IMAGE_SIZE})
    return folder


def write_tiny_dino(folder: Path, seed: int = 1) -> Path:
    """A ViTModel (dino-vits16-like: patch 16 at 224, no pooler), scaled down."""
    from transformers import ViTConfig, ViTModel

    folder = _fresh(folder)
    config = ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       image_size=IMAGE_SIZE, patch_size=16, qkv_bias=True)
    model = ViTModel(config, add_pooling_layer=False).eval()
    _fill(model, seed)
    model.save_pretrained(folder, safe_serialization=True)
    _write_json(folder / "preprocessor_config.json", {
        "do_normalize": True, "do_resize": True, "image_processor_type": "ViTImageProcessor",
        "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD), "resample": 3, "size": IMAGE_SIZE})
    return folder


def write_tiny_judges(root: Path) -> tuple[Path, Path]:
    """(root/clip, root/dino)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    return write_tiny_clip(Path(root) / "clip"), write_tiny_dino(Path(root) / "dino")
