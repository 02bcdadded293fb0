"""Export MONKEY's four networks to ONNX and write an engine directory (see runtime/manifest.py).

    export_engine_dir(ExportOptions(...)) -> ENGINE_DIR

Everything is written into a staging folder and committed at the end (atomic.OutputStage), so a
failed export never leaves a half-written engine directory, and `--force` replaces only the files
the earlier manifest lists. torch/diffusers are used here only.
"""

from __future__ import annotations

import gc
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from monkey_trt.core import __version__
from monkey_trt.core.config import DEFAULT_MASK_LAYER, ModelSource
from monkey_trt.core.errors import MonkeyError
from monkey_trt.core.output_folders import OutputStage, check_target, folder_lock, staged_files
from monkey_trt.enginedir.digests import sha256_file
from monkey_trt.enginedir.manifest import MANIFEST, QUANTIZED_PRECISIONS, ImagePreprocess, Manifest, NetworkEntry, SchedulerConsts, manifest_files, parse_precisions
from monkey_trt.enginedir.networks import (
    MAX_SUBJECTS_DEFAULT,
    NETWORKS,
    ModelDims,
    NetworkDesc,
    Profile,
    check_max_subjects,
    network_descs,
    symbol_sizes,
)
from monkey_trt.export.fp16 import write_fp16_network
from monkey_trt.export.map_graph import map_file_names, with_map_graphs
from monkey_trt.export.gpu_quant import DEFAULT_QUANT_BASE, add_gpu_graphs, check_quant_base, gpu_quant_file_names, plan_bases
from monkey_trt.export.quant_groups import all_8bit_networks, networks_8bit
from monkey_trt.export.quantize import quantized_file_names
from monkey_trt.export.quantize_nets import add_8bit
from monkey_trt.export.wrappers import (
    ImageEncoderNet,
    TextEncoderNet,
    UNetNet,
    VaeDecoderNet,
)
from monkey_trt.reference.loading import load_reference_models
from monkey_trt.reference.pipeline import lcm_schedule, torch_guidance_freqs
from monkey_trt.runtime.tokenizer import ClipTokenizer

EXTERNAL_DATA_THRESHOLD = 1 << 30  # networks above 1 GiB keep weights in one `<net>.onnx.data` file
Progress = Callable[[str, int, int], None]  # (what, steps done, steps in all)
WRITER_WAIT_S = 6 * 3600.0  # how long a writer of an engine directory waits for another (an sd15 int8 export takes minutes)


@dataclass(frozen=True)
class ExportOptions:
    source: ModelSource
    out: Path
    profile: Profile
    mask_layer: str = DEFAULT_MASK_LAYER
    opset: int = 17
    fold_constants: bool = True
    force: bool = False  # replace an existing engine directory
    precisions: tuple[str, ...] = ("fp32",)  # fp32 is always written (the reference and the fp16 source)
    calibration: object | None = None  # int8/fp8: export.calibration.CalibrationSpec (None: the built-in defaults)
    quant_base: str = DEFAULT_QUANT_BASE  # int8/fp8: which bases (CPU / GPU graphs) to write (export/gpu_quant.py)
    quantize_image_encoder: bool = False  # int8/fp8: the image encoder too (opt-in, it feeds the mask: export/quantize_nets.py)
    max_subjects: int = MAX_SUBJECTS_DEFAULT  # subject images per request; the UNet takes one more (the background)

    def __post_init__(self) -> None:
        object.__setattr__(self, "precisions", parse_precisions(self.precisions))
        check_max_subjects(self.max_subjects)
        check_quant_base(self.quant_base, self.precisions)


TRACE_IMAGES = 2  # IP images per sample when tracing the UNet: a size-1 axis could be specialised away, 2 keeps N dynamic


def sample_inputs(desc: NetworkDesc, dims: ModelDims, batch: int, height: int, width: int,
                  images: int = 1) -> tuple[torch.Tensor, ...]:
    """Deterministic example inputs of the profile's opt shape with `images` IP images (for tracing and the smoke check)."""
    g = torch.Generator().manual_seed(0)
    sizes = symbol_sizes(batch, height, width, dims, images)
    out = []
    for t in desc.inputs:
        shape = desc.resolve(t.shape, sizes)
        if t.name == "input_ids":
            out.append(torch.randint(0, 100, shape, generator=g, dtype=torch.int64))
        elif t.name == "timestep":
            out.append(torch.full(shape, 759.0))
        elif t.name == "ip_mask":
            out.append((torch.rand(shape, generator=g) > 0.5).float())
        elif t.name == "ip_scale":
            out.append(torch.ones(shape))
        else:
            out.append(torch.randn(shape, generator=g))
    return tuple(out)


