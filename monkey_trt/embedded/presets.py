"""What each embedded model is: the size presets (``tiny``, ``sd15``) and the hub configs they give.

Two presets: ``tiny`` (SD1.5's topology with tiny widths; a 64x64 LCM run takes well under a
second on CPU) and ``sd15`` (the real SD1.5 / ViT-H sizes with random weights, for benchmarks).
From a preset come the component configs as the hub repos hold them (unet, vae, text encoder,
image encoder, scheduler, feature extractor) and the four networks on the ``meta`` device
(tensor names, shapes and module kinds only, no memory).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from monkey_trt.enginedir.networks import CLIP_MEAN, CLIP_STD, TEXT_LEN
from monkey_trt.embedded.bpe import ClipBpe, build_clip_bpe

__all__ = [
    "PRESETS",
    "InitScales",
    "ModelPreset",
    "TextSize",
    "UNetSize",
    "VAESize",
    "VisionSize",
    "feature_extractor_config",
    "get_preset",
    "meta_models",
    "scheduler_config",
    "text_encoder_config",
    "unet_config",
    "vae_config",
    "vision_encoder_config",
]

SD15_VOCAB_SIZE = 49408  # CLIP's vocab size; the sd15 text encoder keeps it (our tokenizer uses a prefix)


@dataclass(frozen=True)
class UNetSize:
    """The knobs of an SD1.5-topology ``UNet2DConditionModel`` (block types are always SD1.5's)."""

    block_out_channels: tuple[int, ...]
    layers_per_block: int
    attention_head_dim: int  # diffusers' SD1.5 quirk: this is the number of heads
    cross_attention_dim: int
    time_cond_proj_dim: int  # LCM's guidance embedding (must be even: sinusoidal)
    norm_num_groups: int
    sample_size: int


@dataclass(frozen=True)
class VAESize:
    """``AutoencoderKL`` knobs; 4 blocks give SD's 8x downsampling, 4 latent channels."""

    block_out_channels: tuple[int, ...]
    layers_per_block: int
    norm_num_groups: int
    sample_size: int


@dataclass(frozen=True)
class TextSize:
    """``CLIPTextModel`` knobs; ``vocab_size`` None means "the tokenizer's vocab size"."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    projection_dim: int
    vocab_size: int | None


@dataclass(frozen=True)
class VisionSize:
    """``CLIPVisionModelWithProjection`` knobs; ``projection_dim`` is the IP-Adapter's embed dim."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    patch_size: int
    image_size: int
    projection_dim: int


@dataclass(frozen=True)
class InitScales:
    """Every weight-scale choice, in one place.

    Rules (see ``weights._init_array``): conv/linear weights ~ N(0, (gain / sqrt(fan_in))^2) -- LeCun
    scaling keeps activations O(1) through each layer, and the pre-norm residual streams of the
    UNet / CLIP are renormalised before every output, so outputs stay O(1) at any depth;
    biases ~ N(0, bias_std^2); norm scales ~ 1 + N(0, norm_weight_std^2), norm shifts ~
    N(0, norm_bias_std^2) (non-trivial, so engines cannot get away with ignoring them);
    embeddings (tokens, positions, CLIP's class token) ~ N(0, embedding_std^2), CLIP's own
    init scale (they are layer-normed before use).

    ``gain_overrides`` maps (component, tensor name) to a gain. Both output convs follow a
    GroupNorm + SiLU, whose output has RMS ~0.6: the UNet's ``conv_out`` uses 1.6 so the noise
    prediction has std ~1 (like a trained epsilon predictor); the VAE decoder's ``conv_out`` uses
    0.5 so a decoded N(0,1)/0.18215 latent has std ~0.3 -- mostly inside [-1, 1], not saturated
    (gain 1 would put ~10% of the pixels outside).
    """

    weight_gain: float = 1.0
    bias_std: float = 0.02
    norm_weight_std: float = 0.05
    norm_bias_std: float = 0.02
    embedding_std: float = 0.02
    gain_overrides: tuple[tuple[str, str, float], ...] = (
        ("unet", "conv_out.weight", 1.6),
        ("vae", "decoder.conv_out.weight", 0.5),
    )

    def gain(self, component: str, name: str) -> float:
        for comp, tensor, g in self.gain_overrides:
            if comp == component and tensor == name:
                return g
        return self.weight_gain


@dataclass(frozen=True)
class ModelPreset:
    """Everything that defines one written model."""

    name: str
    unet: UNetSize
    vae: VAESize
    text: TextSize
    vision: VisionSize
    scales: InitScales = field(default_factory=InitScales)


PRESETS: dict[str, ModelPreset] = {
    "tiny": ModelPreset(
        name="tiny",
        unet=UNetSize(
            block_out_channels=(32, 32, 64, 64),
            layers_per_block=2,
            attention_head_dim=2,
            cross_attention_dim=32,
            time_cond_proj_dim=32,
            norm_num_groups=8,
            sample_size=32,  # default resolution 256x256 (the published code's small setting)
        ),
        vae=VAESize(block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8, sample_size=256),
        text=TextSize(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            projection_dim=32,
            vocab_size=None,
        ),
        vision=VisionSize(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            patch_size=32,
            image_size=224,
            projection_dim=32,
        ),
    ),
    "sd15": ModelPreset(
        name="sd15",
        unet=UNetSize(
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            attention_head_dim=8,
            cross_attention_dim=768,
            time_cond_proj_dim=256,
            norm_num_groups=32,
            sample_size=96,  # as LCM_Dreamshaper_v7's unet/config.json
        ),
        vae=VAESize(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, sample_size=768),
        text=TextSize(  # CLIP ViT-L/14 text tower
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            projection_dim=768,
            vocab_size=SD15_VOCAB_SIZE,
        ),
        vision=VisionSize(  # h94/IP-Adapter models/image_encoder: OpenCLIP ViT-H/14
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=16,
            patch_size=14,
            image_size=224,
            projection_dim=1024,
        ),
    ),
}


def get_preset(preset: str | ModelPreset) -> ModelPreset:
    """Look a preset up by name (or pass one through)."""
    if isinstance(preset, ModelPreset):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}") from None


