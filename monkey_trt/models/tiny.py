"""Deterministic stand-ins for MONKEY's models, written in the hub repos' on-disk layouts.

Nothing can be downloaded here, so tests, exports and benchmarks run on models this module
writes itself:

* ``<out>/base/``        like ``SimianLuo/LCM_Dreamshaper_v7`` (a diffusers
  ``LatentConsistencyModelPipeline`` folder: unet, vae, text_encoder, tokenizer, scheduler,
  feature_extractor);
* ``<out>/ip-adapter/``  like ``h94/IP-Adapter`` (``models/ip-adapter_sd15.safetensors`` and
  ``models/image_encoder/``);
* ``<out>/subject.png``  a synthetic 256x256 demo subject.

Two presets: ``tiny`` (SD1.5's topology with tiny widths; a 64x64 LCM run takes well under a
second on CPU) and ``sd15`` (the real SD1.5 / ViT-H sizes with random weights, for benchmarks).

Weights never come from torch's RNG: every tensor is filled from ``numpy.random.default_rng``
seeded with ``crc32("<preset>/<component>/<tensor name>")`` and streamed straight into a
``.safetensors`` file, so the bytes are identical on every machine and run. Models are only
instantiated on the ``meta`` device, to learn tensor names, shapes and module kinds.

The tokenizer is a real-format CLIP BPE tokenizer (vocab.json + merges.txt) whose merges are
learned deterministically from a small built-in English corpus (see ``build_clip_bpe``).
"""

from __future__ import annotations

import heapq
import json
import re
import struct
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from monkey_trt.enginedir.networks import CLIP_MEAN, CLIP_STD

__all__ = [
    "PRESETS",
    "ClipBpe",
    "InitScales",
    "ModelPreset",
    "TensorSpec",
    "TinyModelPaths",
    "build_clip_bpe",
    "draw_subject",
    "hub_tensor_specs",
    "ip_adapter_tensor_specs",
    "meta_models",
    "scheduler_config",
    "tensor_specs",
    "text_encoder_config",
    "unet_config",
    "vae_config",
    "vision_encoder_config",
    "write_tiny_model",
]

Progress = Callable[[str], None] | None

IP_ADAPTER_WEIGHT_NAME = "ip-adapter_sd15.safetensors"
N_IP_TOKENS = 4  # IP-Adapter (non-plus): one image embedding -> 4 context tokens
CLIP_MAX_LENGTH = 77
SD15_VOCAB_SIZE = 49408  # CLIP's vocab size; the sd15 text encoder keeps it (our tokenizer uses a prefix)


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------


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

    Rules (see ``_init_array``): conv/linear weights ~ N(0, (gain / sqrt(fan_in))^2) -- LeCun
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
        max_position_embeddings=CLIP_MAX_LENGTH,
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


# --------------------------------------------------------------------------------------------
# Tokenizer: a real-format CLIP BPE vocabulary, learned deterministically
# --------------------------------------------------------------------------------------------

# MONKEY paper, appendix A.1: the 20 background prompts (appended to "a <subject>").
BACKGROUND_PROMPTS: tuple[str, ...] = (
    "in the jungle",
    "in the snow",
    "on the beach",
    "on a cobblestone street",
    "on top of pink fabric",
    "on top of a wooden floor",
    "with a city in the background",
    "with a mountain in the background",
    "with a blue house in the background",
    "on top of a purple rug in a forest",
    "with a wheat field in the background",
    "with a tree and autumn leaves in the background",
    "with the Eiffel Tower in the background",
    "floating on top of water",
    "floating in an ocean of milk",
    "on top of green grass with sunflowers around it",
    "on top of a mirror",
    "on top of the sidewalk in a crowded street",
    "on top of a dirt road",
    "on top of a white rug",
)

# DreamBooth subjects (and the words of their class names).
SUBJECT_WORDS: tuple[str, ...] = tuple(
    "dog cat toy backpack bear plushie berry bowl can candle clock colorful sneaker duck fancy boot "
    "grey sloth monster sunglasses poop emoji rc car red cartoon robot shiny teapot vase wolf puppy "
    "kitten teddy".split()
)

