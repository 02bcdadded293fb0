"""The engine directory contract: `manifest.json`, the only thing export and runtime share.

    ENGINE_DIR/
      manifest.json            this file's schema (SCHEMA_VERSION)
      tokenizer/tokenizer.json CLIP BPE for `tokenizers`
      text_encoder.onnx  image_encoder.onnx  unet.onnx (+ unet.onnx.data)  vae_decoder.onnx
      <net>.fp16.onnx (+ .data) the fp16 graphs, when exported with `--precision fp16`
      unet.int8.onnx  unet.fp8.onnx (+ .data)  the 8-bit (Q/DQ) UNet, `--precision int8|fp8` (export/quantize.py)
      trt/<cache key>/...      TensorRT plans + timing cache (written by `monkey-trt build`)

The exporter builds a `Manifest` and calls `write`; the runtime calls `load_manifest`. The
directory is a sealed contract (the README's "Trust model"):

* the manifest (at most MANIFEST_MAX_BYTES, not a symlink leaving the directory) is validated against
  MANIFEST_SCHEMA (types, not only keys, and a range for every number; floats finite), then the numbers
  that must agree with each other (check_ranges) and the declared inputs/outputs against networks.py;
* every path in it is a plain relative name that stays inside the directory (no absolute path,
  no `..`, no symlink leaving it) and no two entries (nor the manifest) reach one file, by name,
  symlink or hard link;
* every file the runtime opens (each network's `.onnx` and `.onnx.data`, `tokenizer/tokenizer.json`)
  has a digest and a size, and is checked before anything runs: `verify="sha256"` hashes all of
  them, `verify="size"` checks the sizes of the networks and hashes the small files;
* every graph is read (graphs.py, no weights, no onnx) before any session opens: external data only in
  the data file its entry lists, inputs and outputs as declared.
Lean: stdlib + numpy + jsonschema.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from monkey_trt.core.errors import EngineDirError
from monkey_trt.core.atomic import write_json_atomic
from monkey_trt.core.output_folders import inside, safe_relpath, valid_digests
from monkey_trt.enginedir.digests import verify_files
from monkey_trt.enginedir.networks import (
    CLIP_MEAN,
    CLIP_STD,
    NETWORKS,
    ModelDims,
    NetworkDesc,
    Profile,
    TensorDesc,
    network_descs,
)

SCHEMA = "monkey-trt/engine-dir"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8", "fp8")  # fp32: the entry's own files; others: NetworkEntry.precisions (optional, additive)
# 8-bit precisions quantize the UNet only (export/quantize.py): a network without its own graph of such a
# precision runs its fp32 graph (Manifest.run_precision), as the manifest's quantization record says.
QUANTIZED_PRECISIONS = ("int8", "fp8")
TOKENIZER_FILE = "tokenizer/tokenizer.json"  # the one tokenizer file the runtime opens



def check_precision(precision: str) -> str:
    """One precision an engine directory can hold (`--precision` of generate, build, bench, serve)."""
    if precision not in PRECISIONS:
        raise EngineDirError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def parse_precisions(text: str | tuple[str, ...]) -> tuple[str, ...]:
    """`export --precision fp32,fp16`: a comma list (or tuple) of known precisions, unique, in order."""
    items = text.split(",") if isinstance(text, str) else list(text)
    precisions = tuple(dict.fromkeys(p.strip() for p in items if p.strip()))
    if not precisions or any(p not in PRECISIONS for p in precisions):
        shown = text if isinstance(text, str) else ",".join(text)
        raise EngineDirError(f"--precision must be a comma list of {', '.join(PRECISIONS)}, got {shown!r}")
    return precisions


# Every number has a range (a hostile manifest is one line, never an out-of-memory kill): generous
# bounds around SD1.5's values; floats are finite (read_manifest refuses NaN, Infinity and overflow).
MANIFEST_MAX_BYTES = 16 << 20  # SD1.5's manifest is ~120 KB (scheduler tables included)
MAX_TIMESTEPS = 10_000  # diffusers' schedulers train on 1000
MAX_LIST = 4 * MAX_TIMESTEPS  # the longest list a manifest has (scheduler coeffs), checked before the schema
MAX_DICT = 256  # the most entries of one object (networks, digests ...), checked before the schema
MAX_VALUES = 100_000  # lists' items and objects' entries in all (source and exporter aside)
SYMBOLS = ("B", "H", "W", "h", "w", "Q")  # the symbolic dims networks.py uses (Q: the mask layer's queries)
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
                                                  "quantization": {"type": "object", "maxProperties": 64}}}
                               for p in PRECISIONS if p != "fp32"}}}}},
        "files": {**_DIGESTS, "required": [TOKENIZER_FILE]},
        "source": {"type": "object"},
        "exporter": {"type": "object"},
    },
}


@dataclass(frozen=True)
class SchedulerConsts:
    """What the numpy LCM scheduler needs, copied from the diffusers scheduler at export."""

    alphas_cumprod: tuple[float, ...]  # [num_train_timesteps] float32 values
    coeffs: tuple[float, ...] = ()  # [T * 4] torch's (sqrt(ac), sqrt(1-ac), c_skip, c_out): bit-exact steps
    guidance_freqs: tuple[float, ...] = ()  # [time_cond_dim // 2] torch's sinusoid frequencies
    original_inference_steps: int = 50
    timestep_scaling: float = 10.0
    sigma_data: float = 0.5
    final_alpha_cumprod: float = 1.0
    num_train_timesteps: int = 1000


@dataclass(frozen=True)
class ImagePreprocess:
    """CLIP image preprocessing constants (see runtime.images.clip_preprocess)."""

    size: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD


@dataclass(frozen=True)
class PrecisionFiles:
    """A network's graph in another precision (same inputs/outputs and dtypes as the entry declares)."""

    file: str
    data_file: str | None
    sha256: dict[str, str]
    sizes: dict[str, int]
    fp32_ops: tuple[str, ...] = ()  # op types kept in fp32 (see export/fp16.py for why)
    quantization: dict = field(default_factory=dict)  # 8-bit graphs: library + version, settings, calibration (export/quantize.py)

    def to_json(self) -> dict:
        d = {"file": self.file, "data_file": self.data_file, "sha256": self.sha256, "sizes": self.sizes,
             "fp32_ops": list(self.fp32_ops)}
        if self.quantization:
            d["quantization"] = self.quantization
        return d

    @classmethod
    def from_json(cls, d: dict) -> "PrecisionFiles":
        return cls(d["file"], d.get("data_file"), dict(d["sha256"]), {k: int(v) for k, v in d["sizes"].items()},
                   tuple(d.get("fp32_ops", ())), dict(d.get("quantization", {})))


