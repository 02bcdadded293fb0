"""What one MONKEY generation returns, whichever backend ran it (lean: numpy only)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from monkey_trt.core.errors import MonkeyError
from monkey_trt.runtime.images import to_uint8
from monkey_trt.runtime.mask import MaskResult
from monkey_trt.runtime.outputs import write_outputs


@dataclass(frozen=True)
class UNetCallTiming:
    """One UNet call: which passes it served ("p1", "p2", "p1+p2" when batched, "ip" = baseline), at which step."""

    passes: str
    step: int  # 0-based step index within the pass(es)
    batch: int
    seconds: float
    graph: str = "unet"  # which graph ran: "unet", or "unet_map" (the map-only UNet: pass 1's last call, noise_pred unread)

    @property
    def label(self) -> str:
        return f"unet {self.passes} s{self.step}" + (" map-only" if self.graph != "unet" else "")


@dataclass(frozen=True)
class MonkeyOutput:
    image: np.ndarray  # [H, W, 3] float32 in [0, 1]: pass 2 decoded, before quantisation
    mask: MaskResult  # mask.mask: [H, W] float32 {0, 1}
    timings: dict[str, float]  # seconds per stage
    backend: str
    mask_pass_image: np.ndarray | None = None  # [H, W, 3] pass 1's prediction at its last mask step (only when asked)
    baseline_image: np.ndarray | None = None  # [H, W, 3] plain IP-Adapter from the same noise
    prompt_truncated: bool = False
    warnings: tuple[str, ...] = field(default_factory=tuple)
    unet_calls: tuple[UNetCallTiming, ...] = ()  # every UNet call, in order
    batched_steps: int = 0  # leading steps that ran as one batch-2 call for both passes
    record: dict = field(default_factory=dict)  # what made it (result.json's request fields: prompt, seed, size, config, models, ...)
    # several subjects (docs/method.md "Several subjects and a background"); one subject: masks == (mask,)
    masks: tuple[MaskResult, ...] = ()  # final mask per subject, in order; `mask` is masks[0] (S = 1) or their union
    overlap: float = 0.0  # fraction of image pixels in two or more subjects' raw masks (given to one by the score rule)
    lost: tuple[float, ...] = ()  # per subject: the fraction of its raw mask's pixels that went to another subject
    background_mask: np.ndarray | None = None  # [H, W] float32 {0,1}: 1 - union(masks), with a background image
    subjects: int = 1  # subject images
    scales: tuple[float, ...] = ()  # each subject's IP scale (config.subject_scales, or 1.0 each)
    background_scale: float | None = None  # the background image's IP scale (None: no background)

    def __post_init__(self) -> None:
        if not self.masks:  # a one-subject output made the old way (MonkeyOutput(image=, mask=, ...))
            object.__setattr__(self, "masks", (self.mask,))
        if not self.lost:
            object.__setattr__(self, "lost", (0.0,) * len(self.masks))
        if not self.scales:
            object.__setattr__(self, "scales", (1.0,) * len(self.masks))

    def image_pil(self):
        """The MONKEY image as an 8-bit RGB PIL image."""
        from PIL import Image

        return Image.fromarray(to_uint8(self.image))

    def mask_pil(self):
        """The subject mask as an 8-bit greyscale PIL image (0 background, 255 subject)."""
        from PIL import Image

        return Image.fromarray((self.mask.mask > 0).astype(np.uint8) * 255, mode="L")

    def mask_pil_of(self, subject: int):
        """Subject `subject`'s (1-based) final mask as an 8-bit greyscale PIL image (0/255)."""
        from PIL import Image

        if isinstance(subject, bool) or not isinstance(subject, int) or not 1 <= subject <= len(self.masks):
            raise MonkeyError(f"subject must be 1..{len(self.masks)}, got {subject!r}")
        return Image.fromarray((self.masks[subject - 1].mask > 0).astype(np.uint8) * 255, mode="L")

    def save(self, out: str | Path, subject=None, save_arrays: bool = False, record: dict | None = None) -> Path:
        """Write what `generate --out` writes (monkey.png, mask.png, overlay.png, result.json with the same
        fields, ...) to `out`, by the same rules (a re-run replaces only what the earlier one wrote).
        `subject` (PIL, or a list of them for several subjects): also grid.png with a baseline; `record`: extra
        result.json fields. The overlay shows pass 1's prediction like the CLI's when the output has it
        (`pipe.generate()`, or `decode_mask_pass=True`)."""
        if not isinstance(out, (str, os.PathLike)) or str(out) == "":
            raise MonkeyError(f"save() needs a folder path, got {out!r}")
        pictures = subject if isinstance(subject, (list, tuple)) else [subject]
        if subject is not None and not (pictures and all(isinstance(p, Image.Image) for p in pictures)):
            raise MonkeyError(f"subject must be a PIL image, a list of them or None, got {type(subject).__name__}")
        if not isinstance(save_arrays, bool) or not (record is None or isinstance(record, dict)):
            raise MonkeyError("save_arrays must be true or false and record a dict or None")
        try:
            return write_outputs(Path(out), self, subject, {**self.record, **(record or {})}, save_arrays=save_arrays)
        except OSError as e:  # the folder cannot be made or written (e.g. under /proc): the user's path, not the staging's
            raise MonkeyError(f"cannot write {out}: {e.strerror or e}") from None