# --------------------------------------------------------------------------------------------
# Component configs
# --------------------------------------------------------------------------------------------


def unet_config(preset: str | ModelPreset) -> dict:
    """``UNet2DConditionModel`` kwargs: SD1.5's block layout with the preset's sizes."""
    u = get_preset(preset).unet
    return dict(
        sample_size=u.sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=u.block_out_channels,
        layers_per_block=u.layers_per_block,
        attention_head_dim=u.attention_head_dim,
        cross_attention_dim=u.cross_attention_dim,
        time_cond_proj_dim=u.time_cond_proj_dim,
        norm_num_groups=u.norm_num_groups,
        norm_eps=1e-5,
        act_fn="silu",
        flip_sin_to_cos=True,
        freq_shift=0,
        downsample_padding=1,
        use_linear_projection=False,
    )


def vae_config(preset: str | ModelPreset) -> dict:
    """``AutoencoderKL`` kwargs: SD's VAE layout (8x, 4 latent channels, scaling 0.18215)."""
    v = get_preset(preset).vae
    n = len(v.block_out_channels)
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=v.block_out_channels,
        layers_per_block=v.layers_per_block,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=v.norm_num_groups,
        sample_size=v.sample_size,
        scaling_factor=0.18215,
    )


def text_encoder_config(preset: str | ModelPreset, bpe: ClipBpe | None = None):
    """``CLIPTextConfig`` (quick_gelu, 77 positions); token ids follow our tokenizer."""
    from transformers import CLIPTextConfig

    p = get_preset(preset)
    bpe = bpe or build_clip_bpe()
    t = p.text
    vocab_size = t.vocab_size if t.vocab_size is not None else bpe.vocab_size
    if vocab_size < bpe.vocab_size:
        raise ValueError(f"text encoder vocab {vocab_size} < tokenizer vocab {bpe.vocab_size}")
    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        projection_dim=t.projection_dim,
        num_hidden_layers=t.num_hidden_layers,
        num_attention_heads=t.num_attention_heads,
        max_position_embeddings=TEXT_LEN,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        bos_token_id=bpe.bos_id,
        eos_token_id=bpe.eos_id,
        pad_token_id=bpe.eos_id,
    )
    cfg.architectures = ["CLIPTextModel"]
    return cfg


def vision_encoder_config(preset: str | ModelPreset):
    """``CLIPVisionConfig`` of the IP-Adapter image encoder (gelu, 224 input, with projection)."""
    from transformers import CLIPVisionConfig

    v = get_preset(preset).vision
    cfg = CLIPVisionConfig(
        hidden_size=v.hidden_size,
        intermediate_size=v.intermediate_size,
        projection_dim=v.projection_dim,
        num_hidden_layers=v.num_hidden_layers,
        num_attention_heads=v.num_attention_heads,
        num_channels=3,
        image_size=v.image_size,
        patch_size=v.patch_size,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )
    cfg.architectures = ["CLIPVisionModelWithProjection"]
    return cfg


# LCM_Dreamshaper_v7's scheduler_config.json values; every other field keeps LCMScheduler's default.
LCM_SCHEDULER_OVERRIDES: Mapping[str, object] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "original_inference_steps": 50,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "set_alpha_to_one": True,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "timestep_scaling": 10.0,
    "rescale_betas_zero_snr": False,
}


def scheduler_config() -> dict:
    """LCMScheduler's full config: its defaults with LCM_Dreamshaper_v7's values on top."""
    from diffusers import LCMScheduler

    return dict(LCMScheduler(**LCM_SCHEDULER_OVERRIDES).config)


def feature_extractor_config() -> dict:
    """The pipeline's ``CLIPImageProcessor``: bicubic shortest side 224, centre crop 224, CLIP mean/std."""
    return {
        "crop_size": {"height": 224, "width": 224},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": list(CLIP_MEAN),
        "image_processor_type": "CLIPImageProcessor",
        "image_std": list(CLIP_STD),
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": 224},
    }


def meta_models(preset: str | ModelPreset, bpe: ClipBpe | None = None) -> dict:
    """The four networks, instantiated on the ``meta`` device (shapes only, no memory).

    Keys: ``unet``, ``vae``, ``text_encoder``, ``image_encoder``.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPVisionModelWithProjection

    p = get_preset(preset)
    with torch.device("meta"):
        return {
            "unet": UNet2DConditionModel(**unet_config(p)),
            "vae": AutoencoderKL(**vae_config(p)),
            "text_encoder": CLIPTextModel(text_encoder_config(p, bpe)),
            "image_encoder": CLIPVisionModelWithProjection(vision_encoder_config(p)),
        }