@dataclass(frozen=True)
class NetworkEntry:
    """One network's files and signature. `file`/`data_file`/`sha256`/`sizes` are the fp32 graph."""

    desc: NetworkDesc
    file: str
    data_file: str | None  # external weights, one file per network
    sha256: dict[str, str]  # file name -> hex digest, for every file of the network
    sizes: dict[str, int]  # file name -> bytes
    precisions: dict[str, PrecisionFiles] = field(default_factory=dict)  # "fp16" -> its files (manifest key "precisions")

    def files(self, precision: str = "fp32") -> tuple[str, dict[str, str], dict[str, int]]:
        """(graph file, sha256 per file, size per file) of one precision; KeyError if not exported."""
        if precision == "fp32":
            return self.file, self.sha256, self.sizes
        p = self.precisions[precision]
        return p.file, p.sha256, p.sizes


@dataclass(frozen=True)
class Manifest:
    dims: ModelDims
    profile: Profile
    mask_layer: str
    ip_layers: tuple[str, ...]  # attn2 layers in ip_scale order
    scheduler: SchedulerConsts
    preprocess: ImagePreprocess
    vae_scaling_factor: float
    networks: dict[str, NetworkEntry]
    files: dict[str, str] = field(default_factory=dict)  # other files (tokenizer/...) -> sha256
    source: dict = field(default_factory=dict)  # model ids/paths, weight hashes
    exporter: dict = field(default_factory=dict)  # versions, opset, precision

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return np.asarray(self.scheduler.alphas_cumprod, dtype=np.float32)

    @property
    def precisions(self) -> tuple[str, ...]:
        """Precisions the engine directory runs ("fp32" always): every network has the graph, or for the 8-bit
        precisions, at least one network (the others run fp32, see run_precision)."""
        return tuple(p for p in PRECISIONS if p == "fp32" or all(p in e.precisions for e in self.networks.values())
                     or (p in QUANTIZED_PRECISIONS and any(p in e.precisions for e in self.networks.values())))

    def run_precision(self, network: str, precision: str) -> str:
        """Which of `network`'s graphs runs when the engine runs `precision` (see graph_precision)."""
        return graph_precision(self, network, precision)

    def path(self, root: Path, network: str, precision: str = "fp32") -> Path:
        """The ONNX file of `network` in `precision`; EngineDirError if that precision was not exported."""
        try:
            return Path(root) / self.networks[network].files(self.run_precision(network, precision))[0]
        except KeyError:
            raise EngineDirError(
                f"{root} has no {precision} ONNX for {network} (exported: {', '.join(self.precisions)}): "
                f"run `monkey-trt export --out {root} --precision {precision}`"
            ) from None

    # -- (de)serialisation -------------------------------------------------------------
    def to_json(self) -> dict:
        d = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "dims": asdict(self.dims),
            "profile": self.profile.to_dict(),
            "mask_layer": self.mask_layer,
            "ip_layers": list(self.ip_layers),
            "scheduler": asdict(self.scheduler),
            "preprocess": asdict(self.preprocess),
            "vae_scaling_factor": self.vae_scaling_factor,
            "networks": {name: _entry_to_json(e) for name, e in self.networks.items()},
            "files": self.files,
            "source": self.source,
            "exporter": self.exporter,
        }
        for k in ("alphas_cumprod", "coeffs", "guidance_freqs"):
            d["scheduler"][k] = [float(a) for a in getattr(self.scheduler, k)]
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Manifest":
        sch = dict(d["scheduler"])
        for k in ("alphas_cumprod", "coeffs", "guidance_freqs"):
            sch[k] = tuple(float(a) for a in sch.get(k, ()))
        pre = dict(d["preprocess"])
        pre["mean"], pre["std"] = tuple(pre["mean"]), tuple(pre["std"])
        return cls(
            dims=ModelDims(**d["dims"]),
            profile=Profile.from_dict(d["profile"]),
            mask_layer=d["mask_layer"],
            ip_layers=tuple(d["ip_layers"]),
            scheduler=SchedulerConsts(**sch),
            preprocess=ImagePreprocess(**pre),
            vae_scaling_factor=float(d["vae_scaling_factor"]),
            networks={name: _entry_from_json(name, e) for name, e in d["networks"].items()},
            files=dict(d.get("files", {})),
            source=d.get("source", {}),
            exporter=d.get("exporter", {}),
        )

    def write(self, root: Path) -> Path:
        return write_json_atomic(Path(root) / MANIFEST, self.to_json())


