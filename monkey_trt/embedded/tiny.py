"""Deterministic stand-ins for MONKEY's models, written in the hub repos' on-disk layouts.

Nothing can be downloaded here, so tests, exports and benchmarks run on models this module
writes itself:

* ``<out>/base/``        like ``SimianLuo/LCM_Dreamshaper_v7`` (a diffusers
  ``LatentConsistencyModelPipeline`` folder: unet, vae, text_encoder, tokenizer, scheduler,
  feature_extractor);
* ``<out>/ip-adapter/``  like ``h94/IP-Adapter`` (``models/ip-adapter_sd15.safetensors`` and
  ``models/image_encoder/``);
* ``<out>/subject.png``  a synthetic 256x256 demo subject.

This module's job is the writing: each folder's layout, the ``tiny-model.json`` record and the
atomic commit. What it writes comes from its neighbours: the presets and hub configs
(``embedded.presets``), the deterministic weights (``embedded.weights``), the CLIP BPE tokenizer
(``models.bpe``) and the subject picture (``core.subject``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from monkey_trt.embedded.bpe import ClipBpe, build_clip_bpe, write_clip_tokenizer
from monkey_trt.embedded.json_files import write_json
from monkey_trt.embedded.presets import (
    ModelPreset,
    feature_extractor_config,
    get_preset,
    meta_models,
    scheduler_config,
)
from monkey_trt.core.embedded_subject import draw_subject
from monkey_trt.embedded.weights import (
    Progress,
    hub_tensor_specs,
    ip_adapter_tensor_specs,
    tensor_specs,
    write_weights,
)

__all__ = ["TINY_MODEL_RECORD", "TinyModelPaths", "write_base", "write_ip_adapter", "write_tiny_model"]

IP_ADAPTER_WEIGHT_NAME = "ip-adapter_sd15.safetensors"


# --------------------------------------------------------------------------------------------
# Writers for each folder
# --------------------------------------------------------------------------------------------


def _write_diffusers_model(folder: Path, model, preset: ModelPreset, component: str, progress: Progress) -> None:
    """config.json (diffusers ``save_config``) + diffusion_pytorch_model.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_config(folder)
    write_weights(folder / "diffusion_pytorch_model.safetensors", preset, component, tensor_specs(model), progress)


def _write_transformers_model(folder: Path, model, preset: ModelPreset, component: str, progress: Progress) -> None:
    """config.json (transformers ``save_pretrained``) + model.safetensors with hub tensor names."""
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    write_weights(folder / "model.safetensors", preset, component, hub_tensor_specs(model), progress)


def _write_model_index(base: Path) -> None:
    import diffusers

    write_json(
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
    write_json(base / "scheduler" / "scheduler_config.json", cfg)
    write_json(base / "feature_extractor" / "preprocessor_config.json", feature_extractor_config())


def write_ip_adapter(folder: Path, preset: ModelPreset, models: Mapping, progress: Progress = None) -> None:
    """The ``h94/IP-Adapter`` layout: ``models/ip-adapter_sd15.safetensors`` + ``models/image_encoder/``."""
    specs = ip_adapter_tensor_specs(models["unet"], preset.vision.projection_dim)
    write_weights(folder / "models" / IP_ADAPTER_WEIGHT_NAME, preset, "ip_adapter", specs, progress)
    _write_transformers_model(folder / "models" / "image_encoder", models["image_encoder"], preset, "image_encoder", progress)


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

    Atomic (monkey_trt.core.output_folders.OutputStage): written into a staging folder next to ``out_dir`` and
    committed at the end, so an interrupted run never leaves truncated weights; the staging folder
    of a killed run is removed by the next. An existing ``out_dir`` keeps files it did not get from
    here; ``tiny-model.json`` records what was written.
    """
    from monkey_trt.core.output_folders import WRITTEN_BY, OutputStage, file_digests, staged_files

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
        written = staged_files(stage.path)
        files = written + [TINY_MODEL_RECORD]
        write_json(stage.path / TINY_MODEL_RECORD, {"written_by": WRITTEN_BY, "preset": p.name, "files": files,
                                                    "digests": file_digests(stage.path, written)})
        stage.commit(files)
    say("done")
    return TinyModelPaths(base=out / "base", ip_adapter=out / "ip-adapter", subject=out / "subject.png")
