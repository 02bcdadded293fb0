"""The embedded model's weights: tensor specs, a seeded per-tensor init, a streaming .safetensors writer.

Weights never come from torch's RNG: every tensor is filled from ``numpy.random.default_rng``
seeded with ``crc32("<preset>/<component>/<tensor name>")`` and streamed straight into a
``.safetensors`` file, so the bytes are identical on every machine and run. Models are only
instantiated on the ``meta`` device, to learn tensor names, shapes and module kinds.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monkey_trt.enginedir.networks import N_IP_TOKENS
from monkey_trt.embedded.presets import ModelPreset

__all__ = [
    "Progress",
    "TensorSpec",
    "hub_tensor_specs",
    "ip_adapter_tensor_specs",
    "tensor_seed",
    "tensor_specs",
    "write_safetensors",
    "write_weights",
]

Progress = Callable[[str], None] | None

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


# The hub checkpoints name CLIPTextModel tensors "text_model.*" (transformers < 5 had that submodule;
# transformers 5 dropped it, still loads the prefixed names, but would save unprefixed ones).
_HUB_KEY_PREFIX = {"CLIPTextModel": "text_model."}


def hub_tensor_specs(model) -> list[TensorSpec]:
    """``tensor_specs`` under the names the hub checkpoints use (see ``_HUB_KEY_PREFIX``)."""
    prefix = _HUB_KEY_PREFIX.get(type(model).__name__, "")
    return [
        s if s.name.startswith(prefix) else TensorSpec(prefix + s.name, s.shape, s.kind) for s in tensor_specs(model)
    ]


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


def write_weights(
    path: Path, preset: ModelPreset, component: str, specs: Sequence[TensorSpec], progress: Progress
) -> None:
    """One component's tensors, each filled by ``_init_array``, streamed into ``path``."""
    write_safetensors(path, specs, lambda s: _init_array(preset, component, s), progress, label=component)

