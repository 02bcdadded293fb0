"""ONNX export + engine directory + the lean ONNX Runtime runtime, checked against the PyTorch reference."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from monkey_trt.cli import main
from monkey_trt.core.config import MonkeyConfig, Request
from monkey_trt.core.errors import EngineDirError, MonkeyError
from monkey_trt.engine.compare import compare_outputs
from monkey_trt.engine.ort import OrtRunner
from monkey_trt.enginedir.load import load_manifest
from monkey_trt.enginedir.manifest import MANIFEST
from monkey_trt.export.onnx_export import sample_inputs
from monkey_trt.export.wrappers import (
    ImageEncoderNet,
    TextEncoderNet,
    UNetNet,
    VaeDecoderNet,
)
from monkey_trt.reference.pipeline import ReferencePipeline, torch_noise_plan

PROMPTS = ["a toy on the beach", "a toy in the jungle", "a toy with a city in the background"]
IMAGE_ATOL = 2e-3


def test_engine_dir_layout_and_manifest(engine_dir):
    m = load_manifest(engine_dir)
    assert set(m.networks) == {"text_encoder", "image_encoder", "unet", "vae_decoder", "unet_map"}  # + the map-only UNet
    assert m.networks["unet"].desc.input_names == ["sample", "timestep", "encoder_hidden_states", "timestep_cond", "ip_tokens", "ip_scale", "ip_mask"]
    assert m.networks["unet"].desc.output_names == ["noise_pred", "ip_attn_map"]
    assert m.mask_layer == MonkeyConfig().mask_layer and len(m.ip_layers) == 16
    assert m.profile.height.as_list() == [64, 64, 128]
    assert (engine_dir / "tokenizer" / "tokenizer.json").is_file()
    assert len(m.scheduler.alphas_cumprod) == 1000
    raw = json.loads((engine_dir / MANIFEST).read_text())
    assert raw["schema_version"] == 1 and raw["exporter"]["torch"]


@pytest.mark.parametrize("name", ["text_encoder", "image_encoder", "unet", "vae_decoder"])
def test_each_network_matches_torch(engine_dir, reference, name):
    m = load_manifest(engine_dir)
    r = reference.m
    module = {
        "text_encoder": lambda: TextEncoderNet(r.text_encoder),
        "image_encoder": lambda: ImageEncoderNet(r.image_encoder, r.image_proj),
        "unet": lambda: UNetNet(r.unet, r.ctx, r.ip_layers.index(m.mask_layer)),
        "vae_decoder": lambda: VaeDecoderNet(r.vae),
    }[name]()
    desc = m.networks[name].desc
    for h, w in ((64, 64), (96, 128)):
        args = sample_inputs(desc, m.dims, 1, h, w)
        with torch.no_grad():
            want = module(*args)
        want = want if isinstance(want, tuple) else (want,)
        with OrtRunner(engine_dir / m.networks[name].file) as runner:
            got = runner.infer({n: a.numpy() for n, a in zip(desc.input_names, args)})
        rows = compare_outputs({n: t.numpy() for n, t in zip(desc.output_names, want)}, got, atol=1e-4)
        assert all(row.ok and row.cosine > 0.99999 for row in rows), "\n".join(map(str, rows))


def assert_matches(got, want) -> None:
    """The runtime's output against the reference's: the mask identical, the image within IMAGE_ATOL."""
    assert np.array_equal(got.mask.mask, want.mask.mask)
    assert np.abs(got.image - want.image).max() <= IMAGE_ATOL


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_ort_matches_reference_on_identical_noise(reference, runtime, subject, seed, prompt):
    req = Request(prompt, 64, 64, seed=seed)
    noise = torch_noise_plan(seed, req.latent_shape(reference.dims), 8)
    want = reference(req, subject, noise=noise)
    got = runtime(req, subject, noise=noise)
    assert_matches(got, want)


def test_ort_matches_reference_non_square(reference, runtime, subject):
    req = Request(PROMPTS[0], 64, 96, seed=7)
    noise = torch_noise_plan(7, req.latent_shape(reference.dims), 8)
    want, got = reference(req, subject, noise=noise), runtime(req, subject, noise=noise)
    assert got.mask.grid == (2, 3)
    assert_matches(got, want)


def test_seeded_runtime_matches_seeded_reference(reference, runtime, subject):
    """Without a noise file the runtime's numpy RNG reproduces torch's CPU generator."""
    req = Request(PROMPTS[1], 64, 64, seed=123)
    want, got = reference(req, subject), runtime(req, subject)
    assert_matches(got, want)


def test_cli_generate_ort_writes_the_same_outputs(tiny_model_dir, engine_dir, tmp_path):
    argv = ["generate", "--backend", "ort", "--engine-dir", str(engine_dir), "--image", str(tiny_model_dir / "subject.png"),
            "--prompt", PROMPTS[0], "--height", "64", "--width", "64", "--seed", "0", "--out", str(tmp_path / "o"),
            "--save-arrays", "--baseline"]
    assert main(argv) == 0
    names = {p.name for p in (tmp_path / "o").iterdir()}
    assert {"monkey.png", "mask.png", "overlay.png", "result.json", "arrays.npz", "ipadapter.png", "grid.png"} <= names
    assert json.loads((tmp_path / "o" / "result.json").read_text())["backend"] == "ort"


def test_runtime_never_imports_torch_or_diffusers(engine_dir, tiny_model_dir):
    code = textwrap.dedent(f"""
        import sys
        from PIL import Image
        from monkey_trt.core.config import Request
        from monkey_trt.runtime.pipeline import MonkeyPipeline
        pipe = MonkeyPipeline.from_engine_dir({str(engine_dir)!r}, backend="ort")
        out = pipe(Request("a toy on the beach", 64, 64, seed=0), Image.open({str(tiny_model_dir / 'subject.png')!r}))
        assert out.image.shape == (64, 64, 3)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers"))
        print("HEAVY", heavy)
        sys.exit(1 if heavy else 0)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- engine-directory faults: one line, exit 2 ------------------------------------------------