COMMON_WORDS: tuple[str, ...] = tuple(
    """a an the of and or to in on at by for with from into onto over under above below near
    behind beside between around through across up down out off about after before while
    is are was were be been being has have had do does did will would can could should may might
    i you he she it we they me him her us them my your his its our their this that these those
    what which who whom whose where when why how all any both each few more most other some such
    no nor not only own same so than too very just also well still even back again once here there
    one two three four five six seven eight nine ten first second last next new old good great
    little big small large long short high low young early late right left best better
    photo picture image painting drawing sketch render illustration portrait close view shot
    style art artist digital oil watercolor realistic detailed sharp focus light lighting dark
    bright soft warm cold sunny cloudy rainy night day morning evening sunset sunrise sky cloud
    sun moon star rain wind fire ice stone rock sand water sea lake river ocean wave beach island
    mountain hill valley field forest tree trees wood wooden leaf leaves flower flowers grass garden
    park road street sidewalk city town village house home room kitchen table chair bed window door
    wall floor roof bridge tower castle church building car bus train boat ship plane bike
    man woman person people boy girl child children baby friend family face eye eyes hair hand
    head body arm leg foot feet smile
    dog cat bird fish horse cow pig sheep lion tiger bear fox rabbit mouse duck owl
    white black gray green blue yellow orange purple pink brown gold silver colorful
    red dark light wet dry clean dirty soft hard hot warm cute happy sad funny beautiful pretty
    ugly strange modern ancient vintage classic simple plain wooden metal glass plastic paper
    cloth fabric wool cotton leather rug carpet mirror milk wheat sunflower sunflowers autumn
    winter summer spring snow jungle cobblestone crowded dirt floating background top
    sitting standing walking running jumping flying swimming sleeping playing eating looking
    wearing holding made make made take see look find give tell work call try ask need feel become
    leave put mean keep let begin seem help show hear play run move live believe bring happen
    write provide sit stand lose pay meet include continue set learn change lead understand watch
    follow stop create speak read allow add spend grow open walk win offer remember love consider
    appear buy wait serve die send expect build stay fall cut reach kill remain
    time year way thing world life hand part place case week company system program question
    government number point group problem fact
    """.split()
)

SPECIAL_BOS = "<|startoftext|>"
SPECIAL_EOS = "<|endoftext|>"
_END_OF_WORD = "</w>"
# CLIP's pre-tokenizer regex, restricted to the ASCII corpus (\p{L} -> [a-z], \p{N} -> [0-9]).
_CORPUS_WORD_RE = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+")


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable unicode char table (same insertion order)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def tokenizer_corpus() -> str:
    """The built-in English corpus the BPE merges are learned from."""
    prompts = [f"a {s} {b}" for s in ("dog", "cat", "toy", "backpack") for b in BACKGROUND_PROMPTS]
    return "\n".join([*prompts, " ".join(SUBJECT_WORDS), " ".join(COMMON_WORDS), "0 1 2 3 4 5 6 7 8 9 , . ! ?"])


def _word_symbols(word: str) -> tuple[str, ...]:
    """A pre-token as CLIP's BPE sees it: byte-level chars, the last one with ``</w>``."""
    b2u = bytes_to_unicode()
    chars = [b2u[b] for b in word.encode("utf-8")]
    return (*chars[:-1], chars[-1] + _END_OF_WORD)


