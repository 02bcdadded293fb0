"""Load SD1.5/LCM + IP-Adapter for the reference and the exporter: hub ids or local folders.

Real weights: `SimianLuo/LCM_Dreamshaper_v7` (diffusers layout) and `h94/IP-Adapter`
(`models/ip-adapter_sd15.safetensors` or `.bin`, `models/image_encoder/`). The embedded tiny
model is written in exactly these layouts, so it goes through this same code.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from monkey_trt.core.config import ModelSource
from monkey_trt.core.errors import MonkeyError, first_line
from monkey_trt.enginedir.networks import ModelDims
from monkey_trt.reference.attention import IPContext, install_ip_processors
from monkey_trt.reference.hub import hub_unreachable  # resolve_repo's probe (tests replace it here)
from monkey_trt.reference.hub import looks_like_path as _looks_like_path

BASE_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def _pick_hub_files(files: list[str], prefixes: tuple[str, ...]) -> list[str]:
    """Configs + tokenizer files + one weight format (safetensors, else bin) per folder; no fp16 variants."""
    keep: list[str] = []
    for prefix in prefixes:
        in_dir = [f for f in files if f.startswith(prefix)]
        meta = [f for f in in_dir if f.endswith((".json", ".txt"))]
        weights = [f for f in in_dir if f.endswith(".safetensors") and ".fp16." not in f]
        if not weights:
            weights = [f for f in in_dir if f.endswith(".bin") and ".fp16." not in f]
        keep += meta + weights
    return keep


def resolve_repo(name: str, prefixes: tuple[str, ...], extra: tuple[tuple[str, ...], ...] = ()) -> Path:
    """A local folder as is; a hub id `owner/repo` downloaded (only the files we need) to the HF cache.

    `extra`: single files outside `prefixes`, each given as alternatives in order of preference.
    """
    p = Path(name).expanduser()
    if p.is_dir():
        return p
    if _looks_like_path(name):
        raise MonkeyError(f"model folder {name} does not exist")
    try:
        from huggingface_hub import list_repo_files, snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub ships with the export extra
        raise MonkeyError("huggingface_hub is not installed: pip install 'monkey-trt[export]'") from None
    offline = hub_unreachable()
    if offline:
        try:
            return Path(snapshot_download(name, local_files_only=True))
        except Exception:
            raise MonkeyError(f"{name} is not in the Hugging Face cache and the hub cannot be used ({offline}): "
                              "pass a local folder") from None
    try:
        files = list_repo_files(name)
        patterns = _pick_hub_files(files, prefixes) + [next(f for f in alts if f in files) for alts in extra if any(f in files for f in alts)]
        return Path(snapshot_download(name, allow_patterns=patterns))
    except Exception as online_error:  # offline, unknown repo, gated...
        try:
            return Path(snapshot_download(name, local_files_only=True))
        except Exception:
            raise MonkeyError(
                f"cannot get {name} from the Hugging Face hub ({type(online_error).__name__}) and it is not cached: pass a local folder"
            ) from None


def resolve_base(base: str) -> Path:
    root = resolve_repo(base, tuple(f"{c}/" for c in BASE_COMPONENTS) + ("feature_extractor/",), extra=(("model_index.json",),))
    missing = [c for c in BASE_COMPONENTS if not (root / c).is_dir()]
    if missing:
        raise MonkeyError(f"{base} is not a diffusers SD1.5/LCM pipeline folder: missing {', '.join(missing)}")
    return root


def ip_weight_file(ip_root: Path, weight: str) -> Path:
    """models/<weight>(.safetensors|.bin); an explicit extension is honoured."""
    models = ip_root / "models"
    names = [weight] if weight.endswith((".safetensors", ".bin")) else [f"{weight}.safetensors", f"{weight}.bin"]
    for n in names:
        if (models / n).is_file():
            return models / n
    raise MonkeyError(f"no IP-Adapter weights {' or '.join(names)} in {models}")


def resolve_ip_adapter(ip_adapter: str, weight: str) -> Path:
    names = (weight,) if weight.endswith((".safetensors", ".bin")) else (f"{weight}.safetensors", f"{weight}.bin")
    root = resolve_repo(ip_adapter, ("models/image_encoder/",), extra=(tuple(f"models/{n}" for n in names),))
    if not (root / "models" / "image_encoder" / "config.json").is_file():
        raise MonkeyError(f"{ip_adapter} is not an IP-Adapter folder: models/image_encoder/config.json is missing")
    return root


def load_ip_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(image_proj, ip_adapter) state dicts from the h94 `.safetensors` (prefixed keys) or `.bin` (nested)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            flat = load_file(str(path))
            proj = {k[len("image_proj."):]: v for k, v in flat.items() if k.startswith("image_proj.")}
            ip = {k[len("ip_adapter."):]: v for k, v in flat.items() if k.startswith("ip_adapter.")}
        else:
            nested = torch.load(path, map_location="cpu", weights_only=True)
            proj, ip = nested["image_proj"], nested["ip_adapter"]
    except Exception as e:
        raise MonkeyError(f"cannot read IP-Adapter weights {path}: {type(e).__name__}: {str(e) and first_line(e)}") from None
    if "proj.weight" not in proj or not ip:
        raise MonkeyError(f"{path} is not an IP-Adapter (sd15, non-plus) checkpoint: no image_proj.proj / ip_adapter keys")
    return proj, ip


def weight_digests(base: Path, ip_root: Path, ip_weight: Path) -> dict[str, str]:
    """file -> digest for every weight file that was loaded (the exporter records them in the manifest)."""
    found = [f for c in ("unet", "vae", "text_encoder") for f in sorted((base / c).glob("*")) if f.suffix in (".safetensors", ".bin")]
    found += [f for f in sorted((ip_root / "models" / "image_encoder").glob("*")) if f.suffix in (".safetensors", ".bin")]
    found.append(ip_weight)
    return {str(f.relative_to(f.parents[1] if f != ip_weight else ip_root)): file_digest(f) for f in found}


def file_digest(path: Path, limit: int = 1 << 26) -> str:
    """sha256 of a weight file (first 64 MiB + size for big files: a fast, stable identity)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f:
        h.update(f.read(limit))
    h.update(str(size).encode())
    return h.hexdigest()