def graph_precision(manifest, network: str, precision: str) -> str:
    """Which of `network`'s graphs runs when the engine runs `precision`: its own, or fp32 for a network an
    8-bit export left unquantized (only when that 8-bit precision was exported: never a silent fallback).
    Takes any manifest-like object with `networks` (entries with `precisions`) and `precisions`."""
    if (precision in QUANTIZED_PRECISIONS and precision in manifest.precisions
            and precision not in manifest.networks[network].precisions):
        return "fp32"
    return precision


def _entry_to_json(e: NetworkEntry) -> dict:
    tensors = lambda ts: [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in ts]  # noqa: E731
    d = {"file": e.file, "data_file": e.data_file, "sha256": e.sha256, "sizes": e.sizes,
         "inputs": tensors(e.desc.inputs), "outputs": tensors(e.desc.outputs)}
    if e.precisions:  # optional and additive: manifests without it (fp32 only) stay valid
        d["precisions"] = {p: f.to_json() for p, f in e.precisions.items()}
    return d


def _entry_from_json(name: str, d: dict) -> NetworkEntry:
    tensors = lambda ts: tuple(TensorDesc(t["name"], t["dtype"], tuple(t["shape"])) for t in ts)  # noqa: E731
    desc = NetworkDesc(name, tensors(d["inputs"]), tensors(d["outputs"]))
    precisions = {p: PrecisionFiles.from_json(f) for p, f in d.get("precisions", {}).items()}
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown:
        raise ValueError(f"network {name}: unknown precision(s) {', '.join(unknown)}")
    return NetworkEntry(desc, d["file"], d.get("data_file"), dict(d["sha256"]), {k: int(v) for k, v in d["sizes"].items()},
                        precisions)