def _copy(engine_dir, tmp_path):
    dst = tmp_path / "engine"
    shutil.copytree(engine_dir, dst)
    return dst


def _generate_exit(engine, tiny_model_dir, tmp_path, capsys, *extra):
    argv = ["generate", "--backend", "ort", "--engine-dir", str(engine), "--image", str(tiny_model_dir / "subject.png"),
            "--prompt", "a toy", "--height", "64", "--width", "64", "--out", str(tmp_path / "out"), *extra]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert not (tmp_path / "out").exists()
    return code, err


def test_wrong_schema_version(engine_dir, tiny_model_dir, tmp_path, capsys):
    eng = _copy(engine_dir, tmp_path)
    raw = json.loads((eng / MANIFEST).read_text())
    raw["schema_version"] = 999
    (eng / MANIFEST).write_text(json.dumps(raw))
    code, err = _generate_exit(eng, tiny_model_dir, tmp_path, capsys)
    assert code == 2 and "schema version 999" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_missing_and_altered_files(engine_dir, tiny_model_dir, tmp_path, capsys):
    eng = _copy(engine_dir, tmp_path)
    (eng / "vae_decoder.onnx").unlink()
    code, err = _generate_exit(eng, tiny_model_dir, tmp_path, capsys)
    assert code == 2 and "missing" in err
    shutil.rmtree(eng)
    eng = _copy(engine_dir, tmp_path)
    data = bytearray((eng / "text_encoder.onnx").read_bytes())
    data[-10] ^= 0xFF
    (eng / "text_encoder.onnx").write_bytes(bytes(data))
    code, err = _generate_exit(eng, tiny_model_dir, tmp_path, capsys)
    assert code == 2 and "sha256" in err
    shutil.rmtree(eng)
    eng = _copy(engine_dir, tmp_path)
    tok = eng / "tokenizer" / "tokenizer.json"
    tok.write_text(tok.read_text().replace("beach", "bench", 1) if "beach" in tok.read_text() else tok.read_text() + " ")
    code, err = _generate_exit(eng, tiny_model_dir, tmp_path, capsys)
    assert code == 2 and "tokenizer/tokenizer.json" in err and "sha256" in err
    (eng / MANIFEST).write_text("{not json")
    code, err = _generate_exit(eng, tiny_model_dir, tmp_path, capsys)
    assert code == 2 and "corrupt" in err
    with pytest.raises(EngineDirError):
        load_manifest(tmp_path / "nowhere")


def test_size_outside_profile(engine_dir, tiny_model_dir, tmp_path, capsys):
    code, err = _generate_exit(engine_dir, tiny_model_dir, tmp_path, capsys, "--height", "256")
    assert code == 2 and "outside the engine profile" in err


def test_wrong_prompt_length_is_refused(engine_dir):
    m = load_manifest(engine_dir)
    with OrtRunner(engine_dir / m.networks["text_encoder"].file) as te:
        with pytest.raises(MonkeyError, match="input_ids"):
            te.infer({"input_ids": np.zeros((1, 70), np.int64)})


def test_other_mask_layer_needs_reexport(runtime, subject):
    cfg = MonkeyConfig(mask_layer="up_blocks.2.attentions.0.transformer_blocks.0.attn2")
    with pytest.raises(MonkeyError, match="re-export"):
        runtime(Request("a toy", 64, 64, config=cfg), subject)


