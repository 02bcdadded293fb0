"""The judges: CLIP (CLIP-T, CLIP-I) and DINO (identity), loaded once, run in batches.

    CLIP-T  cosine(CLIP text embedding of the prompt, CLIP image embedding of the output)
    CLIP-I  cosine(CLIP image embedding of the subject, CLIP image embedding of the output)
    DINO    cosine(DINO CLS embedding of the subject, DINO CLS embedding of the output)

A judge is a hub id or a folder in the hub layout (`config.json`, weights, tokenizer/processor
files), opened with transformers' `from_pretrained`; a hub id comes from the Hugging Face cache when
the hub cannot be reached (reference.loading.resolve_repo). CLIP embeddings are the projected ones
(`text_projection(text pooler)`, `visual_projection(vision pooler)`), computed from the sub-models
so every transformers version gives the same numbers. Images are preprocessed here, not by an
auto-processor whose backend depends on what is installed:
  CLIP: runtime.images.clip_preprocess (shortest side -> crop size, PIL bicubic, centre crop, the
        model's mean/std from preprocessor_config.json);
  DINO: shortest side -> 256 (PIL bicubic), centre crop 224 (torchvision's rounding), x/255,
        ImageNet mean/std; the embedding is the final layer's CLS token (last_hidden_state[:, 0]).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from monkey_trt.core.errors import MonkeyError, first_line
from monkey_trt.core.weight_files import damage
from monkey_trt.runtime.images import clip_preprocess, to_rgb8

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
DEFAULT_DINO = "facebook/dino-vits16"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_RESIZE, DINO_CROP = 256, 224
CLIP_TYPES = ("clip",)
DINO_TYPES = ("vit", "dinov2")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class JudgeSource:
    """A judge located and checked (config only; weights load later)."""

    kind: str  # clip | dino
    name: str  # as given: hub id or folder
    folder: Path
    model_type: str
    digest: str  # config + weights identity: rows scored by another judge are never mixed

    @property
    def flag(self) -> str:
        return f"--{self.kind}"


def resolve_judge(name: str, kind: str) -> JudgeSource:
    """Find the folder (hub cache when offline) and check it holds a model of the right kind."""
    from monkey_trt.reference.loading import file_digest, resolve_repo

    flag = f"--{kind}"
    try:
        folder = resolve_repo(name, ("",))
    except MonkeyError as e:
        raise MonkeyError(f"{flag} {name}: {e}") from None
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise MonkeyError(f"{flag} {name} is not a {kind.upper()} model folder: no config.json")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        model_type = config.get("model_type") if isinstance(config, dict) else None
    except (ValueError, UnicodeDecodeError):
        raise MonkeyError(f"{flag} {name}: config.json is not valid JSON") from None
    wanted = CLIP_TYPES if kind == "clip" else DINO_TYPES
    if model_type not in wanted:
        raise MonkeyError(f"{flag} {name} is not a {kind.upper()} model: its config.json says model_type {model_type!r} "
                          f"(expected {' or '.join(wanted)})")
    weights = next((folder / w for w in WEIGHT_FILES if (folder / w).is_file()), None)
    if weights is None:
        raise MonkeyError(f"{flag} {name}: no weights ({' or '.join(WEIGHT_FILES)}) in {folder}")
    why = damage(weights)  # before any image is generated: a cut-short download is found now, not after the run
    if why:
        raise MonkeyError(f"{flag} {name}: {weights} is {why}: download it again")
    h = hashlib.sha256(config_path.read_bytes())
    h.update(file_digest(weights).encode())
    return JudgeSource(kind, name, folder, model_type, h.hexdigest()[:16])


def judge_device(device: str) -> str:
    """auto -> cuda when torch sees a GPU, else cpu; anything else is checked."""
    import torch

    from monkey_trt.reference.device import check_torch_device

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        check_torch_device(device)
    except MonkeyError as e:
        raise MonkeyError(str(e).replace("--device", "--judge-device")) from None
    return device


def _load(what: JudgeSource, fn):
    try:
        return fn()
    except Exception as e:  # missing/corrupt weights, tokenizer files, shape mismatches
        raise MonkeyError(f"{what.flag} {what.name}: cannot load it ({type(e).__name__}: {first_line(e)})") from None


def _side(value, key: str | None = None) -> int:
    if isinstance(value, dict):
        value = value.get(key) or value.get("height")
    return int(value)


def dino_preprocess(img: Image.Image) -> np.ndarray:
    """[1, 3, 224, 224] float32: torchvision Resize(256, bicubic) + CenterCrop(224) + ToTensor + ImageNet Normalize."""
    rgb = to_rgb8(img) if img.mode != "RGB" else img
    w, h = rgb.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = DINO_RESIZE, int(DINO_RESIZE * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    a = np.asarray(rgb.resize((new_w, new_h), resample=Image.Resampling.BICUBIC))  # [h, w, 3] uint8
    top, left = int(round((new_h - DINO_CROP) / 2.0)), int(round((new_w - DINO_CROP) / 2.0))
    a = a[top : top + DINO_CROP, left : left + DINO_CROP]
    x = a.astype(np.float32) / np.float32(255)
    x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


class ClipJudge:
    def __init__(self, source: JudgeSource, model, tokenizer, size: int, mean, std, max_length: int, device: str):
        self.source, self.model, self.tokenizer = source, model, tokenizer
        self.size, self.mean, self.std, self.max_length, self.device = size, tuple(mean), tuple(std), max_length, device

    @classmethod
    def load(cls, source: JudgeSource, device: str = "cpu") -> "ClipJudge":
        from transformers import AutoTokenizer, CLIPModel

        model = _load(source, lambda: CLIPModel.from_pretrained(source.folder)).to(device).eval().requires_grad_(False)
        tokenizer = _load(source, lambda: AutoTokenizer.from_pretrained(source.folder))
        size, mean, std = cls._preprocess_config(source, model)
        max_length = min(int(model.config.text_config.max_position_embeddings), 77)
        return cls(source, model, tokenizer, size, mean, std, max_length, device)

    @staticmethod
    def _preprocess_config(source: JudgeSource, model) -> tuple[int, tuple, tuple]:
        from monkey_trt.enginedir.networks import CLIP_MEAN, CLIP_STD

        size, mean, std = int(model.config.vision_config.image_size), CLIP_MEAN, CLIP_STD
        path = source.folder / "preprocessor_config.json"
        if path.is_file():
            try:
                cfg = json.loads(path.read_text(encoding="utf-8"))
                crop = _side(cfg.get("crop_size", size), "height")
                resize = _side(cfg.get("size", crop), "shortest_edge")
                mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
            except (ValueError, TypeError, AttributeError, UnicodeDecodeError):
                raise MonkeyError(f"{source.flag} {source.name}: preprocessor_config.json is not a CLIP image processor config") from None
            if resize != crop or len(mean) != 3 or len(std) != 3:
                raise MonkeyError(f"{source.flag} {source.name}: resize {resize} != crop {crop} is not supported (CLIP resizes to its crop size)")
            size = crop
        return size, mean, std

    def image_embeds(self, images: list[Image.Image]) -> np.ndarray:
        """[N, D] float32 projected image embeddings."""
        import torch

        pixels = np.concatenate([clip_preprocess(im, size=self.size, mean=self.mean, std=self.std) for im in images])
        with torch.inference_mode():
            pooled = self.model.vision_model(pixel_values=torch.from_numpy(pixels).to(self.device)).pooler_output
            return self.model.visual_projection(pooled).float().cpu().numpy()

    def text_embeds(self, texts: list[str]) -> np.ndarray:
        """[N, D] float32 projected text embeddings (prompts truncated at 77 tokens, like CLIP)."""
        import torch

        tok = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        with torch.inference_mode():
            out = self.model.text_model(input_ids=tok["input_ids"].to(self.device),
                                        attention_mask=tok["attention_mask"].to(self.device))
            return self.model.text_projection(out.pooler_output).float().cpu().numpy()


class DinoJudge:
    def __init__(self, source: JudgeSource, model, device: str):
        self.source, self.model, self.device = source, model, device

    @classmethod
    def load(cls, source: JudgeSource, device: str = "cpu") -> "DinoJudge":
        if source.model_type == "vit":
            from transformers import ViTModel

            load = lambda: ViTModel.from_pretrained(source.folder, add_pooling_layer=False)  # noqa: E731
        else:
            from transformers import AutoModel

            load = lambda: AutoModel.from_pretrained(source.folder)  # noqa: E731
        return cls(source, _load(source, load).to(device).eval().requires_grad_(False), device)

    def image_embeds(self, images: list[Image.Image]) -> np.ndarray:
        """[N, D] float32 CLS embeddings of the last layer (after its layer norm)."""
        import torch

        pixels = np.concatenate([dino_preprocess(im) for im in images])
        with torch.inference_mode():
            out = self.model(pixel_values=torch.from_numpy(pixels).to(self.device))
            return out.last_hidden_state[:, 0].float().cpu().numpy()


@dataclass
class Judges:
    clip: ClipJudge
    dino: DinoJudge

    @classmethod
    def load(cls, clip: JudgeSource, dino: JudgeSource, device: str) -> "Judges":
        import transformers

        transformers.utils.logging.disable_progress_bar()  # the CLI shows its own progress
        transformers.utils.logging.set_verbosity_error()
        return cls(ClipJudge.load(clip, device), DinoJudge.load(dino, device))