# -- files ------------------------------------------------------------------------------
def manifest_files(record_path: Path) -> set[str]:
    """The files an engine directory's manifest lists (itself included); empty if it is not one.

    Used by core.output_folders.OutputStage to know what `export --force` may replace. Tolerant: never raises.
    """
    try:
        raw = json.loads(Path(record_path).read_text())
        if raw.get("schema") != SCHEMA:
            return set()
        names = set(raw.get("files", {}))
        for entry in raw.get("networks", {}).values():
            names |= set(entry.get("sha256", {}))
            for other in entry.get("precisions", {}).values():
                names |= set(other.get("sha256", {}))
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, TypeError, RecursionError):
        return set()
    return {n for n in (safe_relpath(x) for x in names) if n} | {MANIFEST}


def manifest_digests(record_path: Path) -> dict[str, str]:
    """sha256 per file of an engine directory's manifest (what `export --force` checks before it replaces
    a file: a listed file whose content changed since is the user's now). Tolerant: never raises."""
    try:
        raw = json.loads(Path(record_path).read_text())
        if raw.get("schema") != SCHEMA:
            return {}
        found = dict(raw.get("files", {}))
        for entry in raw.get("networks", {}).values():
            found.update(entry.get("sha256", {}))
            for other in entry.get("precisions", {}).values():
                found.update(other.get("sha256", {}))
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, TypeError, RecursionError):
        return {}
    return valid_digests(found)


manifest_files.digests = manifest_digests  # core.output_folders.recorded_digests reads it


def read_manifest(root: Path) -> Manifest:
    """Read ENGINE_DIR/manifest.json and check its schema, ranges and paths (no file contents but the manifest's).

    Every fault is an EngineDirError with one line naming the directory and what is wrong.
    """
    root = Path(root)
    mpath = root / MANIFEST
    if not root.is_dir():
        raise EngineDirError(f"engine directory {root} does not exist (run `monkey-trt export --out {root}` first)")
    if not mpath.is_file():
        raise EngineDirError(f"{root} is not an engine directory: {MANIFEST} is missing")
    if not inside(root, MANIFEST):
        raise EngineDirError(f"{root}: {MANIFEST} is a symlink leaving the engine directory")
    raw = _read_json(mpath)
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        raise EngineDirError(f"{mpath} is not a monkey-trt manifest")
    version = raw.get("schema_version")
    if type(version) is int and version != SCHEMA_VERSION:
        raise EngineDirError(f"{mpath} has schema version {version}, this monkey-trt reads {SCHEMA_VERSION}: re-export the engine directory")
    _check_list_lengths(raw, mpath)
    _validate_schema(raw, mpath)
    try:
        manifest = Manifest.from_json(raw)
    except (KeyError, TypeError, ValueError) as e:  # the schema should have caught it; keep it one line anyway
        raise EngineDirError(f"{mpath} is malformed: {type(e).__name__}: {e}") from None
    check_ranges(manifest, mpath)
    check_signatures(manifest, mpath)
    check_paths(root, manifest)
    return manifest


