"""MONKEY's two passes, written once for every backend (SPEC.md).

A backend provides five operations (the `PassEngine` protocol): the PyTorch reference and the
lean runtime differ only in how they run networks, never in the method.

    pass 1: IP scale `scale_mask_pass` at every step; record the mask layer's map at `mask_steps`;
            stop after the last mask step (later steps cannot change the mask)
    mask:   runtime.mask.extract_mask
    pass 2: the same noise; IP on (scale_final, masked) at `masked_steps`, scale 0 elsewhere
"""

from __future__ import annotations

import time
from typing import Any, Callable, Protocol

import numpy as np
from PIL import Image

from monkey_trt.config import MAX_TOKENS, Request
from monkey_trt.errors import MonkeyError
from monkey_trt.runtime.mask import extract_mask
from monkey_trt.runtime.noise import NoisePlan
from monkey_trt.runtime.result import MonkeyOutput


class PassEngine(Protocol):
    backend: str

    def prepare(self, request: Request) -> None: ...  # validate the request for this backend
    def encode_prompt(self, prompt: str) -> tuple[Any, bool]: ...  # (text [1,77,D], truncated)
    def encode_subject(self, subject: Image.Image) -> Any: ...  # IP tokens [1,4,D]
    def guidance(self, guidance_scale: float) -> Any: ...  # timestep_cond [1, time_cond_dim]
    def run_pass(self, text, ip_tokens, w_emb, noise: NoisePlan, steps: int, scales: list[float],
                 mask: np.ndarray | None = None, map_steps: tuple[int, ...] = (),
                 stop_after: int | None = None) -> tuple[Any, dict[int, np.ndarray]]: ...
    def decode(self, latents) -> np.ndarray: ...  # [H, W, 3] float32 in [0, 1]
    def noise_for(self, request: Request) -> NoisePlan: ...


def run_monkey(
    engine: PassEngine,
    request: Request,
    subject: Image.Image,
    noise: NoisePlan | None = None,
    baseline_scale: float | None = None,
    decode_mask_pass: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> MonkeyOutput:
    """Both passes (+ the optional plain IP-Adapter baseline from the same noise).

    `progress(stage, index, total)` is called before each stage (for a CLI progress bar).
    """
    engine.prepare(request)
    c = request.config
    noise = noise if noise is not None else engine.noise_for(request)
    timings: dict[str, float] = {}
    notes: list[str] = []
    stages = ["encode_prompt", "encode_subject", "mask_pass", "mask", "final_pass", "decode"]
    stages += ["decode_mask_pass"] if decode_mask_pass else []
    stages += ["baseline_pass", "decode_baseline"] if baseline_scale is not None else []

    def timed(stage: str, fn, *args, **kwargs):
        if progress is not None:
            progress(stage, stages.index(stage), len(stages))
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - t0
        return out

    text, truncated = timed("encode_prompt", engine.encode_prompt, request.prompt)
    if truncated:
        notes.append(f"prompt is longer than {MAX_TOKENS} tokens and was truncated")
    ip_tokens = timed("encode_subject", engine.encode_subject, subject)
    w_emb = engine.guidance(c.guidance_scale)

    latents1, maps = timed(
        "mask_pass", engine.run_pass, text, ip_tokens, w_emb, noise, c.steps_mask_pass,
        [c.scale_mask_pass] * c.steps_mask_pass, map_steps=c.mask_steps, stop_after=c.mask_pass_steps_needed - 1,
    )
    try:
        mask = timed("mask", extract_mask, maps, request.height, request.width, c.mask_token, c.threshold)
    except FloatingPointError as e:
        raise MonkeyError(f"{engine.backend}: {e}") from None
    if len(mask.degenerate_steps) == len(c.mask_steps):
        notes.append(f"attention map was constant at every mask step {list(mask.degenerate_steps)}: full mask (plain IP-Adapter)")
    elif mask.degenerate:
        notes.append(f"attention map was constant at mask steps {list(mask.degenerate_steps)}: those steps were skipped")
    latents2, _ = timed("final_pass", engine.run_pass, text, ip_tokens, w_emb, noise, c.steps_final, c.final_scales(), mask=mask.mask)
    image = timed("decode", engine.decode, latents2)
    mask_pass_image = timed("decode_mask_pass", engine.decode, latents1) if decode_mask_pass else None
    baseline = None
    if baseline_scale is not None:
        latents_b, _ = timed("baseline_pass", engine.run_pass, text, ip_tokens, w_emb, noise, c.steps_final, [baseline_scale] * c.steps_final)
        baseline = timed("decode_baseline", engine.decode, latents_b)
    return MonkeyOutput(
        image=image, mask=mask, timings=timings, backend=engine.backend, mask_pass_image=mask_pass_image,
        baseline_image=baseline, prompt_truncated=truncated, warnings=tuple(notes),
    )
