"""fp16 graphs: what the export keeps in fp32, the manifest record, running them, and their fidelity
measured by an executor that is not the exporter (onnx's reference evaluator) against the PyTorch fp32
reference on identical noise: mask IoU >= 0.98, image PSNR >= 35 dB."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from monkey_trt.cli import main
from monkey_trt.core.config import Request
from monkey_trt.engine.compare import mask_iou, psnr
from monkey_trt.enginedir.load import load_manifest
from monkey_trt.enginedir.manifest import MANIFEST
from monkey_trt.export.fidelity import MIN_MASK_IOU, MIN_PSNR_DB, measure_fp16
from monkey_trt.export.graph_walks import embedding_nodes, map_path_nodes
from monkey_trt.runtime.noise import NoisePlan
from monkey_trt.runtime.pipeline import MonkeyPipeline

F32, F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


def _types(model) -> dict[str, int]:
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def test_manifest_records_fp16_per_network(engine_dir):
    m = load_manifest(engine_dir)  # verifies every file of both precisions
    assert m.precisions == ("fp32", "fp16")
    for name, entry in m.networks.items():
        f16 = entry.precisions["fp16"]
        assert f16.file == f"{name}.fp16.onnx" and set(f16.sha256) == {f16.file} and f16.file not in entry.sha256
        assert (engine_dir / f16.file).stat().st_size < (engine_dir / entry.file).stat().st_size  # fp16 weights
    assert set(m.networks["unet"].precisions["fp16"].fp32_ops) >= {"InstanceNormalization", "LayerNormalization", "Sin", "Cos"}
    raw = json.loads((engine_dir / MANIFEST).read_text())
    assert raw["schema_version"] == 1 and "fp16" in raw["networks"]["unet"]["precisions"]


def test_fp16_unet_keeps_the_mask_map_and_embeddings_fp32(engine_dir):
    fp32 = onnx.load(str(engine_dir / "unet.onnx"))
    model = onnx.load(str(engine_dir / "unet.fp16.onnx"))
    types = _types(model)
    nodes = {n.name: n for n in model.graph.node}
    # the map path: to_q, to_k_ip, Q K_ip^T, softmax, head mean (docs/method.md "Pass 1: the mask": no 1/sqrt(d), thresholded at 0.5)
    path = map_path_nodes(fp32.graph)
    ops = sorted(nodes[n].op_type for n in path if n in nodes)
    assert ops.count("Softmax") == 1 and ops.count("ReduceMean") == 1 and ops.count("MatMul") >= 3
    assert all("attn2" in n for n in path), "the walk stays inside the mask layer"
    for n in path:
        if nodes[n].op_type in ("MatMul", "Softmax", "ReduceMean"):
            assert all(types.get(t) == F32 for t in (*nodes[n].input, *nodes[n].output) if t in types), n
    assert {nodes[n].op_type for n in embedding_nodes(fp32.graph)} >= {"Mul"}
    for n in model.graph.node:
        if n.op_type in ("Sin", "Cos", "InstanceNormalization", "LayerNormalization"):
            assert types.get(n.output[0]) == F32, n.name
    # ...while the rest carries fp16 weights and activations
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(types[c.input[1]] == F16 for c in convs)
    # inputs and outputs keep the manifest's dtypes
    assert {v.name: v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)} == \
           {v.name: v.type.tensor_type.elem_type for v in (*fp32.graph.input, *fp32.graph.output)}


def test_ort_runs_the_fp16_graphs(engine_dir, subject):
    """The same files ONNX Runtime's CUDA provider runs; on CPU ORT inserts casts, so this checks loading and I/O."""
    req = Request("a toy on the beach", 64, 64, seed=0)
    with MonkeyPipeline.from_engine_dir(engine_dir, backend="ort", precision="fp16") as p16, \
            MonkeyPipeline.from_engine_dir(engine_dir, backend="ort") as p32:
        noise = NoisePlan.from_seed(0, req.latent_shape(p32.dims), req.config.noise_steps)
        assert {r.model_path.name for r in p16.runners.values()} == {f"{n}.fp16.onnx" for n in p16.runners}
        assert p16.info()["options"]["precision"] == "fp16"
        a, b = p16(req, subject, noise=noise), p32(req, subject, noise=noise)
    assert a.image.dtype == np.float32 and a.image.shape == (64, 64, 3)
    assert mask_iou(a.mask.mask, b.mask.mask) >= MIN_MASK_IOU and psnr(a.image, b.image) >= MIN_PSNR_DB
    assert not np.array_equal(a.image, b.image)  # really the fp16 graphs