def trace_size(name: str, height: int, width: int, dims: ModelDims) -> tuple[int, int]:
    """The size to trace at. diffusers' UNet only forwards skip-connection sizes to its upsamplers when
    a latent side is not a multiple of 2**n_upsamplers; tracing such a size keeps that path (exact for
    every size) in the graph, so one engine serves 64x96 as well as 512x512."""
    latent_h = height // dims.vae_factor
    if name == "unet" and latent_h % 8 == 0 and (width // dims.vae_factor) % 8 == 0:
        return height + dims.vae_factor, width
    return height, width


def export_network(module: torch.nn.Module, desc: NetworkDesc, args: tuple, path: Path, opset: int) -> None:
    """torch.onnx (TorchScript exporter: proven on SD UNets, symbolic shapes through Shape ops)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path), input_names=desc.input_names, output_names=desc.output_names,
            dynamic_axes=desc.dynamic_axes(), opset_version=opset, do_constant_folding=True, dynamo=False,
        )


def finalize_onnx(path: Path, fold: bool, desc: NetworkDesc | None = None) -> list[str]:
    """Check, fold constants (Polygraphy, on the graph with its big weights held aside: export/lean_onnx.py), name
    the symbolic dims canonically (`canonical_dims`), infer shapes; weights > 1 GiB go to one `.onnx.data` file.

    The weights are never all in memory at once: the graph is loaded without its external data, and what the
    exporter scattered into files is copied into the one data file a chunk at a time. Returns the network's file
    names (relative to its folder).
    """
    import onnx

    from monkey_trt.export.lean_onnx import fold_graph_only, write_streaming

    exported_bytes = sum(f.stat().st_size for f in path.parent.iterdir())  # .onnx + any per-tensor files
    model = onnx.load(str(path), load_external_data=False)
    if fold:
        model = fold_graph_only(model)
    if desc is not None:
        canonical_dims(model, desc)
    big = exported_bytes > EXTERNAL_DATA_THRESHOLD
    work = path.parent / ".exported"  # the exporter's files, read while the final ones are written
    work.mkdir()
    for f in list(path.parent.iterdir()):
        if f != work:
            os.replace(f, work / f.name)
    files = write_streaming(model, work, path, external=big)
    del model
    for f in work.iterdir():  # the exporter may have scattered one file per tensor
        f.unlink()
    work.rmdir()
    onnx.checker.check_model(str(path))
    onnx.shape_inference.infer_shapes_path(str(path), str(path))
    return files


def canonical_dims(model, desc: NetworkDesc) -> None:
    """Make the graph's symbolic dim names the same on every export, keeping which dims are equal.

    ONNX Runtime's symbolic shape inference (run by Polygraphy's folding) names derived dims by sympy expressions
    whose printed form depends on the process's hash seed (`floor(h/2 + 1/2)` or `floor(h/2 - 1/2) + 1`), so two exports
    of one model differed byte for byte. Names are opaque symbols to every runtime: only which dims share a name
    matters (ORT's optimizer and the quantizer use it). So each name is replaced, consistently everywhere: a name the
    descriptor declares at an input or output keeps (or gets) the declared symbol (B, H, W, h, w, Q), every other
    derived name becomes `s0`, `s1`, ... in order of first appearance. Nodes, weights and types never change."""
    declared = {t.name: t.shape for t in (*desc.inputs, *desc.outputs)}
    io = [*model.graph.input, *model.graph.output]
    rename: dict[str, str] = {}
    for v in io:  # the declared symbols first: an expression the trace wrote at a declared axis takes its symbol
        shape = declared.get(v.name)
        for i, d in enumerate(v.type.tensor_type.shape.dim):
            if shape is not None and i < len(shape) and isinstance(shape[i], str) and d.HasField("dim_param"):
                rename.setdefault(d.dim_param, shape[i])
    symbols = {d for shape in declared.values() for d in shape if isinstance(d, str)}
    derived = 0
    for v in (*io, *model.graph.value_info):
        for d in v.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param not in rename:
                if d.dim_param in symbols:
                    rename[d.dim_param] = d.dim_param
                else:
                    rename[d.dim_param], derived = f"s{derived}", derived + 1
    for v in (*io, *model.graph.value_info):
        shape = declared.get(v.name)
        for i, d in enumerate(v.type.tensor_type.shape.dim):
            if shape is not None and i < len(shape) and isinstance(shape[i], str):
                d.dim_param = shape[i]
            elif d.HasField("dim_param"):
                d.dim_param = rename[d.dim_param]


def export_engine_dir(opts: ExportOptions, progress: Progress | None = None) -> Path:
    fp16 = "fp16" in opts.precisions
    quantized = [p for p in opts.precisions if p in QUANTIZED_PRECISIONS]
    total = 3 + (3 if fp16 else 2) * len(NETWORKS) + (1 if quantized else 0)  # load, export + check (+ fp16) per network, manifest (+ 8-bit), map-only UNet
    done = 0

    def say(msg: str) -> None:
        nonlocal done
        if progress is not None:
            progress(msg, done, total)
        done += 1

    out = check_export_out(opts.out, opts.force)

    say("loading models")
    m = load_reference_models(opts.source)
    if opts.mask_layer not in m.ip_layers:
        raise MonkeyError(f"--mask-layer {opts.mask_layer!r} is not an IP-Adapter layer; choose one of: {', '.join(m.ip_layers)}")
    dims = m.dims
    for side in (opts.profile.height, opts.profile.width):
        if any(v % dims.vae_factor for v in side.as_list()):
            raise MonkeyError(f"profile sizes must be multiples of {dims.vae_factor}, got {side.as_list()}")
    descs = network_descs(dims)
    meta = _model_facts(m, dims)  # what the manifest needs once the torch modules are gone
    p = opts.profile
    with OutputStage.open(out, MANIFEST, manifest_files, names=expected_files() + map_file_names() + (quantized_file_names() + gpu_quant_file_names(all_8bit_networks()) if quantized else [])) as stage:
        tmp = stage.path
        entries = {}
        for name in EXPORT_ORDER:  # one network at a time, its torch module let go once traced
            say(f"exporting {name}")
            net_dir = tmp / f".{name}"
            net_dir.mkdir()
            args = sample_inputs(descs[name], dims, p.batch.opt, *trace_size(name, p.height.opt, p.width.opt, dims), TRACE_IMAGES)
            module = _take_module(m, name, opts.mask_layer)
            export_network(module.eval(), descs[name], args, net_dir / f"{name}.onnx", opts.opset)
            del module, args
            gc.collect()
            say(f"checking and folding {name}")
            files = finalize_onnx(net_dir / f"{name}.onnx", opts.fold_constants, descs[name])
            for f in files:
                os.replace(net_dir / f, tmp / f)
            net_dir.rmdir()
            precisions = {}
            if fp16:
                say(f"converting {name} to fp16")
                precisions["fp16"] = write_fp16_network(tmp / files[0], tmp, name)
            entries[name] = NetworkEntry(
                desc=descs[name], file=files[0], data_file=files[1] if len(files) > 1 else None,
                sha256={f: sha256_file(tmp / f) for f in files}, sizes={f: (tmp / f).stat().st_size for f in files},
                precisions=precisions,
            )
        entries = {name: entries[name] for name in NETWORKS}
        say("writing tokenizer and manifest")
        tok = ClipTokenizer.from_dir(Path(meta["files"]["base"]) / "tokenizer")
        (tmp / "tokenizer").mkdir()
        tok.save(tmp / "tokenizer")
        manifest = Manifest(
            dims=dims, profile=p, mask_layer=opts.mask_layer, ip_layers=meta["ip_layers"],
            scheduler=meta["scheduler"], preprocess=ImagePreprocess(size=dims.image_size),
            vae_scaling_factor=meta["vae_scaling_factor"], networks=entries,
            files={f"tokenizer/{f.name}": sha256_file(f) for f in sorted((tmp / "tokenizer").iterdir())},
            source={**asdict(opts.source), **meta["files"]},
            exporter={"monkey_trt": __version__, "torch": torch.__version__, "onnx_opset": opts.opset,
                      "diffusers": _version("diffusers"), "transformers": _version("transformers"),
                      "onnx": _version("onnx"), "precision": "fp32", "constant_folding": opts.fold_constants,
                      **({"fp16_converter": f"onnxruntime.transformers.float16 {_version('onnxruntime')}"} if fp16 else {})},
            max_subjects=opts.max_subjects,
        )
        manifest.write(tmp)
        if quantized:  # the staged directory is a complete fp32 engine: calibrate on it, same commit
            nets = networks_8bit(opts.quantize_image_encoder)
            say(f"calibrating and quantizing the UNet, {', '.join(nets)} to {', '.join(quantized)}")
            spec = opts.calibration or default_calibration(opts.profile)
            sub = _sub_progress(progress, done, total)
            bases = plan_bases(None, quantized, opts.quant_base, fp16)  # the GPU graphs beside (or instead of) the CPU ones
            manifest = add_8bit(tmp, manifest, tmp, quantized, spec, progress=sub, image_encoder=opts.quantize_image_encoder)
            manifest = add_gpu_graphs(tmp, manifest, tmp, bases, progress=sub)
        say("cutting the map-only UNet (pass 1's last call)")
        manifest = with_map_graphs(manifest, lambda _f: tmp, tmp)  # from every UNet precision written above
        manifest.write(tmp)
        return stage.commit(staged_files(tmp))


EXPORT_ORDER = ("text_encoder", "vae_decoder", "image_encoder", "unet")  # small first: each traced with fewer others loaded


def _model_facts(m, dims: ModelDims) -> dict:
    """What the manifest takes from the loaded models, read before they are let go."""
    return {"ip_layers": tuple(m.ip_layers), "scheduler": scheduler_consts(m.scheduler, dims.time_cond_dim),
            "vae_scaling_factor": float(m.vae.config.scaling_factor), "files": dict(m.files)}


def _take_module(m, name: str, mask_layer: str) -> torch.nn.Module:
    """The export wrapper of network `name`; `m` lets go of the torch modules only it used (freed once traced)."""
    if name == "text_encoder":
        module, m.text_encoder = TextEncoderNet(m.text_encoder), None
    elif name == "image_encoder":
        module, m.image_encoder, m.image_proj = ImageEncoderNet(m.image_encoder, m.image_proj), None, None
    elif name == "unet":
        module, m.unet, m.ctx = UNetNet(m.unet, m.ctx, m.ip_layers.index(mask_layer)), None, None
    else:
        module, m.vae = VaeDecoderNet(m.vae), None
    return module


def default_calibration(profile: Profile):
    """The built-in calibration set (the paper's prompts, the embedded subject) at the profile's opt size."""
    from monkey_trt.export.calibration import CalibrationSpec

    return CalibrationSpec.build(height=profile.height.opt, width=profile.width.opt)


def _sub_progress(progress: Progress | None, done: int, total: int) -> Progress | None:
    """Calibration and quantization messages under one step of the export's progress."""
    if progress is None:
        return None
    return lambda msg, _i, _n: progress(msg, done - 1, total)


def expected_files() -> list[str]:
    """The files every engine directory has (big networks add `<net>.onnx.data`)."""
    return [f"{n}.onnx" for n in NETWORKS] + ["tokenizer/tokenizer.json", MANIFEST]


def check_export_out(out: Path, force: bool) -> Path:
    """Before any work: `out` is new (or an empty folder), or `force` and an earlier engine directory
    whose own files may be replaced (a user's files there are kept; one in the way is refused)."""
    out = Path(out).absolute()
    check_target(out, MANIFEST, manifest_files, expected_files() + map_file_names())
    if out.is_dir() and any(out.iterdir()) and not force:
        raise MonkeyError(f"{out} exists: pass --force to replace the engine directory's files")
    return out


def existing_export_matches(opts: ExportOptions) -> bool:
    """`opts.out` is an engine directory exported from the same model, mask layer and profile (so only
    missing precisions need adding); False when it does not exist. A directory from another model or
    profile raises the usual "exists: pass --force" error."""
    from monkey_trt.enginedir.load import read_manifest

    out = Path(opts.out).absolute()
    if not (out / MANIFEST).is_file():
        return False
    m = read_manifest(out)
    src = opts.source
    same = (m.profile == opts.profile and m.mask_layer == opts.mask_layer and m.exporter.get("onnx_opset") == opts.opset
            and _same_model(m.source.get("base"), src.base) and _same_model(m.source.get("ip_adapter"), src.ip_adapter)
            and Path(str(m.source.get("ip_weight"))).stem == Path(src.ip_weight).stem  # "x" names x.safetensors or x.bin
            and (not m.background_slot or m.max_subjects == opts.max_subjects))  # a directory from before the image axis keeps its one
    if not same:
        raise MonkeyError(f"{out} holds an export of another model, mask layer, profile or --max-subjects: pass --force to replace it")
    return True


def _same_model(recorded, given: str) -> bool:
    """The manifest's resolved model location is what `given` (a folder or a hub id) names."""
    recorded = str(recorded)
    return (recorded == given or recorded == str(Path(given).absolute())
            or f"models--{given.replace('/', '--')}" in Path(recorded).parts)


def add_precisions(engine_dir: Path, precisions: tuple[str, ...], progress: Progress | None = None,
                   calibration=None, quant_base: str = DEFAULT_QUANT_BASE, image_encoder: bool = False) -> tuple[str, ...]:
    """Add the missing `precisions` to an existing engine directory from its fp32 ONNX; returns those added.

    Through atomic.OutputStage like every output: the new graphs and manifest are staged next to the
    directory and committed under its lock; the fp32 files stay where they are (`keep`), a file in the
    way that monkey-trt did not write is refused, and an interruption leaves the old directory intact.
    Writers of one directory take turns (a lock on the directory itself, held from reading its manifest
    to the commit), so what each reports added is there: a second writer waits, then adds only what is
    still missing.
    """
    root = Path(engine_dir).absolute()

    def waiting() -> None:
        if progress is not None:
            progress(f"waiting for another process writing {root}", 0, 1)

    if not root.is_dir():  # load_manifest's one line for what is not an engine directory
        return _add_precisions(root, precisions, progress, calibration, quant_base, image_encoder)
    with folder_lock(root, timeout_s=WRITER_WAIT_S, waiting=waiting):
        return _add_precisions(root, precisions, progress, calibration, quant_base, image_encoder)


def _add_precisions(root: Path, precisions: tuple[str, ...], progress: Progress | None, calibration,
                    quant_base: str = DEFAULT_QUANT_BASE, image_encoder: bool = False) -> tuple[str, ...]:
    """add_precisions under the directory's lock."""
    from monkey_trt.enginedir.load import load_manifest

    manifest = load_manifest(root)  # verifies the fp32 files the conversion reads
    bases = plan_bases(manifest, precisions, quant_base, "fp16" in precisions or "fp16" in manifest.precisions)
    gpu_added = [f"{b.eight_bit}-fp16" for b in bases if b.convert]  # 8-bit graphs of a base the directory lacks
    todo = [p for p in precisions if p not in manifest.precisions or any(b.eight_bit == p and b.calibrate for b in bases)]
    if not todo and not gpu_added:
        return ()
    kept = sorted(manifest_files(root / MANIFEST) - {MANIFEST})
    new_names = ([f for name in NETWORKS for f in (f"{name}.fp16.onnx", f"{name}.fp16.onnx.data")] + quantized_file_names()
                 + gpu_quant_file_names(all_8bit_networks()) + map_file_names() + [MANIFEST])
    with OutputStage.open(root, MANIFEST, manifest_files, names=new_names) as stage:
        entries = dict(manifest.networks)
        exporter = dict(manifest.exporter)
        if "fp16" in todo:
            for i, name in enumerate(NETWORKS):
                if progress is not None:
                    progress(f"converting {name} to fp16", i, len(NETWORKS))
                files = write_fp16_network(manifest.path(root, name), stage.path, name)
                e = entries[name]
                entries[name] = NetworkEntry(e.desc, e.file, e.data_file, e.sha256, e.sizes, {**e.precisions, "fp16": files})
            exporter["fp16_converter"] = f"onnxruntime.transformers.float16 {_version('onnxruntime')}"
        updated = Manifest(**{**manifest.__dict__, "networks": entries, "exporter": exporter})
        quantized = [b.eight_bit for b in bases if b.calibrate]
        if quantized:  # calibrated on the fp32 graphs where they are; the 8-bit files go into the same commit
            updated = add_8bit(root, updated, stage.path, quantized, calibration or default_calibration(manifest.profile),
                               progress=progress, image_encoder=image_encoder)
        updated = add_gpu_graphs(root, updated, stage.path, bases, progress=progress)  # the GPU graphs (no calibration)
        if progress is not None:
            progress("cutting the map-only UNet (pass 1's last call)", 0, 1)
        # every UNet precision now (a directory from before the map-only graph gets its fp32 one too)
        updated = with_map_graphs(updated, lambda f: stage.path if (stage.path / f).is_file() else root, stage.path)
        updated.write(stage.path)
        stage.commit(staged_files(stage.path), keep=kept)
    return tuple(dict.fromkeys([*todo, *gpu_added]))


def scheduler_consts(scheduler, time_cond_dim: int) -> SchedulerConsts:
    """The scheduler's constants as torch computes them (the reference's own tables), so the numpy runtime
    steps bit-exactly."""
    s = lcm_schedule(scheduler)
    return SchedulerConsts(
        alphas_cumprod=tuple(float(a) for a in s.alphas_cumprod),
        coeffs=tuple(float(x) for x in s.coeffs.ravel()),
        guidance_freqs=tuple(float(x) for x in torch_guidance_freqs(time_cond_dim)),
        original_inference_steps=s.original_inference_steps,
        timestep_scaling=s.timestep_scaling,
        sigma_data=s.sigma_data,
        final_alpha_cumprod=s.final_alpha_cumprod,
        num_train_timesteps=s.num_train_timesteps,
    )


def _version(mod: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(mod)
    except md.PackageNotFoundError:
        return "not installed"
