"""Which UNet graph runs which pass: the hook that lets an 8-bit engine keep MONKEY's mask exact.

The mask comes from pass 1 alone (its maps at the mask steps). With `mask_pass="exact"` (the default for
int8/fp8) pass 1 runs the fp32 UNet, so the mask is the fp32 engine's mask bit for bit, and pass 2 (and the
plain IP-Adapter baseline) runs the 8-bit UNet: 8 of MONKEY's 11 UNet calls with the default schedule.
`mask_pass="same"` runs every call in the 8-bit graph (faster; the mask may move, docs/int8.md measures it).
`mask_pass="fp16"` (int8/fp8 on GPUs) runs pass 1 on the fp16 UNet: faster than fp32 there, the mask close to
exact (docs/int8.md reports its IoU); it needs the directory's fp16 graphs (and `build --precision fp16` for trt).
bf16 (`--backend openvino`: the fp32 graph on bf16 kernels) is treated the same way (docs/openvino.md).

    roles = unet_roles("int8", "exact")      # {"mask": "fp32", "final": "int8", "baseline": "int8"}

runtime.method calls `engine.select_unet(role)` (when the engine has it) before each pass's UNet session:
"mask" for pass 1 (and the batched pass-1 + pass-2 steps, which compute pass 1), "final" for pass 2,
"baseline" for plain IP-Adapter. MonkeyPipeline keeps one runner per precision in `unet_runners` and puts the
chosen one in `runners["unet"]`, which is what its UNet session reads.
"""

from __future__ import annotations

from monkey_trt.core.errors import MonkeyError
from monkey_trt.enginedir.manifest import PRECISIONS, QUANTIZED_PRECISIONS

ROLES = ("mask", "final", "baseline")
MASK_PASS_MODES = ("exact", "same", "fp16")
RUN_PRECISIONS = (*PRECISIONS, "bf16")  # what a run may ask for: the graphs, and bf16 (openvino: the fp32 graph on bf16 kernels)
REDUCED_PRECISIONS = (*QUANTIZED_PRECISIONS, "bf16")  # whose mask pass runs the fp32 graph with mask_pass="exact"


def unet_roles(precision: str, mask_pass: str = "exact") -> dict[str, str]:
    """Role -> precision of the UNet graph that runs it."""
    if mask_pass not in MASK_PASS_MODES:
        raise MonkeyError(f"mask_pass must be one of {', '.join(MASK_PASS_MODES)}, got {mask_pass!r}")
    reduced = precision in REDUCED_PRECISIONS
    mask = {"exact": "fp32", "fp16": "fp16"}.get(mask_pass, precision) if reduced else precision
    return {"mask": mask, "final": precision, "baseline": precision}


def extra_unet_precisions(precision: str, mask_pass: str = "exact") -> tuple[str, ...]:
    """UNet precisions to open besides `precision` itself."""
    return tuple(p for p in dict.fromkeys(unet_roles(precision, mask_pass).values()) if p != precision)


def select(pipe, role: str) -> None:
    """Put the UNet runner of `role` in `pipe.runners["unet"]` (a no-op when the engine has one UNet graph)."""
    if role not in ROLES:
        raise MonkeyError(f"UNet role must be one of {', '.join(ROLES)}, got {role!r}")
    runners = getattr(pipe, "unet_runners", None)
    if runners:
        pipe.runners["unet"] = runners[pipe.unet_roles[role]]