@dataclass
class ReferenceModels:
    """Everything loaded from the base + IP-Adapter folders, IP processors installed."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object  # transformers.CLIPTokenizer
    scheduler: object  # diffusers.LCMScheduler
    image_encoder: torch.nn.Module  # CLIPVisionModelWithProjection
    image_proj: torch.nn.Module  # diffusers ImageProjection: embed -> n_ip_tokens x D
    ctx: IPContext
    ip_layers: list[str]
    source: ModelSource
    files: dict[str, str]  # what was loaded: folder paths and weight digests

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def dims(self) -> ModelDims:
        """The sizes that fix every network's static dims, from the loaded models' configs."""
        unet, vae = self.unet.config, self.vae.config
        return ModelDims(
            text_len=self.text_encoder.config.max_position_embeddings,
            text_dim=unet.cross_attention_dim,
            time_cond_dim=unet.time_cond_proj_dim,
            n_ip_tokens=self.image_proj.num_image_text_embeds,
            n_ip_layers=len(self.ip_layers),
            latent_channels=unet.in_channels,
            vae_factor=2 ** (len(vae.block_out_channels) - 1),
            image_size=self.image_encoder.config.image_size,
        )


def load_reference_models(source: ModelSource, device: str = "cpu", dtype: torch.dtype = torch.float32) -> ReferenceModels:
    from diffusers import AutoencoderKL, LCMScheduler, UNet2DConditionModel
    from diffusers.models.embeddings import ImageProjection
    from safetensors import SafetensorError
    from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

    quiet_progress_bars()
    base = resolve_base(source.base)
    ip_root = resolve_ip_adapter(source.ip_adapter, source.ip_weight)
    weight_path = ip_weight_file(ip_root, source.ip_weight)
    proj_sd, ip_sd = load_ip_state(weight_path)
    try:
        unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
        vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
        text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
        tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
        scheduler = LCMScheduler.from_pretrained(base, subfolder="scheduler")
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(ip_root / "models" / "image_encoder")
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:  # missing, truncated or corrupt files
        first = first_line(e)
        raise MonkeyError(f"cannot load the models from {base} / {ip_root}: {type(e).__name__}: {first}") from None
    if unet.config.time_cond_proj_dim is None:
        raise MonkeyError(f"{source.base} is not an LCM UNet (time_cond_proj_dim is unset)")

    embed_dim = proj_sd["proj.weight"].shape[-1]
    cross_dim = proj_sd["proj.weight"].shape[0] // 4
    image_proj = ImageProjection(image_embed_dim=embed_dim, cross_attention_dim=cross_dim, num_image_text_embeds=4)
    try:
        image_proj.load_state_dict({k.replace("proj", "image_embeds"): v for k, v in proj_sd.items()})
        ctx, ip_layers = install_ip_processors(unet, ip_sd, image_proj.num_image_text_embeds)
    except KeyError as e:
        raise MonkeyError(f"{weight_path} does not match this UNet: missing IP weight {e}") from None
    except RuntimeError as e:  # shape mismatch: an adapter for another base model (SDXL, plus, ...)
        raise MonkeyError(f"{weight_path} does not fit this model: {first_line(e)}") from None

    for m in (unet, vae, text_encoder, image_encoder, image_proj):
        m.to(device=device, dtype=dtype).eval().requires_grad_(False)
    files = {"base": str(base), "ip_adapter": str(ip_root), "ip_weight": str(weight_path),
             "weight_digests": weight_digests(base, ip_root, weight_path)}
    return ReferenceModels(unet, vae, text_encoder, tokenizer, scheduler, image_encoder, image_proj, ctx, ip_layers, source, files)


def quiet_progress_bars() -> None:
    """diffusers/transformers print per-file loading bars; the CLI shows its own progress."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    try:  # hub downloads
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass
