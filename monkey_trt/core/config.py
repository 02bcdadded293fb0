"""MONKEY's knobs (SPEC.md defaults) and the generation request, as frozen dataclasses.

Pure Python: imported by the reference, the exporter and the lean runtime alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from monkey_trt.core.errors import MonkeyError

DEFAULT_BASE = "SimianLuo/LCM_Dreamshaper_v7"
DEFAULT_IP_ADAPTER = "h94/IP-Adapter"
DEFAULT_IP_WEIGHT = "ip-adapter_sd15"  # .safetensors preferred, .bin accepted
DEFAULT_MASK_LAYER = "up_blocks.1.attentions.1.transformer_blocks.0.attn2"
N_IP_TOKENS = 4  # IP-Adapter (non-plus) projects one image embedding to 4 tokens
MAX_TOKENS = 77  # CLIP text context
MIN_SIDE, MAX_SIDE = 64, 2048


def check_threads(threads: int, flag: str = "--threads") -> int:
    """CPU threads for torch / each ORT session: 0 (the library default) or a positive count."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise MonkeyError(f"{flag} must be >= 0 (0 = library default), got {threads}")
    import os

    most = 4 * (os.cpu_count() or 1)  # the machine's cores x 4: beyond that, threads only contend
    if threads > most:
        raise MonkeyError(f"{flag} must be at most {most} (4 x the {os.cpu_count() or 1} CPU cores), got {threads}")
    return threads


@dataclass(frozen=True)
class MonkeyConfig:
    """Every knob of the method. Steps are 0-based indices into each pass's LCM schedule."""

    steps_mask_pass: int = 4
    mask_steps: tuple[int, ...] = (1, 2)
    mask_layer: str = DEFAULT_MASK_LAYER
    mask_token: int = 1
    threshold: float = 0.5
    scale_mask_pass: float = 1.0
    steps_final: int = 8
    masked_steps: tuple[int, ...] = (2, 3, 4, 5)
    scale_final: float = 1.0
    guidance_scale: float = 8.5

    def __post_init__(self) -> None:
        # Normalise list inputs (CLI, JSON) to sorted unique tuples; dataclass is frozen.
        object.__setattr__(self, "mask_steps", tuple(sorted(set(int(s) for s in self.mask_steps))))
        object.__setattr__(self, "masked_steps", tuple(sorted(set(int(s) for s in self.masked_steps))))
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise MonkeyError(msg)

        need(1 <= self.steps_mask_pass <= 50, f"steps_mask_pass must be in 1..50, got {self.steps_mask_pass}")
        need(1 <= self.steps_final <= 50, f"steps_final must be in 1..50, got {self.steps_final}")
        need(len(self.mask_steps) > 0, "mask_steps must name at least one step")
        need(
            all(0 <= s < self.steps_mask_pass for s in self.mask_steps),
            f"mask_steps {list(self.mask_steps)} must lie in 0..{self.steps_mask_pass - 1} (steps_mask_pass={self.steps_mask_pass})",
        )
        need(
            all(0 <= s < self.steps_final for s in self.masked_steps),
            f"masked_steps {list(self.masked_steps)} must lie in 0..{self.steps_final - 1} (steps_final={self.steps_final})",
        )
        need(0 <= self.mask_token < N_IP_TOKENS, f"mask_token must be in 0..{N_IP_TOKENS - 1}, got {self.mask_token}")
        need(0.0 <= self.threshold < 1.0, f"threshold must be in [0, 1), got {self.threshold}")
        need(0.0 <= self.scale_mask_pass <= 4.0, f"scale_mask_pass must be in [0, 4], got {self.scale_mask_pass}")
        need(0.0 <= self.scale_final <= 4.0, f"scale_final must be in [0, 4], got {self.scale_final}")
        need(1.0 <= self.guidance_scale <= 30.0, f"guidance_scale must be in [1, 30], got {self.guidance_scale}")
        need(self.mask_layer.endswith("attn2"), f"mask_layer must be a cross-attention (attn2) layer, got {self.mask_layer!r}")

    @property
    def mask_pass_steps_needed(self) -> int:
        """Pass 1 may stop after its last mask step: later steps cannot change the mask."""
        return max(self.mask_steps) + 1

    @property
    def noise_steps(self) -> int:
        """Steps of the longer pass: a noise plan holds its latents and noise_steps - 1 step noises."""
        return max(self.steps_mask_pass, self.steps_final)

    def final_scales(self) -> list[float]:
        """IP-Adapter scale per step of pass 2: `scale_final` at masked steps, 0 elsewhere."""
        return [self.scale_final if i in self.masked_steps else 0.0 for i in range(self.steps_final)]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mask_steps"] = list(self.mask_steps)
        d["masked_steps"] = list(self.masked_steps)
        return d


@dataclass(frozen=True)
class Request:
    """One generation: what to draw, from which subject, at which size, with which noise."""

    prompt: str
    height: int = 512
    width: int = 512
    seed: int = 0
    config: MonkeyConfig = field(default_factory=MonkeyConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise MonkeyError("prompt is empty: MONKEY needs a text prompt for the background")
        try:
            self.prompt.encode("utf-8")
        except UnicodeEncodeError:  # undecodable bytes from the command line arrive as lone surrogates
            raise MonkeyError("prompt is not valid UTF-8 text") from None
        for name, side in (("height", self.height), ("width", self.width)):
            if side % 8 != 0:
                raise MonkeyError(f"{name} must be a multiple of 8, got {side}")
            if not MIN_SIDE <= side <= MAX_SIDE:
                raise MonkeyError(f"{name} must be in {MIN_SIDE}..{MAX_SIDE}, got {side}")
        if not 0 <= self.seed < 2**63:
            raise MonkeyError(f"seed must be in 0..2**63-1, got {self.seed}")

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        return (1, 4, self.height // 8, self.width // 8)