def _merge_word(symbols: Sequence[str], pair: tuple[str, str]) -> list[str]:
    """Merge every non-overlapping occurrence of ``pair``, left to right (as CLIP's ``bpe``)."""
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == pair[0] and symbols[i + 1] == pair[1]:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def learn_bpe_merges(word_counts: Mapping[str, int]) -> list[tuple[str, str]]:
    """Greedy pair-count BPE until every word is one symbol.

    Each round merges the most frequent adjacent pair (counts weighted by word frequency); ties
    go to the lexicographically smallest pair. Incremental counts + a lazy heap keep it fast.
    """
    keys = sorted(word_counts)
    words = [list(_word_symbols(w)) for w in keys]
    weight = [word_counts[w] for w in keys]
    pair_counts: Counter[tuple[str, str]] = Counter()
    where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for i, syms in enumerate(words):
        for p in zip(syms, syms[1:]):
            pair_counts[p] += weight[i]
            where[p].add(i)
    heap = [(-c, p) for p, c in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while heap:
        neg, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg or neg == 0:
            continue  # stale heap entry
        merges.append(pair)
        touched: set[tuple[str, str]] = set()
        for i in sorted(where.pop(pair, ())):
            old = words[i]
            new = _merge_word(old, pair)
            if len(new) == len(old):
                continue
            for p in zip(old, old[1:]):
                pair_counts[p] -= weight[i]
                touched.add(p)
            for p in zip(new, new[1:]):
                pair_counts[p] += weight[i]
                where[p].add(i)
                touched.add(p)
            words[i] = new
        for p in sorted(touched):
            c = pair_counts[p]
            if c > 0:
                heapq.heappush(heap, (-c, p))
            else:
                pair_counts.pop(p, None)
    return merges


@dataclass(frozen=True)
class ClipBpe:
    """A CLIP BPE vocabulary: ``tokens`` in id order, ``merges`` in rank order."""

    tokens: tuple[str, ...]
    merges: tuple[tuple[str, str], ...]

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def bos_id(self) -> int:
        return self.tokens.index(SPECIAL_BOS)

    @property
    def eos_id(self) -> int:
        return self.tokens.index(SPECIAL_EOS)

    def vocab(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}


@lru_cache(maxsize=1)
def build_clip_bpe() -> ClipBpe:
    """CLIP's vocab order: 256 byte chars, the same with ``</w>``, one token per merge, specials.

    A merge whose result is already a token (two merge paths to one string) adds no new id.
    """
    corpus = tokenizer_corpus().lower()
    if not corpus.isascii():
        raise AssertionError("the tokenizer corpus must be ASCII")
    counts = Counter(_CORPUS_WORD_RE.findall(corpus))
    merges = learn_bpe_merges(counts)
    base = list(bytes_to_unicode().values())
    tokens = base + [c + _END_OF_WORD for c in base]
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            tokens.append(a + b)
    tokens += [SPECIAL_BOS, SPECIAL_EOS]
    return ClipBpe(tokens=tuple(tokens), merges=tuple(merges))


def _added_token(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


def write_clip_tokenizer(folder: Path, bpe: ClipBpe) -> None:
    """vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json as in SD1.5's repo."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "vocab.json", bpe.vocab(), indent=None, sort_keys=False)  # id order, one line
    merges = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in bpe.merges)
    (folder / "merges.txt").write_text(merges, encoding="utf-8")
    _write_json(
        folder / "special_tokens_map.json",
        {
            "bos_token": _added_token(SPECIAL_BOS),
            "eos_token": _added_token(SPECIAL_EOS),
            "pad_token": SPECIAL_EOS,
            "unk_token": _added_token(SPECIAL_EOS),
        },
    )
    _write_json(
        folder / "tokenizer_config.json",
        {
            "add_prefix_space": False,
            "bos_token": {"__type": "AddedToken", **_added_token(SPECIAL_BOS)},
            "do_lower_case": True,
            "eos_token": {"__type": "AddedToken", **_added_token(SPECIAL_EOS)},
            "errors": "replace",
            "model_max_length": CLIP_MAX_LENGTH,
            "pad_token": SPECIAL_EOS,
            "tokenizer_class": "CLIPTokenizer",
            "unk_token": {"__type": "AddedToken", **_added_token(SPECIAL_EOS)},
        },
    )


# --------------------------------------------------------------------------------------------
# Deterministic weights, streamed into .safetensors
# --------------------------------------------------------------------------------------------

# How a tensor is initialised (see InitScales).
WEIGHT, BIAS, NORM_WEIGHT, NORM_BIAS, EMBEDDING = "weight", "bias", "norm_weight", "norm_bias", "embedding"


@dataclass(frozen=True)
class TensorSpec:
    """One tensor to write: its state-dict name, shape and init kind."""

    name: str
    shape: tuple[int, ...]
    kind: str

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def tensor_specs(model) -> list[TensorSpec]:
    """Name, shape and init kind of every state-dict tensor of a (meta) ``nn.Module``."""
    from torch import nn

    specs: list[TensorSpec] = []
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            name = f"{mod_name}.{p_name}" if mod_name else p_name
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                kind = WEIGHT if p_name == "weight" else BIAS
            elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
                kind = NORM_WEIGHT if p_name == "weight" else NORM_BIAS
            elif isinstance(module, nn.Embedding) or p.ndim == 1:
                kind = EMBEDDING  # token / position tables, CLIP's class embedding
            else:
                raise TypeError(f"no init rule for {name} in {type(module).__name__}")
            specs.append(TensorSpec(name, tuple(p.shape), kind))
    state_keys = set(model.state_dict())
    if state_keys != {s.name for s in specs}:
        raise AssertionError(f"state dict and parameters differ: {sorted(state_keys ^ {s.name for s in specs})}")
    return specs


def ip_adapter_tensor_specs(unet, embed_dim: int) -> list[TensorSpec]:
    """``h94/IP-Adapter`` ``ip-adapter_sd15`` tensors for a UNet (a meta one is enough).

    ``image_proj``: Linear(embed_dim -> 4 * cross_attention_dim) + LayerNorm(cross_attention_dim).
    ``ip_adapter.{k}``: k = 1, 3, 5, ... -- the index of each cross-attention (attn2) processor in
    ``unet.attn_processors`` order (attn1 takes the even ids), as diffusers'
    ``_convert_ip_adapter_attn_to_diffusers`` reads them; ``to_k_ip`` / ``to_v_ip`` map
    cross_attention_dim -> that layer's hidden size, no bias.
    """
    cross = unet.config.cross_attention_dim
    specs = [
        TensorSpec("image_proj.proj.weight", (N_IP_TOKENS * cross, embed_dim), WEIGHT),
        TensorSpec("image_proj.proj.bias", (N_IP_TOKENS * cross,), BIAS),
        TensorSpec("image_proj.norm.weight", (cross,), NORM_WEIGHT),
        TensorSpec("image_proj.norm.bias", (cross,), NORM_BIAS),
    ]
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        attn = unet.get_submodule(name[: -len(".processor")])
        hidden = attn.to_k.out_features  # inner dim == the block's channels
        for proj in ("to_k_ip", "to_v_ip"):
            specs.append(TensorSpec(f"ip_adapter.{key_id}.{proj}.weight", (hidden, cross), WEIGHT))
        key_id += 2
    return specs


def tensor_seed(preset: str, component: str, name: str) -> int:
    """Stable per-tensor seed: crc32 of ``"<preset>/<component>/<name>"``."""
    return zlib.crc32(f"{preset}/{component}/{name}".encode())


def _init_array(preset: ModelPreset, component: str, spec: TensorSpec) -> np.ndarray:
    """The tensor's values (float32), from its own seeded numpy stream (see InitScales)."""
    s = preset.scales
    rng = np.random.default_rng(tensor_seed(preset.name, component, spec.name))
    x = rng.standard_normal(spec.numel, dtype=np.float32).reshape(spec.shape)
    if spec.kind == WEIGHT:
        fan_in = int(np.prod(spec.shape[1:], dtype=np.int64))
        x *= np.float32(s.gain(component, spec.name) / np.sqrt(fan_in))
    elif spec.kind == BIAS:
        x *= np.float32(s.bias_std)
    elif spec.kind == NORM_WEIGHT:
        x *= np.float32(s.norm_weight_std)
        x += np.float32(1.0)
    elif spec.kind == NORM_BIAS:
        x *= np.float32(s.norm_bias_std)
    elif spec.kind == EMBEDDING:
        x *= np.float32(s.embedding_std)
    else:
        raise ValueError(f"unknown init kind {spec.kind!r}")
    return x


_REPORT_EVERY_BYTES = 256 * 2**20  # files this big also report every 10%


def write_safetensors(
    path: Path,
    specs: Sequence[TensorSpec],
    fill: Callable[[TensorSpec], np.ndarray],
    progress: Progress = None,
    label: str = "",
) -> None:
    """Stream float32 tensors into a ``.safetensors`` file, one tensor in memory at a time.

    The header is computed from the shapes first (names sorted, data in the same order, header
    space-padded to 8 bytes, ``{"format": "pt"}`` metadata), so the bytes depend only on the
    specs and the filled values.
    """
    specs = sorted(specs, key=lambda s: s.name)
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for s in specs:
        nbytes = 4 * s.numel
        header[s.name] = {"dtype": "F32", "shape": list(s.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    total, done = offset, 0
    next_report = 0.1 if total >= _REPORT_EVERY_BYTES else 2.0  # small files: one line at the end
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for s in specs:
            arr = np.ascontiguousarray(fill(s), dtype="<f4")
            if arr.shape != s.shape:
                raise AssertionError(f"{s.name}: filled {arr.shape}, expected {s.shape}")
            f.write(arr.tobytes())
            done += arr.nbytes
            if progress is not None and done < total and done / total >= next_report:
                progress(f"{label}: {done / 2**20:.0f}/{total / 2**20:.0f} MiB")
                next_report = done / total + 0.1
    if progress is not None:
        progress(f"{label}: wrote {path.name} ({len(specs)} tensors, {total / 2**20:.1f} MiB)")


def _write_weights(
    path: Path, preset: ModelPreset, component: str, specs: Sequence[TensorSpec], progress: Progress
) -> None:
    write_safetensors(path, specs, lambda s: _init_array(preset, component, s), progress, label=component)


# --------------------------------------------------------------------------------------------
# Writers for each folder
# --------------------------------------------------------------------------------------------


def _write_json(path: Path, obj, indent: int | None = 2, sort_keys: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")


def _write_diffusers_model(folder: Path, model, preset: ModelPreset, component: str, progress: Progress) -> None:
    """config.json (diffusers ``save_config``) + diffusion_pytorch_model.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_config(folder)
    _write_weights(folder / "diffusion_pytorch_model.safetensors", preset, component, tensor_specs(model), progress)


# The hub checkpoints name CLIPTextModel tensors "text_model.*" (transformers < 5 had that submodule;
# transformers 5 dropped it, still loads the prefixed names, but would save unprefixed ones).
_HUB_KEY_PREFIX = {"CLIPTextModel": "text_model."}


def hub_tensor_specs(model) -> list[TensorSpec]:
    """``tensor_specs`` under the names the hub checkpoints use (see ``_HUB_KEY_PREFIX``)."""
    prefix = _HUB_KEY_PREFIX.get(type(model).__name__, "")
    return [
        s if s.name.startswith(prefix) else TensorSpec(prefix + s.name, s.shape, s.kind) for s in tensor_specs(model)
    ]


def _write_transformers_model(folder: Path, model, preset: ModelPreset, component: str, progress: Progress) -> None:
    """config.json (transformers ``save_pretrained``) + model.safetensors with hub tensor names."""
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    _write_weights(folder / "model.safetensors", preset, component, hub_tensor_specs(model), progress)


def _write_model_index(base: Path) -> None:
    import diffusers

    _write_json(
        base / "model_index.json",
        {
            "_class_name": "LatentConsistencyModelPipeline",
            "_diffusers_version": diffusers.__version__,
            "feature_extractor": ["transformers", "CLIPImageProcessor"],
            "image_encoder": [None, None],
            "requires_safety_checker": False,
            "safety_checker": [None, None],
            "scheduler": ["diffusers", "LCMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
    )


def write_base(base: Path, preset: ModelPreset, models: Mapping, bpe: ClipBpe, progress: Progress = None) -> None:
    """The ``LCM_Dreamshaper_v7``-layout pipeline folder."""
    _write_model_index(base)
    _write_diffusers_model(base / "unet", models["unet"], preset, "unet", progress)
    _write_diffusers_model(base / "vae", models["vae"], preset, "vae", progress)
    _write_transformers_model(base / "text_encoder", models["text_encoder"], preset, "text_encoder", progress)
    write_clip_tokenizer(base / "tokenizer", bpe)
    import diffusers

    cfg = {"_class_name": "LCMScheduler", "_diffusers_version": diffusers.__version__, **scheduler_config()}
    _write_json(base / "scheduler" / "scheduler_config.json", cfg)
    _write_json(base / "feature_extractor" / "preprocessor_config.json", feature_extractor_config())


def write_ip_adapter(folder: Path, preset: ModelPreset, models: Mapping, progress: Progress = None) -> None:
    """The ``h94/IP-Adapter`` layout: ``models/ip-adapter_sd15.safetensors`` + ``models/image_encoder/``."""
    specs = ip_adapter_tensor_specs(models["unet"], preset.vision.projection_dim)
    _write_weights(folder / "models" / IP_ADAPTER_WEIGHT_NAME, preset, "ip_adapter", specs, progress)
    _write_transformers_model(folder / "models" / "image_encoder", models["image_encoder"], preset, "image_encoder", progress)


def draw_subject(size: int = 256):
    """A deterministic toy-like subject (a teddy bear with a blue bow) on a plain background."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (256, 256), (226, 232, 240))
    d = ImageDraw.Draw(img)
    fur, light, dark = (176, 112, 58), (226, 180, 130), (40, 28, 22)
    d.ellipse((70, 206, 186, 226), fill=(200, 206, 214))  # shadow
    d.ellipse((78, 112, 178, 214), fill=fur)  # body
    d.ellipse((103, 140, 153, 200), fill=light)  # belly
    d.ellipse((56, 124, 92, 168), fill=fur)  # arms
    d.ellipse((164, 124, 200, 168), fill=fur)
    d.ellipse((80, 188, 118, 222), fill=fur)  # feet
    d.ellipse((138, 188, 176, 222), fill=fur)
    d.ellipse((78, 30, 114, 66), fill=fur)  # ears
    d.ellipse((142, 30, 178, 66), fill=fur)
    d.ellipse((88, 40, 104, 56), fill=light)
    d.ellipse((152, 40, 168, 56), fill=light)
    d.ellipse((84, 38, 172, 122), fill=fur)  # head
    d.ellipse((110, 82, 146, 112), fill=light)  # muzzle
    d.ellipse((106, 64, 116, 76), fill=dark)  # eyes
    d.ellipse((140, 64, 150, 76), fill=dark)
    d.ellipse((121, 84, 135, 94), fill=dark)  # nose
    d.polygon([(128, 124), (104, 112), (104, 136)], fill=(40, 90, 200))  # bow
    d.polygon([(128, 124), (152, 112), (152, 136)], fill=(40, 90, 200))
    d.ellipse((122, 118, 134, 130), fill=(30, 70, 170))
    return img if size == 256 else img.resize((size, size), Image.Resampling.BICUBIC)


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyModelPaths:
    """Where ``write_tiny_model`` put things."""

    base: Path  # diffusers LatentConsistencyModelPipeline folder
    ip_adapter: Path  # h94/IP-Adapter layout (use subfolder="models")
    subject: Path  # 256x256 RGB demo subject


TINY_MODEL_RECORD = "tiny-model.json"  # lists the files written, so a re-run replaces only those


def write_tiny_model(out_dir: Path, preset: str = "tiny", progress: Progress = None) -> TinyModelPaths:
    """Write ``base/``, ``ip-adapter/`` and ``subject.png`` under ``out_dir``; return their paths.

    Deterministic: every weight file has the same bytes on every machine and run. ``preset``
    is ``"tiny"`` (fast tests) or ``"sd15"`` (real sizes, random weights; several GB).
    ``progress`` receives short human-readable status lines.

    Atomic (monkey_trt.core.files.OutputStage): written into a staging folder next to ``out_dir`` and
    committed at the end, so an interrupted run never leaves truncated weights; the staging folder
    of a killed run is removed by the next. An existing ``out_dir`` keeps files it did not get from
    here; ``tiny-model.json`` records what was written.
    """
    from monkey_trt.core.files import WRITTEN_BY, OutputStage, staged_files

    p = get_preset(preset)
    out = Path(out_dir).absolute()
    names = ["subject.png", "base/model_index.json", TINY_MODEL_RECORD]
    with OutputStage.open(out, TINY_MODEL_RECORD, names=names) as stage:
        say = progress or (lambda _msg: None)
        bpe = build_clip_bpe()
        models = meta_models(p, bpe)
        say(f"writing preset {p.name!r} to {out}")
        write_base(stage.path / "base", p, models, bpe, progress)
        write_ip_adapter(stage.path / "ip-adapter", p, models, progress)
        draw_subject().save(stage.path / "subject.png")
        files = staged_files(stage.path) + [TINY_MODEL_RECORD]
        _write_json(stage.path / TINY_MODEL_RECORD, {"written_by": WRITTEN_BY, "preset": p.name, "files": files})
        stage.commit(files)
    say("done")
    return TinyModelPaths(base=out / "base", ip_adapter=out / "ip-adapter", subject=out / "subject.png")