def test_fp16_fidelity_one_seed(engine_dir, reference, subject):
    """The quick version for the default suite (64²); the slow one below is the issue's 3 seeds at 128²."""
    (row,) = measure_fp16(engine_dir, reference, subject, seeds=(0,), size=64)
    assert row.mask_iou >= MIN_MASK_IOU and row.psnr_db >= MIN_PSNR_DB, row


@pytest.mark.slow
def test_fp16_fidelity_three_seeds(engine_dir, reference, subject):
    rows = measure_fp16(engine_dir, reference, subject, seeds=(0, 1, 2), size=128)
    for r in rows:
        print(f"seed {r.seed}: mask IoU {r.mask_iou:.4f}, PSNR {r.psnr_db:.2f} dB")
        assert r.mask_iou >= MIN_MASK_IOU and r.psnr_db >= MIN_PSNR_DB, r


def _fp32_only_copy(engine_dir, tmp_path):
    """A copy of the engine directory as an fp32-only export left it."""
    out = tmp_path / "engine"
    shutil.copytree(engine_dir, out)
    raw = json.loads((out / MANIFEST).read_text())
    for entry in raw["networks"].values():
        (out / entry.pop("precisions")["fp16"]["file"]).unlink()
    raw["exporter"].pop("fp16_converter", None)
    (out / MANIFEST).write_text(json.dumps(raw))
    return out


def test_export_adds_fp16_to_an_existing_directory(engine_dir, tiny_model_dir, tmp_path, capsys):
    out = _fp32_only_copy(engine_dir, tmp_path)
    fp32_files = {f.name: f.stat().st_mtime_ns for f in out.glob("*.onnx")}
    argv = ["export", "--base", str(tiny_model_dir / "base"), "--ip-adapter", str(tiny_model_dir / "ip-adapter"),
            "--out", str(out), "--height", "64", "--width", "64", "--min", "64x64", "--max", "128x128", "--batch", "2"]  # the session export's profile
    assert main([*argv, "--precision", "fp16"]) == 0
    assert "added fp16" in capsys.readouterr().out
    m = load_manifest(out)
    assert m.precisions == ("fp32", "fp16")
    assert {f: (out / f).stat().st_mtime_ns for f in fp32_files} == fp32_files  # the fp32 export untouched
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left
    assert main([*argv, "--precision", "fp32,fp16"]) == 0 and "already has" in capsys.readouterr().out
    # another profile: refused, nothing changed
    assert main([*argv[:-4], "--min", "64x64", "--max", "256x256", "--precision", "fp16"]) == 2
    assert "pass --force" in capsys.readouterr().err


def test_missing_precision_is_one_line_naming_the_command(engine_dir, tiny_model_dir, tmp_path, capsys):
    out = _fp32_only_copy(engine_dir, tmp_path)
    argv = ["generate", "--backend", "ort", "--engine-dir", str(out), "--image", str(tiny_model_dir / "subject.png"),
            "--prompt", "a toy", "--height", "64", "--width", "64", "--out", str(tmp_path / "o"), "--precision", "fp16"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"monkey-trt export --out {out} --base " in err and err.endswith("--precision fp16`")
    assert not (tmp_path / "o").exists()
    assert main([*argv[:-1], "int4"]) == 2 and "--precision must be one of fp32, fp16" in capsys.readouterr().err
    assert main(["export", "--out", str(tmp_path / "x"), "--precision", "fp7"]) == 2


def test_build_explains_the_old_fp16_flag(tmp_path, capsys):
    assert main(["build", "--engine-dir", str(tmp_path), "--fp16"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--precision fp16" in err
    assert not list(tmp_path.iterdir())
