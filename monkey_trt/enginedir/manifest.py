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

* the manifest is validated against MANIFEST_SCHEMA (types, not only keys) before it is used;
* every path in it is a plain relative name that stays inside the directory (no absolute path,
  no `..`, no symlink leaving it) and no two entries share a file;
* every file the runtime opens (each network's `.onnx` and `.onnx.data`, `tokenizer/tokenizer.json`)
  has a digest and a size, and is checked before anything runs: `verify="sha256"` hashes all of
  them, `verify="size"` checks the sizes of the networks and hashes the small files.
Lean: stdlib + numpy + jsonschema.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from monkey_trt.core.errors import EngineDirError
from monkey_trt.core.files import inside, safe_relpath, write_json_atomic
from monkey_trt.enginedir.digests import verify_files
from monkey_trt.enginedir.networks import (
    CLIP_MEAN,
    CLIP_STD,
    NETWORKS,
    ModelDims,
    NetworkDesc,
    Profile,
    TensorDesc,
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


_INT = {"type": "integer"}
_NUM = {"type": "number"}
_NUMS = {"type": "array", "items": _NUM}
_SIDE = {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 3, "maxItems": 3}
_TENSORS = {"type": "array", "items": {
    "type": "object", "required": ["name", "dtype", "shape"],
    "properties": {"name": {"type": "string"}, "dtype": {"type": "string"},
                   "shape": {"type": "array", "items": {"type": ["integer", "string"]}}}}}
_DIGESTS = {"type": "object", "minProperties": 1, "additionalProperties": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}
_FILES = {"file": {"type": "string"}, "data_file": {"type": ["string", "null"]}, "sha256": _DIGESTS,
          "sizes": {"type": "object", "minProperties": 1, "additionalProperties": {"type": "integer", "minimum": 0}}}
MANIFEST_SCHEMA = {
    "type": "object",
    "required": ["schema", "schema_version", "dims", "profile", "mask_layer", "ip_layers", "scheduler", "preprocess",
                 "vae_scaling_factor", "networks", "files"],
    "properties": {
        "schema": {"const": SCHEMA},
        "schema_version": {"const": SCHEMA_VERSION},
        "dims": {"type": "object", "required": list(ModelDims.__dataclass_fields__),
                 "additionalProperties": False, "properties": {k: {"type": "integer", "minimum": 1} for k in ModelDims.__dataclass_fields__}},
        "profile": {"type": "object", "required": ["batch", "height", "width"],
                    "properties": {"batch": _SIDE, "height": _SIDE, "width": _SIDE}},
        "mask_layer": {"type": "string"},
        "ip_layers": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "scheduler": {"type": "object", "required": ["alphas_cumprod"], "additionalProperties": False, "properties": {
            "alphas_cumprod": {**_NUMS, "minItems": 1}, "coeffs": _NUMS, "guidance_freqs": _NUMS,
            "original_inference_steps": _INT, "timestep_scaling": _NUM, "sigma_data": _NUM,
            "final_alpha_cumprod": _NUM, "num_train_timesteps": _INT}},
        "preprocess": {"type": "object", "required": ["size", "mean", "std"], "additionalProperties": False, "properties": {
            "size": {"type": "integer", "minimum": 1},
            "mean": {**_NUMS, "minItems": 3, "maxItems": 3}, "std": {**_NUMS, "minItems": 3, "maxItems": 3}}},
        "vae_scaling_factor": _NUM,
        "networks": {"type": "object", "required": list(NETWORKS), "additionalProperties": {
            "type": "object", "required": ["file", "data_file", "sha256", "sizes", "inputs", "outputs"],
            "properties": {**_FILES, "inputs": _TENSORS, "outputs": _TENSORS,
                           "precisions": {"type": "object", "additionalProperties": False, "properties": {
                               p: {"type": "object", "required": ["file", "data_file", "sha256", "sizes"],
                                   "properties": {**_FILES, "fp32_ops": {"type": "array", "items": {"type": "string"}},
                                                  "quantization": {"type": "object"}}}
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

    Used by atomic.OutputStage to know what `export --force` may replace. Tolerant: never raises.
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
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, TypeError):
        return set()
    return {n for n in (safe_relpath(x) for x in names) if n} | {MANIFEST}


def read_manifest(root: Path) -> Manifest:
    """Read ENGINE_DIR/manifest.json and check its schema and paths (no file contents).

    Every fault is an EngineDirError with one line naming the directory and what is wrong.
    """
    root = Path(root)
    mpath = root / MANIFEST
    if not root.is_dir():
        raise EngineDirError(f"engine directory {root} does not exist (run `monkey-trt export --out {root}` first)")
    if not mpath.is_file():
        raise EngineDirError(f"{root} is not an engine directory: {MANIFEST} is missing")
    try:
        raw = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EngineDirError(f"{mpath} is corrupt: {e}") from None
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        raise EngineDirError(f"{mpath} is not a monkey-trt manifest")
    version = raw.get("schema_version")
    if type(version) is int and version != SCHEMA_VERSION:
        raise EngineDirError(f"{mpath} has schema version {version}, this monkey-trt reads {SCHEMA_VERSION}: re-export the engine directory")
    _validate_schema(raw, mpath)
    try:
        manifest = Manifest.from_json(raw)
    except (KeyError, TypeError, ValueError) as e:  # the schema should have caught it; keep it one line anyway
        raise EngineDirError(f"{mpath} is malformed: {type(e).__name__}: {e}") from None
    check_paths(root, manifest)
    return manifest


def _validate_schema(raw: dict, mpath: Path) -> None:
    import jsonschema

    e = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(MANIFEST_SCHEMA).iter_errors(raw))
    if e is not None:
        where = "/".join(str(p) for p in e.absolute_path) or "top level"
        raise EngineDirError(f"{mpath} is malformed at {where}: {' '.join(e.message.split())[:200]}")


def check_paths(root: Path, manifest: Manifest) -> None:
    """Every listed file: a plain relative name inside `root`, owned by one entry, with a digest and a size."""
    owner: dict[str, str] = {}

    def claim(fname: str, who: str) -> None:
        if safe_relpath(fname) != fname or not inside(root, fname):
            raise EngineDirError(f"{root}: {who} names {fname!r}, which is not a plain relative path inside the engine directory")
        if fname in owner or fname == MANIFEST:
            raise EngineDirError(f"{root}: {who} and {owner.get(fname, 'the manifest')} share the file {fname!r}")
        owner[fname] = who

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


def load_manifest(root: Path, verify: str = "sha256") -> Manifest:
    """Read and validate ENGINE_DIR/manifest.json, then check every file it lists (`verify`: sha256 | size)."""
    manifest = read_manifest(root)
    verify_files(Path(root), manifest, verify)
    return manifest