def _read_json(mpath: Path):
    """The manifest's JSON: refused when larger than MANIFEST_MAX_BYTES (unread), nested too deep, with
    NaN/Infinity, a float that overflows or an integer too long to convert."""
    def finite(text: str) -> float:
        x = float(text)
        if x != x or x in (float("inf"), float("-inf")):
            raise ValueError(f"number {text[:40]} is out of range")
        return x

    def no_constant(name: str):
        raise ValueError(f"{name} is not a number")

    try:
        with open(mpath, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MANIFEST_MAX_BYTES:
                raise EngineDirError(f"{mpath} is too large ({size} bytes; a manifest is at most {MANIFEST_MAX_BYTES})")
            data = f.read(MANIFEST_MAX_BYTES + 1)
        if len(data) > MANIFEST_MAX_BYTES:
            raise EngineDirError(f"{mpath} is too large (more than {MANIFEST_MAX_BYTES} bytes)")
        return json.loads(data.decode("utf-8"), parse_float=finite, parse_constant=no_constant)
    except (OSError, UnicodeDecodeError, ValueError) as e:  # JSONDecodeError and int-conversion limits included
        why = "an integer has too many digits" if "integer string conversion" in str(e) else " ".join(str(e).split())[:200]
        raise EngineDirError(f"{mpath} is corrupt: {why}") from None
    except RecursionError:
        raise EngineDirError(f"{mpath} is corrupt: nested too deep") from None


def _check_list_lengths(raw: dict, mpath: Path) -> None:
    """Bounded sizes (lists, objects, values in all; the free-form `source`/`exporter` aside), refused before
    the schema validates item by item, which would take minutes for the millions of values 16 MiB hold."""
    todo = [(v, k) for k, v in raw.items() if k not in ("source", "exporter")]
    total = 0
    while todo:
        node, where = todo.pop()
        size = len(node) if isinstance(node, (list, dict)) else 0
        total += size
        limit = MAX_LIST if isinstance(node, list) else MAX_DICT
        if size > limit or total > MAX_VALUES:
            where = " ".join(where.split())[:120]
            what = f"has {size} {'items' if isinstance(node, list) else 'entries'}, at most {limit} allowed" if size > limit \
                else f"the manifest holds more than {MAX_VALUES} values"
            raise EngineDirError(f"{mpath} is malformed at {where}: {what}")
        if isinstance(node, list):
            todo += [(v, f"{where}/{i}") for i, v in enumerate(node) if isinstance(v, (list, dict))]
        elif isinstance(node, dict):
            todo += [(v, f"{where}/{str(k)[:80]}") for k, v in node.items() if isinstance(v, (list, dict))]


def _validate_schema(raw: dict, mpath: Path) -> None:
    import jsonschema

    try:
        e = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(MANIFEST_SCHEMA).iter_errors(raw))
    except RecursionError:
        raise EngineDirError(f"{mpath} is malformed: nested too deep") from None
    if e is not None:
        where = " ".join("/".join(str(p)[:80] for p in e.absolute_path).split()) or "top level"
        raise EngineDirError(f"{mpath} is malformed at {where}: {_schema_message(e)}")


def _schema_message(e) -> str:
    """jsonschema's message, without a huge instance in it (a 300000-item list is "has 300000 items")."""
    inst = e.instance
    if e.validator in ("maxItems", "minItems") and isinstance(inst, list):
        return f"has {len(inst)} items, {'at most' if e.validator == 'maxItems' else 'at least'} {e.validator_value} allowed"
    if e.validator in ("maxProperties", "minProperties") and isinstance(inst, dict):
        return f"has {len(inst)} entries, {'at most' if e.validator == 'maxProperties' else 'at least'} {e.validator_value} allowed"
    if e.validator == "anyOf" and list(e.absolute_path)[-2:-1] == ["shape"]:
        return f"{' '.join(repr(inst)[:60].split())} is not a dimension (an integer or one of {', '.join(SYMBOLS)})"
    return " ".join(e.message.split())[:200]


