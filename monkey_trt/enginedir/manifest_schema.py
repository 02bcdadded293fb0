"""The JSON schema of `manifest.json` and its limits: every number has a range, every list and object a size, so a
hostile manifest is one line (enginedir/load.py), never an out-of-memory kill. Lean: stdlib only.
"""

from __future__ import annotations

from monkey_trt.enginedir.manifest import GRAPH_KEYS, QUANT_BASES, SCHEMA, SCHEMA_VERSION, TOKENIZER_FILE
from monkey_trt.enginedir.networks import MAX_SUBJECTS_LIMIT, NETWORKS, ModelDims

# Every number has a range (a hostile manifest is one line, never an out-of-memory kill): generous
# bounds around SD1.5's values; floats are finite (read_manifest refuses NaN, Infinity and overflow).
MANIFEST_MAX_BYTES = 16 << 20  # SD1.5's manifest is ~120 KB (scheduler tables included)
MAX_TIMESTEPS = 10_000  # diffusers' schedulers train on 1000
MAX_LIST = 4 * MAX_TIMESTEPS  # the longest list a manifest has (scheduler coeffs), checked before the schema
MAX_DICT = 256  # the most entries of one object (networks, digests ...), checked before the schema
MAX_VALUES = 100_000  # lists' items and objects' entries in all (source and exporter aside)
SYMBOLS = ("B", "H", "W", "h", "w", "Q", "N", "NT")  # the symbolic dims networks.py uses (Q: the mask layer's queries; N: IP images, NT: their tokens)
DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
DIM_RANGES = {"text_len": (1, 1024), "text_dim": (1, 16384), "time_cond_dim": (4, 16384), "n_ip_tokens": (1, 1024),
              "n_ip_layers": (1, 1024), "latent_channels": (1, 64), "vae_factor": (1, 64), "image_size": (1, 4096)}


def _int(lo: int, hi: int) -> dict:
    return {"type": "integer", "minimum": lo, "maximum": hi}


def _num(lo: float, hi: float, open_low: bool = False) -> dict:
    return {"type": "number", ("exclusiveMinimum" if open_low else "minimum"): lo, "maximum": hi}


def _nums(item: dict, max_items: int, min_items: int = 0) -> dict:
    return {"type": "array", "items": item, "minItems": min_items, "maxItems": max_items}


_NAME = {"type": "string", "minLength": 1, "maxLength": 1024}
_SIDE = {"type": "array", "items": _int(1, 16384), "minItems": 3, "maxItems": 3}
_TENSORS = {"type": "array", "maxItems": 64, "items": {
    "type": "object", "required": ["name", "dtype", "shape"],
    "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 256}, "dtype": {"enum": list(DTYPES)},
                   "shape": {"type": "array", "maxItems": 8,
                             "items": {"anyOf": [_int(1, 1 << 31), {"enum": list(SYMBOLS)}]}}}}}
_DIGESTS = {"type": "object", "minProperties": 1, "maxProperties": 4096, "propertyNames": {"maxLength": 1024},
            "additionalProperties": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}
_FILES = {"file": _NAME, "data_file": {"anyOf": [_NAME, {"type": "null"}]}, "sha256": _DIGESTS,
          "sizes": {"type": "object", "minProperties": 1, "maxProperties": 4096, "additionalProperties": _int(0, 1 << 48)}}
MANIFEST_SCHEMA = {
    "type": "object",
    "required": ["schema", "schema_version", "dims", "profile", "mask_layer", "ip_layers", "scheduler", "preprocess",
                 "vae_scaling_factor", "networks", "files"],
    "properties": {
        "schema": {"const": SCHEMA},
        "schema_version": {"const": SCHEMA_VERSION},
        "dims": {"type": "object", "required": list(ModelDims.__dataclass_fields__),
                 "additionalProperties": False, "properties": {k: _int(*DIM_RANGES[k]) for k in ModelDims.__dataclass_fields__}},
        "profile": {"type": "object", "required": ["batch", "height", "width"],
                    "properties": {"batch": {**_SIDE, "items": _int(1, 256)}, "height": _SIDE, "width": _SIDE}},
        "mask_layer": {"type": "string", "maxLength": 512},
        "ip_layers": {"type": "array", "items": {"type": "string", "maxLength": 512}, "minItems": 1, "maxItems": 1024},
        "scheduler": {"type": "object", "required": ["alphas_cumprod"], "additionalProperties": False, "properties": {
            "alphas_cumprod": _nums(_num(0, 1, open_low=True), MAX_TIMESTEPS, 1),
            "coeffs": _nums(_num(-1e3, 1e3), 4 * MAX_TIMESTEPS), "guidance_freqs": _nums(_num(-1e3, 1e3), 8192),
            "original_inference_steps": _int(1, MAX_TIMESTEPS), "timestep_scaling": _num(0, 1e6, open_low=True),
            "sigma_data": _num(0, 1e6, open_low=True), "final_alpha_cumprod": _num(0, 1, open_low=True),
            "num_train_timesteps": _int(1, MAX_TIMESTEPS)}},
        "preprocess": {"type": "object", "required": ["size", "mean", "std"], "additionalProperties": False, "properties": {
            "size": _int(1, 4096),
            "mean": _nums(_num(-100, 100), 3, 3), "std": _nums(_num(0, 100, open_low=True), 3, 3)}},
        "vae_scaling_factor": _num(0, 1e3, open_low=True),
        "networks": {"type": "object", "required": list(NETWORKS), "maxProperties": 64,
                     "propertyNames": {"pattern": "^[A-Za-z0-9_.-]{1,64}$"}, "additionalProperties": {
            "type": "object", "required": ["file", "data_file", "sha256", "sizes", "inputs", "outputs"],
            "properties": {**_FILES, "inputs": _TENSORS, "outputs": _TENSORS,
                           "precisions": {"type": "object", "additionalProperties": False, "properties": {
                               p: {"type": "object", "required": ["file", "data_file", "sha256", "sizes"],
                                   "properties": {**_FILES, "fp32_ops": {"type": "array", "maxItems": 1024,
                                                                         "items": {"type": "string", "maxLength": 256}},
                                                  "quantization": {"type": "object", "maxProperties": 64},
                                                  "base": {"enum": list(QUANT_BASES)}}}
                               for p in GRAPH_KEYS}}}}},
        "files": {**_DIGESTS, "required": [TOKENIZER_FILE]},
        "source": {"type": "object"},
        "exporter": {"type": "object"},
        "max_subjects": _int(1, MAX_SUBJECTS_LIMIT),  # optional: absent in manifests written before it (= 1)
    },
}
