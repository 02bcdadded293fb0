"""`--protocol`: which evaluation to reproduce.

    paper    the paper's description: every subject x the 20 prompts, "a dog in the jungle", seed 0
             (not given by the paper), 512x512, the paper-schedule MONKEY beside IP-Adapter
    authors  what the authors' public code (main_seg.py) runs: one prompt per subject (the subject's
             index modulo the prompt count), "dog in the jungle" (the word as the data gives it, no
             article), seed 123 for every image and both passes, 256x256, fp16 where a GPU runs it, and
             both MONKEY images their script makes: the paper schedule and its "all steps" variant (the
             mask at every pass-2 step, IP scale 1.0 at every step), beside plain IP-Adapter

Options given on the command line win over the protocol's defaults (seeds, size, precision, methods,
prompt template).
"""

from __future__ import annotations

from dataclasses import dataclass

from monkey_trt.core.errors import MonkeyError


@dataclass(frozen=True)
class Protocol:
    name: str
    seeds: str  # --seeds default
    side: int | None  # --height/--width default (None: the engine's opt size, else 512)
    template: str  # --prompt-template default (eval.prompts)
    methods: str  # --methods default
    cycle_prompts: bool  # one prompt per subject (index modulo the prompt count) instead of every prompt
    fp16_on_gpu: bool  # --precision default: fp16 where a GPU runs the backend


PROTOCOLS = {
    "paper": Protocol("paper", "0", None, "{a_word} {prompt}", "monkey,ipadapter@1.0", False, False),
    "authors": Protocol("authors", "123", 256, "{word} {prompt}", "monkey,monkey-all-steps,ipadapter@1.0", True, True),
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise MonkeyError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {name!r}")
    return PROTOCOLS[name]


def runs_on_gpu(spec) -> bool:
    """Whether a runtime.backend.BackendSpec runs on a GPU, by its row of the backend table: a GPU-only backend (trt);
    a backend with `--device` (torch) on cuda; one with ONNX Runtime providers with a GPU provider first (none given:
    the best installed one, CUDA if onnxruntime has it)."""
    row = spec.row
    if "cpu" not in row.devices:
        return True
    if "device" in row.options:
        return str(spec.device).startswith("cuda")
    if "providers" not in row.options:
        return False
    if spec.providers:
        return spec.providers[0] in ("cuda", "tensorrt")
    from monkey_trt.engine.ort import default_provider

    return default_provider() == "cuda"
