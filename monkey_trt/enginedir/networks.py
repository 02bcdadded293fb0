"""One descriptor per network: input/output names, dtypes, dynamic axes and shape profiles.

The exporter traces with these names, the manifest records them, the TensorRT builder turns
`profile_shapes` into optimisation profiles and the runtime allocates buffers from them.
Lean: stdlib only.

Symbolic dims: B (batch), H/W (image pixels), h/w (latent = H/8, W/8), Q (query tokens at the
mask layer, e.g. h/4 * w/4 for SD1.5's `up_blocks.1`), N (IP images in a request: the subjects, + 1 with a
background image) and NT (their IP tokens, N * n_ip_tokens), and model constants filled in from ModelDims.
A UNet exported before the image axis has the static N = 1 (`ip_mask` [B, 1, H, W], `ip_tokens` [B, 4, D]).
"""

from __future__ import annotations

from dataclasses import dataclass

from monkey_trt.core.errors import MonkeyError

NETWORKS = ("text_encoder", "image_encoder", "unet", "vae_decoder")  # every engine directory has these
# The map-only UNet (export/map_graph.py): the UNet cut after the mask layer's map, for pass 1's last call. Optional:
# directories exported before it run that call on the full UNet.
MAP_NETWORK = "unet_map"
MAP_OUTPUT = "ip_attn_map"
OPTIONAL_NETWORKS = (MAP_NETWORK,)
UNET_INPUTS = ("sample", "timestep", "encoder_hidden_states", "timestep_cond", "ip_tokens", "ip_scale", "ip_mask")
UNET_OUTPUTS = ("noise_pred", "ip_attn_map")
TEXT_LEN = 77  # CLIP text context (tokens)
N_IP_TOKENS = 4  # IP-Adapter (non-plus): one image embedding -> 4 context tokens
MAX_SUBJECTS_DEFAULT = 4  # `export --max-subjects`: subject images per request (the graphs take one more: the background)
MAX_SUBJECTS_LIMIT = 16  # the most `--max-subjects` accepts (IP attention memory grows with the images)
# CLIP's image normalisation (the image encoder's preprocessing; the manifest records the values used)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ModelDims:
    """Sizes that fix the static dims of every network (read from the model configs at export)."""

    text_len: int = TEXT_LEN
    text_dim: int = 768  # CLIP text hidden == UNet cross_attention_dim
    time_cond_dim: int = 256
    n_ip_tokens: int = N_IP_TOKENS
    n_ip_layers: int = 16
    latent_channels: int = 4
    vae_factor: int = 8
    image_size: int = 224  # CLIP vision input


@dataclass(frozen=True)
class ShapeRange:
    """min/opt/max of one dynamic size."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not (0 < self.min <= self.opt <= self.max):
            raise ValueError(f"need 0 < min <= opt <= max, got {self.min}/{self.opt}/{self.max}")

    def contains(self, v: int) -> bool:
        return self.min <= v <= self.max

    def as_list(self) -> list[int]:
        return [self.min, self.opt, self.max]


@dataclass(frozen=True)
class Profile:
    """The request shapes an engine directory supports (pixels; batch = images per request)."""

    batch: ShapeRange
    height: ShapeRange
    width: ShapeRange

    @classmethod
    def static(cls, batch: int, height: int, width: int) -> "Profile":
        return cls(ShapeRange(batch, batch, batch), ShapeRange(height, height, height), ShapeRange(width, width, width))

    @classmethod
    def from_dict(cls, d: dict) -> "Profile":
        return cls(*(ShapeRange(*d[k]) for k in ("batch", "height", "width")))

    def to_dict(self) -> dict:
        return {"batch": self.batch.as_list(), "height": self.height.as_list(), "width": self.width.as_list()}

    def check(self, batch: int, height: int, width: int) -> str | None:
        """None if the request fits, else a one-line reason."""
        for name, rng, v in (("batch", self.batch, batch), ("height", self.height, height), ("width", self.width, width)):
            if not rng.contains(v):
                return f"{name} {v} is outside the engine profile {rng.min}..{rng.max} (re-export with --min/--max)"
        return None


@dataclass(frozen=True)
class TensorDesc:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple[int | str, ...]  # ints are static, strings are symbolic dims


@dataclass(frozen=True)
class NetworkDesc:
    """One exported network."""

    name: str
    inputs: tuple[TensorDesc, ...]
    outputs: tuple[TensorDesc, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """torch.onnx.export's dynamic_axes: every symbolic dim of every tensor."""
        axes: dict[str, dict[int, str]] = {}
        for t in self.inputs + self.outputs:
            sym = {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
            if sym:
                axes[t.name] = sym
        return axes

    def resolve(self, shape: tuple[int | str, ...], sizes: dict[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else sizes[d] for d in shape)

    def profile_shapes(self, profile: Profile, dims: ModelDims, max_images: int = 1) -> dict[str, tuple[tuple[int, ...], ...]]:
        """Input name -> (min, opt, max) concrete shapes, for TensorRT optimisation profiles.

        max_images: the most IP images per UNet call (Manifest.max_ip_images): the image axis N runs 1..max_images,
        opt 1 (`ip_tokens` T..T*max_images, `ip_mask` 1..max_images); a graph with a static N ignores it."""
        out: dict[str, tuple[tuple[int, ...], ...]] = {}
        picks = [(profile.batch.min, profile.height.min, profile.width.min, 1),
                 (profile.batch.opt, profile.height.opt, profile.width.opt, 1),
                 (profile.batch.max, profile.height.max, profile.width.max, max_images)]
        for t in self.inputs:
            out[t.name] = tuple(self.resolve(t.shape, symbol_sizes(b, h, w, dims, n)) for b, h, w, n in picks)
        return out


def symbol_sizes(batch: int, height: int, width: int, dims: ModelDims, images: int = 1) -> dict[str, int]:
    """Concrete values of the symbolic dims for one request size with `images` IP images per sample."""
    return {"B": batch, "H": height, "W": width, "h": height // dims.vae_factor, "w": width // dims.vae_factor,
            "N": images, "NT": images * dims.n_ip_tokens}


def max_ip_images(desc: NetworkDesc, max_subjects: int) -> int:
    """The most IP images one call of UNet graph `desc` takes: max_subjects + 1 (the background slot) when its
    `ip_mask` has the image axis N, 1 for a graph exported before it (static [B, 1, H, W])."""
    mask = next(t for t in desc.inputs if t.name == "ip_mask")
    return max_subjects + 1 if isinstance(mask.shape[1], str) else int(mask.shape[1])


def _descs(dims: ModelDims) -> dict[str, NetworkDesc]:
    f32, i64 = "float32", "int64"
    T = TensorDesc
    return {
        "text_encoder": NetworkDesc(
            "text_encoder",
            inputs=(T("input_ids", i64, ("B", dims.text_len)),),
            outputs=(T("text_embeds", f32, ("B", dims.text_len, dims.text_dim)),),
        ),
        "image_encoder": NetworkDesc(
            "image_encoder",
            inputs=(T("pixel_values", f32, ("B", 3, dims.image_size, dims.image_size)),),
            outputs=(T("ip_tokens", f32, ("B", dims.n_ip_tokens, dims.text_dim)),),
        ),
        "unet": NetworkDesc(
            "unet",
            inputs=(
                T("sample", f32, ("B", dims.latent_channels, "h", "w")),
                T("timestep", f32, ("B",)),
                T("encoder_hidden_states", f32, ("B", dims.text_len, dims.text_dim)),
                T("timestep_cond", f32, ("B", dims.time_cond_dim)),
                T("ip_tokens", f32, ("B", "NT", dims.text_dim)),  # N images x n_ip_tokens
                T("ip_scale", f32, (dims.n_ip_layers,)),
                T("ip_mask", f32, ("B", "N", "H", "W")),  # one plane per IP image
            ),
            outputs=(
                T("noise_pred", f32, ("B", dims.latent_channels, "h", "w")),
                T(MAP_OUTPUT, f32, ("B", "Q", "NT")),  # per image: its own softmax over its n_ip_tokens
            ),
        ),
        "vae_decoder": NetworkDesc(
            "vae_decoder",
            inputs=(T("latents", f32, ("B", dims.latent_channels, "h", "w")),),
            outputs=(T("images", f32, ("B", 3, "H", "W")),),
        ),
    }


def network_descs(dims: ModelDims) -> dict[str, NetworkDesc]:
    """The four networks of an engine directory, and the optional map-only UNet (OPTIONAL_NETWORKS)."""
    descs = _descs(dims)
    return descs | {MAP_NETWORK: map_desc(descs["unet"])}


def map_desc(unet: NetworkDesc) -> NetworkDesc:
    """The map-only UNet of UNet graph `unet`: its inputs (every one reaches the mask layer), its map alone out
    (so a UNet exported before the image axis gets a map-only graph with the same static N = 1)."""
    return NetworkDesc(MAP_NETWORK, inputs=unet.inputs, outputs=tuple(t for t in unet.outputs if t.name == MAP_OUTPUT))


# -- export options -> profile ------------------------------------------------------------------
def parse_size(text: str, name: str) -> tuple[int, int]:
    """'HxW' (or a single side) -> (height, width)."""
    try:
        parts = [int(x) for x in text.lower().split("x")]
    except ValueError:
        raise MonkeyError(f"--{name} must look like 512x512, got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise MonkeyError(f"--{name} must look like 512x512, got {text!r}")
    return parts[0], parts[1]


def check_max_subjects(k) -> int:
    """`export --max-subjects K`: an int in 1..MAX_SUBJECTS_LIMIT (one-line MonkeyError otherwise)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_SUBJECTS_LIMIT:
        raise MonkeyError(f"--max-subjects must be an integer in 1..{MAX_SUBJECTS_LIMIT}, got {k!r}")
    return k


def profile_from_options(height: int, width: int, min_size: str | None, max_size: str | None, batch: int) -> "Profile":
    """`export --height --width --min --max --batch` -> the engine's shape profile (one-line MonkeyError when wrong)."""
    lo = parse_size(min_size, "min") if min_size else (height, width)
    hi = parse_size(max_size, "max") if max_size else (height, width)
    for name, v in (("height", height), ("width", width), ("min", lo[0]), ("min", lo[1]), ("max", hi[0]), ("max", hi[1])):
        if v <= 0 or v % 8:
            raise MonkeyError(f"--{name} sizes must be positive multiples of 8, got {v}")
    if not (lo[0] <= height <= hi[0] and lo[1] <= width <= hi[1]):
        raise MonkeyError(f"need --min <= {height}x{width} <= --max, got {lo[0]}x{lo[1]} .. {hi[0]}x{hi[1]}")
    if not 1 <= batch <= 64:
        raise MonkeyError(f"--batch must be in 1..64, got {batch}")
    return Profile(ShapeRange(1, 1, batch), ShapeRange(lo[0], height, hi[0]), ShapeRange(lo[1], width, hi[1]))