@pytest.mark.slow
def test_sd15_export_at_256_and_one_unet_step(tmp_path):
    """The real SD1.5 architecture (random weights) exports with external data; ORT matches torch on one step."""
    import time

    from monkey_trt.embedded.tiny import write_tiny_model

    model = write_tiny_model(tmp_path / "sd15", preset="sd15")
    out = tmp_path / "engine"
    assert main(["export", "--base", str(model.base), "--ip-adapter", str(model.ip_adapter), "--out", str(out),
                 "--height", "256", "--width", "256", "--no-fold"]) == 0
    m = load_manifest(out, verify="size")
    assert m.networks["unet"].data_file == "unet.onnx.data"
    ref = ReferencePipeline.from_pretrained(str(model.base), str(model.ip_adapter))
    net = UNetNet(ref.m.unet, ref.m.ctx, ref.m.ip_layers.index(m.mask_layer))
    args = sample_inputs(m.networks["unet"].desc, m.dims, 1, 256, 256)
    with torch.no_grad():
        net(*args)
        t0 = time.perf_counter()
        want = net(*args)
        t_torch = time.perf_counter() - t0
    with OrtRunner(out / "unet.onnx") as unet:
        feeds = {n: a.numpy() for n, a in zip(m.networks["unet"].desc.input_names, args)}
        unet.infer(feeds)
        t0 = time.perf_counter()
        got = unet.infer(feeds)
        t_ort = time.perf_counter() - t0
    rows = compare_outputs({"noise_pred": want[0].numpy(), "ip_attn_map": want[1].numpy()}, got, atol=1e-3)
    print("\n".join(map(str, rows)), f"\nUNet step 256x256: torch {t_torch:.3f}s  ort {t_ort:.3f}s  ratio {t_torch / t_ort:.2f}x")
    assert all(r.ok for r in rows)


def test_python_api_generate(runtime, tiny_model_dir):
    out = runtime.generate("a toy on the beach", tiny_model_dir / "subject.png", height=64, width=96, seed=1, threshold=0.4)
    assert out.image.shape == (64, 96, 3) and out.mask.mask.shape == (64, 96) and out.backend == "ort"
    assert set(out.timings) >= {"encode_prompt", "encode_subject", "mask_pass", "mask", "final_pass", "decode"}


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_trt_backend_and_build_refuse_cleanly_without_tensorrt(engine_dir, tiny_model_dir, tmp_path, capsys):
    code, err = _generate_exit(engine_dir, tiny_model_dir, tmp_path, capsys, "--backend", "trt")
    assert code == 2 and "TensorRT is not installed" in err and len(err.splitlines()) == 1
    assert main(["build", "--engine-dir", str(engine_dir)]) == 2
    assert "TensorRT is not installed" in capsys.readouterr().err
    assert not (engine_dir / "trt").exists()


def test_canonical_dims_name_inputs_and_outputs_as_declared_and_derived_dims_in_order():
    """Polygraphy's folding runs ONNX Runtime's symbolic shape inference, whose sympy expressions print differently
    under another PYTHONHASHSEED: exports were not reproducible. Names change consistently (equal dims stay equal),
    never a node or a type."""
    import onnx
    from onnx import TensorProto, helper

    from monkey_trt.enginedir.networks import NetworkDesc, TensorDesc
    from monkey_trt.export.onnx_export import canonical_dims

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "floor(h/2 + 1/2)*floor(w/2 + 1/2)", 4])
    mid = helper.make_tensor_value_info("mid", TensorProto.FLOAT, ["B", "(floor(h/2 - 1/2) + 1)", 8])
    same = helper.make_tensor_value_info("same", TensorProto.FLOAT, ["B", "floor(h/2 + 1/2)*floor(w/2 + 1/2)", 8])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["mid"]), helper.make_node("Identity", ["mid"], ["same"]),
                               helper.make_node("Identity", ["same"], ["y"])], "g", [x], [y], value_info=[mid, same])
    model = helper.make_model(graph)
    desc = NetworkDesc("n", (TensorDesc("x", "float32", ("B", 8)),), (TensorDesc("y", "float32", ("B", "Q", 4)),))
    canonical_dims(model, desc)
    dims = lambda v: [d.dim_param or d.dim_value or None for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(model.graph.input[0]) == ["B", 8]
    assert dims(model.graph.output[0]) == ["B", "Q", 4]
    assert dims(model.graph.value_info[0]) == ["B", "s0", 8]  # a derived name, renamed in order of appearance
    assert dims(model.graph.value_info[1]) == ["B", "Q", 8]  # the same expression as the declared output's Q: equal dims stay equal
    assert model.graph.value_info[0].type.tensor_type.elem_type == TensorProto.FLOAT
    onnx.checker.check_model(model)


@pytest.mark.slow
def test_export_is_reproducible_across_hash_seeds(tiny_model_dir, tmp_path):
    """The same export in two processes with different PYTHONHASHSEED gives byte-identical graphs."""
    import hashlib
    import os
    import subprocess
    import sys

    digests = []
    for seed in ("1", "2"):
        out = tmp_path / f"e{seed}"
        argv = [sys.executable, "-m", "monkey_trt.cli", "export", "--base", str(tiny_model_dir / "base"), "--ip-adapter",
                str(tiny_model_dir / "ip-adapter"), "--out", str(out), "--height", "64", "--width", "64"]
        proc = subprocess.run(argv, env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr
        digests.append({f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(out.glob("*.onnx"))})
    assert digests[0] == digests[1]
