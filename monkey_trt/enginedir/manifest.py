"""The engine directory contract: `manifest.json`, the only thing export and runtime share.

    ENGINE_DIR/
      manifest.json            this file's schema (SCHEMA_VERSION; enginedir/manifest_schema.py)
      tokenizer/tokenizer.json CLIP BPE for `tokenizers`
      text_encoder.onnx  image_encoder.onnx  unet.onnx (+ unet.onnx.data)  vae_decoder.onnx
      <net>.fp16.onnx (+ .data) the fp16 graphs, when exported with `--precision fp16`
      <net>.int8.onnx  <net>.fp8.onnx (+ .data)  the 8-bit (Q/DQ) UNet and VAE decoder (+ the opt-in image encoder), `--precision int8|fp8`
      unet.int8-fp16.onnx  unet.fp8-fp16.onnx   the same, GPU-shaped: float parts fp16 (export/gpu_quant.py)
      unet_map.onnx  unet_map.<precision>.onnx (+ .data)  the map-only UNet of every UNet precision (export/map_graph.py;
                               optional: directories exported before it have none)
      trt/<cache key>/...      TensorRT plans + timing cache (written by `monkey-trt build`)

This module holds what a manifest says: the dataclasses (`Manifest`, `NetworkEntry`, `PrecisionFiles`, ...),
their JSON form and the precisions. The exporter builds a `Manifest` and calls `write`; the runtime calls
`enginedir.load.load_manifest`, which reads it back and checks the directory against it (the README's
"Trust model"). Lean: stdlib + numpy.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from monkey_trt.core.atomic import write_json_atomic
from monkey_trt.core.errors import EngineDirError
from monkey_trt.core.output_folders import safe_relpath, valid_digests
from monkey_trt.enginedir.networks import CLIP_MEAN, CLIP_STD, ModelDims, NetworkDesc, Profile, TensorDesc, max_ip_images

SCHEMA = "monkey-trt/engine-dir"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8", "fp8")  # fp32: the entry's own files; others: NetworkEntry.precisions (optional, additive)
# 8-bit precisions quantize the UNet and VAE decoder (+ the image encoder on request; export/quantize_nets.py): a network
# without its own graph of such a precision runs its fp32 graph (Manifest.run_precision), as the manifest's quantization record says.
QUANTIZED_PRECISIONS = ("int8", "fp8")
# An 8-bit graph's base: the precision of its float parts. fp32: the CPU graph (ORT CPU, OpenVINO); fp16: the
# GPU graph (TensorRT, ORT CUDA/TensorRT EP; export/gpu_quant.py). Keys in NetworkEntry.precisions: graph_key.
QUANT_BASES = ("fp32", "fp16")
CPU_BASE, GPU_BASE = QUANT_BASES
TOKENIZER_FILE = "tokenizer/tokenizer.json"  # the one tokenizer file the runtime opens



def check_precision(precision: str) -> str:
    """One precision an engine directory can hold (`--precision` of generate, build, bench, serve)."""
    if precision not in PRECISIONS:
        raise EngineDirError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def graph_key(precision: str, base: str = CPU_BASE) -> str:
    """The key of `precision`'s graph of `base` in NetworkEntry.precisions: "int8" (fp32 base, as written before
    bases existed), "int8-fp16"; non-8-bit precisions have one graph (the base is ignored)."""
    if base not in QUANT_BASES:
        raise EngineDirError(f"an 8-bit graph's base must be one of {', '.join(QUANT_BASES)}, got {base!r}")
    return f"{precision}-{base}" if precision in QUANTIZED_PRECISIONS and base != CPU_BASE else precision


def split_key(key: str) -> tuple[str, str]:
    """graph_key's inverse: "int8-fp16" -> ("int8", "fp16"); "fp16" -> ("fp16", "fp32")."""
    precision, _, base = key.partition("-")
    return precision, base or CPU_BASE


GRAPH_KEYS = tuple(dict.fromkeys(graph_key(p, b) for p in PRECISIONS if p != "fp32" for b in QUANT_BASES))