def check_ranges(manifest: Manifest, mpath: Path) -> None:
    """What the schema cannot say: the numbers that must agree with each other (table lengths, counts, sizes)."""
    m, sch, dims = manifest, manifest.scheduler, manifest.dims
    T = sch.num_train_timesteps
    faults = [
        (len(sch.alphas_cumprod) != T, f"scheduler has {len(sch.alphas_cumprod)} alphas_cumprod values for num_train_timesteps {T}"),
        (len(sch.coeffs) not in (0, 4 * T), f"scheduler coeffs must be 4 x {T} values (or none), got {len(sch.coeffs)}"),
        (len(sch.guidance_freqs) not in (0, dims.time_cond_dim // 2),
         f"scheduler guidance_freqs must be {dims.time_cond_dim // 2} values (or none), got {len(sch.guidance_freqs)}"),
        (sch.original_inference_steps > T, f"scheduler original_inference_steps {sch.original_inference_steps} exceeds num_train_timesteps {T}"),
        (len(m.ip_layers) != dims.n_ip_layers, f"{len(m.ip_layers)} ip_layers for dims n_ip_layers {dims.n_ip_layers}"),
        (len(set(m.ip_layers)) != len(m.ip_layers), "ip_layers repeats a layer"),
        (m.mask_layer not in m.ip_layers, f"mask_layer {m.mask_layer[:80]!r} is not one of ip_layers"),
        (m.preprocess.size != dims.image_size, f"preprocess size {m.preprocess.size} is not the image encoder's {dims.image_size}"),
    ]
    for side in ("height", "width"):
        rng = getattr(m.profile, side)
        faults.append((any(v % dims.vae_factor for v in rng.as_list()),
                       f"profile {side} {rng.as_list()} is not a multiple of vae_factor {dims.vae_factor}"))
    for bad, why in faults:
        if bad:
            raise EngineDirError(f"{mpath} is malformed: {why}")


def check_signatures(manifest: Manifest, mpath: Path) -> None:
    """Each network's declared inputs and outputs are the ones the runtime feeds and reads (networks.py):
    names in order, dtypes and ranks."""
    expected = network_descs(manifest.dims)
    for name, entry in manifest.networks.items():
        want = expected.get(name)
        if want is None:
            continue  # not a network the runtime opens
        for kind in ("inputs", "outputs"):
            got_ts, want_ts = getattr(entry.desc, kind), getattr(want, kind)
            got = [(t.name, t.dtype, len(t.shape)) for t in got_ts]
            need = [(t.name, t.dtype, len(t.shape)) for t in want_ts]
            if got != need:
                show = lambda ts: ", ".join(f"{n[:40]!r} {d} rank {r}" for n, d, r in ts[:10])  # noqa: E731
                raise EngineDirError(f"{mpath}: network {name} declares {kind} [{show(got)}]; the runtime uses [{show(need)}]")


def check_paths(root: Path, manifest: Manifest) -> None:
    """Every listed file: a plain relative name inside `root`, owned by one entry, with a digest and a size;
    no two entries reach one file by any route (symlinks, hard links), nor the manifest itself."""
    owner: dict[str, str] = {}
    seen: dict[tuple[int, int], str] = {}

    def identity(fname: str) -> tuple[int, int] | None:
        try:
            st = os.stat(Path(root) / fname)  # follows symlinks: where a runtime's open() lands
        except OSError:
            return None  # missing: verify_files says so
        return st.st_dev, st.st_ino

    def claim(fname: str, who: str) -> None:
        if safe_relpath(fname) != fname or not inside(root, fname):
            raise EngineDirError(f"{root}: {who} names {fname!r}, which is not a plain relative path inside the engine directory")
        if fname in owner or fname == MANIFEST:
            raise EngineDirError(f"{root}: {who} and {owner.get(fname, 'the manifest')} share the file {fname!r}")
        key = identity(fname)
        if key is not None and key in seen:
            other = seen[key]
            raise EngineDirError(f"{root}: {fname!r} ({who}) and {other!r} ({owner.get(other, 'the manifest')}) are the same file "
                                 "(a symlink or hard link): every entry needs its own")
        owner[fname] = who
        if key is not None:
            seen[key] = fname

    manifest_key = identity(MANIFEST)
    if manifest_key is not None:
        seen[manifest_key] = MANIFEST
    for name, entry in manifest.networks.items():
        for precision in ("fp32", *entry.precisions):
            file, digests, sizes = entry.files(precision)
            data_file = entry.data_file if precision == "fp32" else entry.precisions[precision].data_file
            wanted = {file} | ({data_file} if data_file else set())
            who = f"network {name}" + ("" if precision == "fp32" else f" ({precision})")
            if set(digests) != wanted or set(sizes) != wanted:
                raise EngineDirError(f"{root}: {who} must list a sha256 and a size for exactly {sorted(wanted)}, "
                                     f"got digests for {sorted(digests)} and sizes for {sorted(sizes)}")
            for fname in sorted(wanted):
                claim(fname, who)
    for fname in manifest.files:
        claim(fname, "files")


def check_graphs(root: Path, manifest: Manifest) -> None:
    """Every graph of every precision: its external data only in the data file its entry lists (within that
    file), its inputs and outputs the declared ones (see graphs.check_graph). Reads the graphs, not the weights."""
    from monkey_trt.enginedir.onnx_scan import check_graph

    for name, entry in manifest.networks.items():
        for precision in ("fp32", *entry.precisions):
            file = entry.files(precision)[0]
            data_file = entry.data_file if precision == "fp32" else entry.precisions[precision].data_file
            who = f"network {name}" + ("" if precision == "fp32" else f" ({precision})")
            check_graph(Path(root), file, who, data_file, entry.desc.inputs, entry.desc.outputs)


def load_manifest(root: Path, verify: str = "sha256") -> Manifest:
    """Read and validate ENGINE_DIR/manifest.json, check every file it lists (`verify`: sha256 | size), then
    every graph's external-data locations and signature: nothing a session would open is left unchecked."""
    manifest = read_manifest(root)
    verify_files(Path(root), manifest, verify)
    check_graphs(Path(root), manifest)
    return manifest