def parse_precisions(text: str | tuple[str, ...]) -> tuple[str, ...]:
    """`export --precision fp32,fp16`: a comma list (or tuple) of known precisions, unique, in order."""
    items = text.split(",") if isinstance(text, str) else list(text)
    precisions = tuple(dict.fromkeys(p.strip() for p in items if p.strip()))
    if not precisions or any(p not in PRECISIONS for p in precisions):
        shown = text if isinstance(text, str) else ",".join(text)
        raise EngineDirError(f"--precision must be a comma list of {', '.join(PRECISIONS)}, got {shown!r}")
    return precisions


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
    base: str = CPU_BASE  # 8-bit graphs: the precision of the float parts (QUANT_BASES); absent in older manifests: fp32

    def to_json(self) -> dict:
        d = {"file": self.file, "data_file": self.data_file, "sha256": self.sha256, "sizes": self.sizes,
             "fp32_ops": list(self.fp32_ops)}
        if self.quantization:
            d["quantization"] = self.quantization
            d["base"] = self.base
        return d

    @classmethod
    def from_json(cls, d: dict) -> "PrecisionFiles":
        return cls(d["file"], d.get("data_file"), dict(d["sha256"]), {k: int(v) for k, v in d["sizes"].items()},
                   tuple(d.get("fp32_ops", ())), dict(d.get("quantization", {})), d.get("base", CPU_BASE))


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
    max_subjects: int = 1  # subject images per request (`export --max-subjects`); absent in older manifests: 1

    @property
    def max_ip_images(self) -> int:
        """The most IP images one request may send (one UNet call's N): max_subjects + 1 (the background image's
        slot) for a UNet with the image axis, 1 for a directory exported before it (one subject, no background)."""
        return max_ip_images(self.networks["unet"].desc, self.max_subjects)

    @property
    def background_slot(self) -> bool:
        """Whether requests may add a background image (directories exported before the image axis: no)."""
        return self.max_ip_images > self.max_subjects

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return np.asarray(self.scheduler.alphas_cumprod, dtype=np.float32)

    @property
    def precisions(self) -> tuple[str, ...]:
        """Precisions the engine directory runs ("fp32" always): every network has the graph, or for the 8-bit
        precisions, at least one network (the others run fp32, see run_precision)."""
        return tuple(p for p in PRECISIONS if p == "fp32" or all(p in e.precisions for e in self.networks.values())
                     or (p in QUANTIZED_PRECISIONS and any(self.bases(n, p) for n in self.networks)))

    def bases(self, network: str, precision: str) -> tuple[str, ...]:
        """The bases of `network`'s `precision` graphs in this directory (8-bit: QUANT_BASES order)."""
        have = self.networks[network].precisions
        return tuple(b for b in QUANT_BASES if graph_key(precision, b) in have)

    def run_precision(self, network: str, precision: str, base: str = CPU_BASE) -> str:
        """Which of `network`'s graphs (a graph_key) runs when the engine runs `precision` on `base`'s providers."""
        return graph_precision(self, network, precision, base)

    def path(self, root: Path, network: str, precision: str = "fp32", base: str = CPU_BASE) -> Path:
        """The ONNX file of `network` in `precision` (8-bit: of `base`); EngineDirError if that graph was not exported."""
        try:
            return Path(root) / self.networks[network].files(self.run_precision(network, precision, base))[0]
        except KeyError:
            others = self.bases(network, precision) if precision in QUANTIZED_PRECISIONS else ()
            if others:  # the other base only: one line naming the export that adds this one (no calibration)
                raise EngineDirError(wrong_base_message(root, network, precision, base, others[0],
                                                        self.export_command(root, precision, base))) from None
            what = f"{precision} ONNX" if precision not in QUANTIZED_PRECISIONS else f"{precision} ONNX for {network}"
            raise EngineDirError(f"{root} has no {what} (exported: {', '.join(self.precisions)}): "
                                 f"run `{self.export_command(root, precision)}`") from None

    def export_command(self, root: Path, precision: str, base: str | None = None) -> str:
        """The `monkey-trt export` that adds `precision` to this directory: its own model, mask layer and profile
        (the defaults would name the hub's model, which the directory refuses without --force)."""
        src, p = self.source, self.profile
        parts = ["monkey-trt export", f"--out {shlex.quote(str(root))}"]
        parts += [f"--{k.replace('_', '-')} {shlex.quote(str(src[k]))}" for k in ("base", "ip_adapter", "ip_weight") if src.get(k)]
        parts += [f"--height {p.height.opt} --width {p.width.opt}", f"--min {p.height.min}x{p.width.min}",
                  f"--max {p.height.max}x{p.width.max}", f"--batch {p.batch.max}", f"--mask-layer {shlex.quote(self.mask_layer)}"]
        if self.background_slot:  # a directory with the image axis: its own limit (older ones take any, see existing_export_matches)
            parts.append(f"--max-subjects {self.max_subjects}")
        if self.exporter.get("onnx_opset"):
            parts.append(f"--opset {self.exporter['onnx_opset']}")
        return " ".join([*parts, f"--precision {precision}", *([f"--quant-base {base}"] if base else [])])

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
            "max_subjects": self.max_subjects,
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
            max_subjects=int(d.get("max_subjects", 1)),
        )

    def write(self, root: Path) -> Path:
        return write_json_atomic(Path(root) / MANIFEST, self.to_json())


def graph_precision(manifest, network: str, precision: str, base: str = CPU_BASE) -> str:
    """Which of `network`'s graphs (its graph_key) runs when the engine runs `precision` on providers that take
    `base`'s 8-bit graphs: its own, or fp32 for a network an 8-bit export left unquantized (only when that 8-bit
    precision was exported: never a silent fallback). An 8-bit network with only the other base's graph gets
    this base's key, which it lacks (Manifest.path says which export adds it). Takes any manifest-like object
    with `networks` (entries with `precisions`) and `precisions`."""
    if precision in QUANTIZED_PRECISIONS and precision in manifest.precisions:
        have = manifest.networks[network].precisions
        if not any(graph_key(precision, b) in have for b in QUANT_BASES):
            return "fp32"
    return graph_key(precision, base)


def wrong_base_message(root, network: str, precision: str, base: str, other: str, command: str) -> str:
    """One line: `network` has `precision` graphs of base `other` only; the providers asked run `base`'s."""
    who = {CPU_BASE: ("CPU", "ONNX Runtime's CPU provider and OpenVINO run"),
           GPU_BASE: ("GPU", "TensorRT and ONNX Runtime's CUDA/TensorRT providers run")}
    note = " (converts the calibrated graph: no new calibration)" if other == CPU_BASE else ""
    return (f"{root} has the {precision} {network} quantized from {other} only (the {who[other][0]} graph); "
            f"{who[base][1]} the {base}-based one: run `{command}`{note}")


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
    unknown = sorted(set(precisions) - set(GRAPH_KEYS))
    if unknown:
        raise ValueError(f"network {name}: unknown precision(s) {', '.join(unknown)}")
    wrong = sorted(k for k, f in precisions.items() if split_key(k)[0] in QUANTIZED_PRECISIONS and split_key(k)[1] != f.base)
    if wrong:
        raise ValueError(f"network {name}: graph {wrong[0]} records base {precisions[wrong[0]].base}")
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
