"""8-bit engines (export/quantize.py, export/calibration.py, runtime/unet_graphs.py): the mechanics.

What is checked here: the manifest record (files, digests, sizes, library, calibration settings and data
digest), where the Q/DQ pairs are (present on the weighted layers, absent on the mask layer's map path,
the embeddings, conv_in/conv_out, attention's products for int8), calibration determinism and its cache,
which UNet graph runs which pass (pass 1 exact: the mask equals the fp32 mask), clean one-line errors with
nothing half-written, and a loose fidelity floor. The measured fidelity and speed are in docs/int8.md.
One int8 quantization of the tiny UNet is shared by the module (the quantizer's graph rewriting takes
tens of seconds); the fp8 UNet and its reference-evaluator fidelity are `slow`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from monkey_trt.cli import main
from monkey_trt.core.config import Request
from monkey_trt.core.errors import MonkeyError
from monkey_trt.enginedir.load import load_manifest
from monkey_trt.enginedir.manifest import MANIFEST, manifest_files
from monkey_trt.enginedir.networks import NETWORKS
from monkey_trt.export.calibration import CalibrationSpec, collect, load_or_collect
from monkey_trt.engine.compare import mask_iou, psnr
from monkey_trt.export.graph_walks import map_path_nodes
from monkey_trt.export.quantize import QuantSettings, kept_nodes, quantize_model_file
from monkey_trt.runtime.noise import NoisePlan
from monkey_trt.runtime.pipeline import MonkeyPipeline
from monkey_trt.runtime.unet_graphs import unet_roles

LOOSE_PSNR_DB = 15.0  # a floor against broken graphs, not the measured fidelity (docs/int8.md: ~27 dB tiny)
VAE_PSNR_DB = 38.0  # the int8 VAE decoder alone, tiny model, 64², 1 calibration case (measured 44.4, min 42.2: docs/int8.md)
ENGINE_PSNR_DB = 30.0  # the int8 UNet (pass 2) + VAE decoder, tiny model, 64², 1 calibration case (measured 38.8, min 37.3: docs/int8.md)


def _export_argv(tiny_model_dir, out, *extra):
    return ["export", "--out", str(out), "--base", str(tiny_model_dir / "base"), "--ip-adapter", str(tiny_model_dir / "ip-adapter"),
            "--height", "64", "--width", "64", "--min", "64x64", "--max", "128x128", "--batch", "2", *extra]


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def calib_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        d = tmp_path_factory.mktemp("calib-cache")
        mp.setenv("MONKEY_TRT_CALIB_CACHE", str(d))
        yield d


@pytest.fixture(scope="module")
def int8_dir(engine_dir, tiny_model_dir, tmp_path_factory, calib_cache):
    """The session's tiny engine directory (fp32 + fp16) with int8 added through the export command."""
    d = tmp_path_factory.mktemp("int8") / "engine"
    shutil.copytree(engine_dir, d)
    assert main(_export_argv(tiny_model_dir, d, "--precision", "int8", "--calib-size", "1")) == 0
    return d


# -- the manifest ------------------------------------------------------------------------------------------
def test_manifest_records_int8(int8_dir, engine_dir):
    m = load_manifest(int8_dir)  # sha256 of every file, int8 included
    assert m.precisions == ("fp32", "fp16", "int8")
    q = m.networks["unet"].precisions["int8"]
    assert q.file == "unet.int8.onnx" and set(q.sha256) == {q.file} == set(q.sizes)
    assert q.sizes[q.file] == (int8_dir / q.file).stat().st_size
    rec = q.quantization
    assert rec["library"].startswith("onnxruntime.quantization ") and rec["settings"]["precision"] == "int8"
    assert set(rec["settings"]["keep"]) == {"map", "embedding", "io", "attention", "skip", "downsample"}
    cal = rec["calibration"]
    assert cal["size"] == 1 and cal["calls"] == 11 and cal["height"] == cal["width"] == 64  # 3 pass-1 + 8 pass-2 calls
    assert len(cal["data_sha256"]) == 64 and cal["default_prompts"] and cal["subjects"][0]["name"] == "embedded"
    assert rec["quantized_nodes"] > 0 and rec["kept_nodes"]["map"] > 0
    # the VAE decoder is 8-bit too, calibrated on pass 2's final latents (one per case), with its own kept set
    v = m.networks["vae_decoder"].precisions["int8"]
    assert v.file == "vae_decoder.int8.onnx" and m.run_precision("vae_decoder", "int8") == "int8"
    vrec = v.quantization
    assert vrec["settings"]["network"] == "vae_decoder" and vrec["settings"]["keep"] == ["io", "attention"]
    assert vrec["calibration"]["calls"] == 1 and vrec["calibration"]["inputs"] == "pass 2's final latents"
    assert len(vrec["calibration"]["data_sha256"]) == 64 and vrec["kept_nodes"]["io"] == 3 and vrec["quantized_nodes"] > 0
    # the encoders were not quantized (the image encoder only with --quantize-image-encoder): fp32, and say so
    for name in ("text_encoder", "image_encoder"):
        assert "int8" not in m.networks[name].precisions and m.run_precision(name, "int8") == "fp32"
        assert m.path(int8_dir, name, "int8") == int8_dir / f"{name}.onnx"
    assert m.path(int8_dir, "unet", "int8") == int8_dir / "unet.int8.onnx"
    assert {"unet.int8.onnx", "vae_decoder.int8.onnx"} <= manifest_files(int8_dir / MANIFEST)
    assert m.exporter["int8_quantizer"] == rec["library"]
    # adding int8 kept every earlier file as it was
    before = _tree_digest(engine_dir)
    after = _tree_digest(int8_dir)
    assert all(after[f] == d for f, d in before.items() if f != MANIFEST)
    raw = json.loads((int8_dir / MANIFEST).read_text())
    assert raw["networks"]["unet"]["precisions"]["int8"]["quantization"]["calibration"]["data_sha256"] == cal["data_sha256"]


def test_fp8_is_not_an_engine_precision_until_exported(int8_dir):
    m = load_manifest(int8_dir, verify="size")
    assert "fp8" not in m.precisions and m.run_precision("text_encoder", "fp8") == "fp8"  # no silent fallback
    with pytest.raises(MonkeyError, match="no fp8 ONNX for unet"):
        m.path(int8_dir, "unet", "fp8")


# -- where the Q/DQ pairs are ---------------------------------------------------------------------------
def _dq_inputs(graph) -> dict[str, list[str]]:
    producers = {o: n for n in graph.node for o in n.output}
    return {n.name: [i for i in n.input if i in producers and producers[i].op_type == "DequantizeLinear"] for n in graph.node}


def test_qdq_where_intended_and_absent_on_the_map_path(int8_dir):
    fp32 = onnx.load(str(int8_dir / "unet.onnx")).graph
    g = onnx.load(str(int8_dir / "unet.int8.onnx")).graph
    dq = _dq_inputs(g)
    consumers = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    nodes = {n.name: n for n in g.node}
    inits = {t.name: t for t in g.initializer}
    # the weighted layers: DQ on the activation and the weight, a Q on the output (ORT's integer kernels need it)
    kept_convs = ("/conv_in/", "/conv_out/", "/conv_shortcut/", "/downsamplers.")
    convs = [n for n in g.node if n.op_type == "Conv" and not any(k in n.name for k in kept_convs)]
    assert convs and all(set(c.input[:2]) <= set(dq[c.name]) for c in convs)  # (+ an int32 bias through a DQ)
    assert all(any(k.op_type == "QuantizeLinear" for k in consumers[c.output[0]]) for c in convs)
    linear = [n for n in g.node if n.op_type == "MatMul" and "/attn1/to_q/" in n.name]
    assert linear and all(set(n.input[:2]) <= set(dq[n.name]) for n in linear)
    # kept in float: the mask layer's map path, the embeddings, conv_in/conv_out, attention's products
    path = map_path_nodes(fp32)
    assert {nodes[n].op_type for n in path} >= {"MatMul", "Softmax", "ReduceMean"}
    assert all(not dq[n] for n in path), "no Q/DQ on the mask layer's map path (to_q, to_k_ip, QK^T, softmax, mean)"
    groups = kept_nodes(fp32, QuantSettings("int8").keep)
    for group, names in groups.items():
        assert names and all(not dq[n] for n in names if n in dq), group
    assert any("/time_embedding/" in n for n in groups["embedding"]) and any("time_emb_proj" in n for n in groups["embedding"])
    assert len(groups["io"]) == 2 and all("conv_shortcut" in n for n in groups["skip"])
    assert all("/downsamplers." in n for n in groups["downsample"])
    # norms, softmax, the mask resize and the mask multiply / IP scale never see a Q/DQ of their own
    for n in g.node:
        if n.op_type in ("InstanceNormalization", "LayerNormalization", "Softmax", "Resize", "Sin", "Cos"):
            assert not dq[n.name], n.name
    mask_users = [n for n in g.node if n.op_type == "Mul" and any(i.startswith("/Resize") or "ip_scale" in i for i in n.input)]
    assert all(not dq[n.name] for n in mask_users)
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == "ip_mask" for n in g.node)
    # symmetric activations: int8 of zero point 0 (TensorRT's explicit quantization) written as uint8 of zero point
    # 128 in this CPU graph (the same values, the type ORT's x86 kernels fuse: export/qdq_types.py); int8 weights
    zps = [numpy_helper.to_array(inits[n.input[2]]) for n in g.node if n.op_type == "QuantizeLinear"]
    assert zps and all(z.dtype == np.uint8 and (z == 128).all() for z in zps)
    weight_zps = [numpy_helper.to_array(inits[n.input[2]]) for n in g.node
                  if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].data_type == onnx.TensorProto.INT8]
    assert weight_zps and all(z.dtype == np.int8 and not z.any() for z in weight_zps)
    producers = {o: n for n in g.node for o in n.output}
    w_scales = [numpy_helper.to_array(inits[producers[c.input[1]].input[1]]) for c in convs]
    assert all(s.ndim == 1 and s.size > 1 for s in w_scales), "per-output-channel weight scales"
    # inputs and outputs keep the manifest's declared types
    assert [(v.name, v.type.tensor_type.elem_type) for v in (*g.input, *g.output)] == \
           [(v.name, v.type.tensor_type.elem_type) for v in (*fp32.input, *fp32.output)]


def test_ort_fuses_every_quantized_layer_of_the_cpu_graphs(int8_dir, tmp_path):
    """ONNX Runtime's CPU provider runs every quantized Conv/MatMul of the int8 UNet and VAE decoder as an integer
    kernel: none is left as an fp32 layer behind a DequantizeLinear (int8 pairs read by several layers were: the
    UNet's to_k/to_v on the tokens, the decoder's convs before GroupNorm; export/qdq_types.py)."""
    import onnxruntime as ort

    for name in ("unet", "vae_decoder"):
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(tmp_path / f"{name}.optimized.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(str(int8_dir / f"{name}.int8.onnx"), so, providers=["CPUExecutionProvider"])
        g = onnx.load(so.optimized_model_filepath).graph
        dq = _dq_inputs(g)
        unfused = [n.name for n in g.node if n.op_type in ("Conv", "MatMul", "Gemm", "FusedMatMul") and dq[n.name]]
        fused = [n for n in g.node if n.op_type in ("QLinearConv", "MatMulIntegerToFloat", "QLinearMatMul", "QGemm")]
        assert fused and not unfused, (name, unfused)


# -- running it ---------------------------------------------------------------------------------------
def test_int8_runs_on_ort_with_the_mask_exact(int8_dir, subject):
    """Pass 1 runs the fp32 UNet (the mask is the fp32 mask, bit for bit); pass 2 the int8 one."""
    with MonkeyPipeline.from_engine_dir(int8_dir, backend="ort", providers=("cpu",)) as p32, \
            MonkeyPipeline.from_engine_dir(int8_dir, backend="ort", providers=("cpu",), precision="int8") as p8:
        assert set(p8.unet_runners) == {"int8", "fp32"} and p8.info()["unet_graphs"] == {"mask": "fp32", "final": "int8", "baseline": "int8"}
        for seed in (1, 2):
            req = Request("a toy in the snow", 64, 64, seed=seed)
            noise = NoisePlan.from_seed(seed, req.latent_shape(p32.dims), req.config.noise_steps)
            ref, got = p32(req, subject, noise=noise), p8(req, subject, noise=noise)
            np.testing.assert_array_equal(got.mask.mask, ref.mask.mask)
            assert psnr(ref.image, got.image) >= LOOSE_PSNR_DB
            assert not np.array_equal(ref.image, got.image), "pass 2 ran the int8 graph"
    with MonkeyPipeline.from_engine_dir(int8_dir, backend="ort", providers=("cpu",), precision="int8", mask_pass="same") as p:
        assert set(p.unet_runners) == {"int8"}
        out = p(req, subject, noise=noise)
        assert 0.0 <= mask_iou(out.mask.mask, ref.mask.mask) <= 1.0 and np.isfinite(out.image).all()


def test_int8_runs_on_openvino_with_the_mask_exact(int8_dir, subject, tmp_path, monkeypatch):
    """--backend openvino --precision int8: the engine's Q/DQ UNet on OpenVINO's CPU plugin for pass 2, pass 1 on
    the f32 UNet (the mask is ORT's fp32 mask, bit for bit); f32 between the quantized ops, never bf16."""
    pytest.importorskip("openvino")
    monkeypatch.setenv("MONKEY_TRT_CACHE", str(tmp_path / "cache"))
    with MonkeyPipeline.from_engine_dir(int8_dir, backend="ort", providers=("cpu",)) as p32, \
            MonkeyPipeline.from_engine_dir(int8_dir, backend="openvino", precision="int8") as p8:
        assert p8.info()["unet_graphs"] == {"mask": "fp32", "final": "int8", "baseline": "int8"}
        assert p8.unet_runners["int8"].model_path.name == "unet.int8.onnx"
        assert {r.config()["INFERENCE_PRECISION_HINT"] for r in (*p8.runners.values(), *p8.unet_runners.values())} == {"f32"}
        req = Request("a toy in the snow", 64, 64, seed=1)
        noise = NoisePlan.from_seed(1, req.latent_shape(p32.dims), req.config.noise_steps)
        ref, got = p32(req, subject, noise=noise), p8(req, subject, noise=noise)
        np.testing.assert_array_equal(got.mask.mask, ref.mask.mask)
        assert psnr(ref.image, got.image) >= LOOSE_PSNR_DB
        assert not np.array_equal(ref.image, got.image), "pass 2 ran the int8 graph"


def test_int8_vae_decoder_graph_and_its_bound(int8_dir, subject):
    """The 8-bit VAE decoder: Q/DQ on its ResNet convs, none on its kept groups (io, attention); decoding the
    fp32 run's own final latents stays within VAE_PSNR_DB of the fp32 decoder (measured 45 dB at 128²,
    docs/int8.md); the int8 engine runs it (pass 2's image) with the mask exact."""
    fp32 = onnx.load(str(int8_dir / "vae_decoder.onnx")).graph
    g = onnx.load(str(int8_dir / "vae_decoder.int8.onnx")).graph
    dq = _dq_inputs(g)
    convs = [n for n in g.node if n.op_type == "Conv" and "/resnets." in n.name and "/conv_shortcut/" not in n.name]
    assert convs and all(set(c.input[:2]) <= set(dq[c.name]) for c in convs)
    groups = kept_nodes(fp32, QuantSettings("int8", network="vae_decoder").keep)
    assert set(groups) == {"io", "attention"} and len(groups["io"]) == 3 and len(groups["attention"]) == 2
    assert all(not dq[n] for names in groups.values() for n in names)
    with MonkeyPipeline.from_engine_dir(int8_dir, backend="ort", providers=("cpu",)) as p32, \
            MonkeyPipeline.from_engine_dir(int8_dir, backend="ort", providers=("cpu",), precision="int8") as p8:
        assert p8.runners["vae_decoder"].model_path.name == "vae_decoder.int8.onnx"
        assert p8.runners["image_encoder"].model_path.name == "image_encoder.onnx"
        req = Request("a toy in the snow", 64, 64, seed=4)
        noise = NoisePlan.from_seed(4, req.latent_shape(p32.dims), req.config.noise_steps)
        latents: list = []
        with p32.watch_network("vae_decoder", lambda f: latents.append(np.array(f["latents"], copy=True))):
            ref = p32(req, subject, noise=noise)
        assert len(latents) == 1  # pass 2's final latents, the one decode of a default run
        alone = p8.decode(latents[0])
        assert VAE_PSNR_DB <= psnr(ref.image, alone) < float("inf"), "the int8 decoder ran, within its bound"
        got = p8(req, subject, noise=noise)
        np.testing.assert_array_equal(got.mask.mask, ref.mask.mask)
        assert psnr(ref.image, got.image) >= ENGINE_PSNR_DB


def test_generate_picks_the_8bit_vae_up_with_no_new_flag(int8_dir, tiny_model_dir, tmp_path):
    """`generate --precision int8` on the CLI: the UNet's pass 2 and the VAE decoder 8-bit, masks identical to fp32's."""
    arrays = {}
    for p in ("fp32", "int8"):
        argv = ["generate", "--engine-dir", str(int8_dir), "--precision", p, "--prompt", "a toy on the beach", "--seed", "5",
                "--image", str(tiny_model_dir / "subject.png"), "--out", str(tmp_path / p), "--save-arrays"]
        assert main(argv) == 0
        with np.load(tmp_path / p / "arrays.npz") as z:
            arrays[p] = {k: z[k] for k in z.files}
    np.testing.assert_array_equal(arrays["int8"]["mask"], arrays["fp32"]["mask"])
    assert ENGINE_PSNR_DB <= psnr(arrays["fp32"]["image"], arrays["int8"]["image"]) < float("inf")


def test_an_engine_dir_from_before_the_8bit_vae_still_opens_and_runs(int8_dir, subject, tmp_path):
    """A UNet-only int8 directory (exported before the VAE decoder was quantized) opens and runs: its VAE decoder fp32."""
    d = tmp_path / "engine"
    shutil.copytree(int8_dir, d)
    raw = json.loads((d / MANIFEST).read_text())
    for key in ("int8", "int8-fp16"):  # the CPU graph and (the fixture has fp16) the GPU-shaped one: neither existed then
        del raw["networks"]["vae_decoder"]["precisions"][key]
        (d / f"vae_decoder.{key}.onnx").unlink()
    (d / MANIFEST).write_text(json.dumps(raw))
    m = load_manifest(d)
    assert m.precisions == ("fp32", "fp16", "int8") and m.run_precision("vae_decoder", "int8") == "fp32"
    with MonkeyPipeline.from_engine_dir(d, backend="ort", providers=("cpu",), precision="int8") as p8, \
            MonkeyPipeline.from_engine_dir(d, backend="ort", providers=("cpu",)) as p32:
        assert p8.runners["vae_decoder"].model_path.name == "vae_decoder.onnx"
        req = Request("a toy in the snow", 64, 64, seed=1)
        noise = NoisePlan.from_seed(1, req.latent_shape(p32.dims), req.config.noise_steps)
        ref, got = p32(req, subject, noise=noise), p8(req, subject, noise=noise)
        np.testing.assert_array_equal(got.mask.mask, ref.mask.mask)
        assert psnr(ref.image, got.image) >= ENGINE_PSNR_DB


class _Counting:
    def __init__(self, inner, name, log):
        self.inner, self.name, self.log = inner, name, log

    def __getattr__(self, k):
        return getattr(self.inner, k)

    def infer(self, feeds, static=None, outputs=None):
        self.log.append((self.name, int(feeds["sample"].shape[0])))
        return self.inner.infer(feeds, static=static, outputs=outputs)


@pytest.mark.parametrize("batch_passes", [False, True])
def test_pass_one_on_fp32_pass_two_on_int8(int8_dir, subject, batch_passes):
    log: list = []
    with MonkeyPipeline.from_engine_dir(int8_dir, backend="ort", providers=("cpu",), precision="int8") as p:
        p.unet_runners = {k: _Counting(r, k, log) for k, r in p.unet_runners.items()}
        p.map_runners = {k: _Counting(r, k, log) for k, r in p.map_runners.items()}  # pass 1's last call: map-only
        req = Request("a toy on the beach", 64, 64, seed=0)
        out = p(req, subject, batch_passes=batch_passes, baseline_scale=1.0)
    c = req.config
    labels = [u.passes for u in out.unet_calls]
    assert [name for name, _ in log] == ["fp32" if "p1" in lab else "int8" for lab in labels]
    assert [u.graph for u in out.unet_calls if "p1" in u.passes][-1] == "unet_map"  # the fp32 map-only UNet
    assert labels.count("ip") == c.steps_final and all(name == "int8" for name, b in log[-c.steps_final:])
    assert sum(1 for lab in labels if "p1" in lab) == c.mask_pass_steps_needed
    assert unet_roles("fp16") == {"mask": "fp16", "final": "fp16", "baseline": "fp16"}
    assert unet_roles("fp8", "same") == {"mask": "fp8", "final": "fp8", "baseline": "fp8"}


# -- calibration ---------------------------------------------------------------------------------------
def test_calibration_cases_and_record_are_deterministic():
    spec = CalibrationSpec.build(size=8, height=64, width=64)
    assert spec.cases() == CalibrationSpec.build(size=8, height=64, width=64).cases()
    prompts = [p for p, _, _ in spec.cases()]
    assert len(set(prompts)) == 8 and prompts[0] == "a toy in the jungle" and [s for _, _, s in spec.cases()] == list(range(8))
    big = CalibrationSpec.build(size=25, height=64, width=64)
    assert len({p for p, _, _ in big.cases()}) == 20  # every paper prompt, then again with new seeds
    assert spec.record() == CalibrationSpec.build(size=8, height=64, width=64).record()
    assert spec.key({"unet": {"unet.onnx": "a"}}) != spec.key({"unet": {"unet.onnx": "b"}})


def test_calibration_recording_is_deterministic_and_cached(engine_dir, tmp_path):
    m = load_manifest(engine_dir, verify="size")
    spec = CalibrationSpec.build(size=1, height=64, width=64)
    a = collect(engine_dir, spec)
    assert len(a) == 11 and a.arrays["sample"].shape == (11, 4, 8, 8) and a.arrays["ip_scale"].shape[0] == 11
    assert [c["pass"] for c in a.calls] == ["p1"] * 3 + ["p2"] * 8
    assert sum(c["masked"] for c in a.calls) == len(spec.config.masked_steps)
    masked = [i for i, c in enumerate(a.calls) if c["masked"]]
    assert all(a.arrays["ip_mask"][i].min() == 0.0 for i in masked) and a.arrays["ip_mask"][0].min() == 1.0
    first, reused = load_or_collect(engine_dir, m, spec, cache=tmp_path)
    assert not reused and first.digest == a.digest  # two recordings: the same bytes
    again, reused = load_or_collect(engine_dir, m, spec, cache=tmp_path)
    assert reused and again.digest == a.digest and len(list(tmp_path.glob("calib-*.npz"))) == 1
    other, reused = load_or_collect(engine_dir, m, CalibrationSpec(spec.prompts[:1], spec.subjects, 1, 64, 64), cache=tmp_path)
    assert not reused and len(list(tmp_path.glob("calib-*.npz"))) == 2


def _small_model(path: Path) -> list[dict]:
    """conv -> relu -> matmul with weights: enough for the quantizer's placement and determinism."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal((8,)).astype(np.float32), "b")
    m = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "m")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="/conv1/Conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Transpose", ["r"], ["t"], name="t", perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["t", "m"], ["y"], name="/proj/MatMul")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 6, 8])], [w, b, m])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return [{"x": rng.standard_normal((1, 4, 6, 6)).astype(np.float32)} for _ in range(4)]


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_quantizer_is_deterministic_and_typed(tmp_path, precision):
    feeds = _small_model(tmp_path / "m.onnx")
    s = QuantSettings(precision, reduce_range=False)
    for name in ("a.onnx", "b.onnx"):
        quantize_model_file(tmp_path / "m.onnx", tmp_path / name, feeds, s, external=False)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    g = onnx.load(str(tmp_path / "a.onnx")).graph
    want = TensorProto.FLOAT8E4M3FN if precision == "fp8" else TensorProto.INT8
    inits = {t.name: t for t in g.initializer}
    qs = [n for n in g.node if n.op_type == "QuantizeLinear"]
    assert qs and all(inits[n.input[2]].data_type == want for n in qs)
    assert {n.op_type for n in g.node} >= {"Conv", "MatMul", "DequantizeLinear"}
    assert not list(tmp_path.glob(".monkey-quant-*")), "no scratch files left behind"


def test_quantizer_calibrates_on_every_call(tmp_path):
    """The activation ranges cover every recorded call, the first as well as the last."""
    feeds = _small_model(tmp_path / "m.onnx")
    feeds = [{"x": f["x"] * (100.0 if i == 0 else 1.0)} for i, f in enumerate(feeds * 5)]  # 20 calls, the first one large
    quantize_model_file(tmp_path / "m.onnx", tmp_path / "q.onnx", feeds, QuantSettings("int8", reduce_range=False), external=False)
    g = onnx.load(str(tmp_path / "q.onnx")).graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    (q,) = [n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == "x"]
    assert inits[q.input[1]] == pytest.approx(np.abs(feeds[0]["x"]).max() / 127, rel=1e-3)


def test_quant_settings_refuse_unknown_values():
    with pytest.raises(MonkeyError, match="one of int8, fp8"):
        QuantSettings("int4")
    with pytest.raises(MonkeyError, match="kept-precision group"):
        QuantSettings("int8", keep=("map", "norms"))
    with pytest.raises(MonkeyError, match="calibration method"):
        QuantSettings("int8", calibrate_method="mse")
    assert "attention" not in QuantSettings("fp8").keep and QuantSettings("fp8").reduce_range is False


# -- bad input: one line, exit 2, nothing half-written -----------------------------------------------------
def _fails(argv, capsys, match: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert match in err, err
    return err


def test_export_bad_precision_and_calibration_input(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eng"
    _fails(_export_argv(tiny_model_dir, out, "--precision", "int4"), capsys, "--precision must be a comma list of fp32, fp16, int8, fp8")
    _fails(_export_argv(tiny_model_dir, out, "--precision", "int8", "--calib-size", "0"), capsys, "--calib-size must be in 1..")
    _fails(_export_argv(tiny_model_dir, out, "--calib-size", "4"), capsys, "--calib-size apply to --precision int8 or fp8 only")
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails(_export_argv(tiny_model_dir, out, "--precision", "int8", "--calib-images", str(empty)), capsys, "is empty")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(tiny_model_dir / "subject.png", mixed / "a.png")
    (mixed / "notes.txt").write_text("x")
    _fails(_export_argv(tiny_model_dir, out, "--precision", "int8", "--calib-images", str(mixed)), capsys, "mixes images with other entries (notes.txt)")
    (mixed / "notes.txt").unlink()
    (mixed / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    _fails(_export_argv(tiny_model_dir, out, "--precision", "int8", "--calib-images", str(mixed)), capsys, "b.png")
    _fails(_export_argv(tiny_model_dir, out, "--precision", "int8", "--calib-images", str(tmp_path / "nope")), capsys, "no such folder")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# nothing\n\n")
    _fails(_export_argv(tiny_model_dir, out, "--precision", "int8", "--calib-prompts", str(prompts)), capsys, "has no prompts")
    prompts.write_bytes(b"\xff\xfe bad")
    _fails(_export_argv(tiny_model_dir, out, "--precision", "fp8", "--calib-prompts", str(prompts)), capsys, "not UTF-8")
    assert not out.exists() and not list(tmp_path.glob(".eng*")), "nothing written"


def test_adding_int8_with_bad_calibration_leaves_the_directory_as_it_was(engine_dir, tiny_model_dir, tmp_path, capsys):
    d = tmp_path / "engine"
    shutil.copytree(engine_dir, d)
    before = _tree_digest(d)
    empty = tmp_path / "calib"
    empty.mkdir()
    _fails(_export_argv(tiny_model_dir, d, "--precision", "int8", "--calib-images", str(empty)), capsys, "is empty")
    assert _tree_digest(d) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging left"


def test_calibration_options_for_a_precision_the_directory_has_are_refused(int8_dir, tiny_model_dir, tmp_path, capsys):
    """Issue 25, class 8: `--calib-size` (or another --calib-*) adding int8 where int8 is already: they would
    change nothing, so exit 2 saying what would (--force re-exports), the directory untouched."""
    before = _tree_digest(int8_dir)
    capsys.readouterr()
    err = _fails(_export_argv(tiny_model_dir, int8_dir, "--precision", "int8", "--calib-size", "2"), capsys, "already has int8")
    assert "--calib-size would change nothing" in err and "--force" in err
    (tmp_path / "p.txt").write_text("a toy on the beach\n")
    _fails(_export_argv(tiny_model_dir, int8_dir, "--precision", "fp16,int8", "--calib-prompts", str(tmp_path / "p.txt")), capsys,
           "--calib-prompts would change nothing")
    _fails(_export_argv(tiny_model_dir, int8_dir, "--precision", "int8", "--quantize-image-encoder"), capsys,
           "--quantize-image-encoder would change nothing")  # adding the encoder to an int8 directory: --force
    assert _tree_digest(int8_dir) == before
    assert main(_export_argv(tiny_model_dir, int8_dir, "--precision", "int8")) == 0  # no --calib-*: nothing to add, said so
    assert "already has int8" in capsys.readouterr().out and _tree_digest(int8_dir) == before


def test_fp8_refused_on_onnx_runtime(int8_dir, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "gen"
    argv = ["generate", "--image", str(tiny_model_dir / "subject.png"), "--prompt", "a toy", "--out", str(out),
            "--engine-dir", str(int8_dir), "--backend", "ort", "--providers", "cpu", "--precision", "fp8"]
    _fails(argv, capsys, "--precision fp8 runs as TensorRT plans only")
    assert not out.exists()
    argv[-1] = "int4"
    _fails(argv, capsys, "--precision must be one of fp32, fp16, int8, fp8")


def test_gpu_precision_checks():
    from monkey_trt.engine.precision import check_gpu_precision

    check_gpu_precision("fp8", "9.0", "H100")
    check_gpu_precision("fp8", (8, 9), "L4")
    check_gpu_precision("int8", "8.7", "Jetson AGX Orin")
    check_gpu_precision("fp16", "7.0", "V100")
    with pytest.raises(MonkeyError, match=r"fp8 needs FP8 tensor cores .* >= 8.9; A100 has 8.0: use --precision int8"):
        check_gpu_precision("fp8", "8.0", "A100")
    with pytest.raises(MonkeyError, match=r"int8 needs INT8 tensor cores .* V100 has 7.0: use --precision fp16"):
        check_gpu_precision("int8", (7, 0), "V100")


@pytest.fixture
def fake_gpu(monkeypatch):
    """tests/fakes/trt.py's TensorRT, Polygraphy and CUDA runtime (a compute capability 9.0 GPU)."""
    pytest.importorskip("polygraphy.backend.trt")
    from tests.fakes.trt import install_fake_gpu

    log: list = []
    fake_trt, cudart = install_fake_gpu(monkeypatch, log)
    return log


def test_tensorrt_int8_plans_build_strongly_typed_from_the_qdq_unet(int8_dir, fake_gpu, tmp_path, monkeypatch):
    from monkey_trt.engine.trt import cuda as trt_cuda
    from monkey_trt.engine.trt.build import build_engine_dir
    from monkey_trt.engine.trt.cuda import CudaDevice
    from monkey_trt.enginedir.plans import BUILD_JSON, BuildConfig

    d = tmp_path / "engine"
    shutil.copytree(int8_dir, d)
    m = load_manifest(d)
    cfg = BuildConfig(profile=m.profile, precision="int8", workspace_gib=1)
    folder = build_engine_dir(d, m, cfg)
    assert folder.name.startswith("v2-int8-") and all((folder / f"{n}.plan").is_file() for n in m.networks)
    built = json.loads((folder / BUILD_JSON).read_text())
    assert built["inputs"]["precision"] == "int8"
    assert set(built["inputs"]["onnx_files"]["unet"]) == {"unet.int8-fp16.onnx"}  # the GPU-shaped Q/DQ graph (fp16 base)
    assert set(built["inputs"]["onnx_files"]["vae_decoder"]) == {"vae_decoder.int8-fp16.onnx"}  # the 8-bit VAE decoder too, GPU-shaped
    assert set(built["inputs"]["onnx_files"]["image_encoder"]) == {"image_encoder.onnx"}  # not quantized: fp32
    assert all(kw == {"strongly_typed": True} for name, kw in fake_gpu if name == "network_from_onnx_path")
    # below the tensor cores a precision needs: one line, before any build
    for precision, cc, name in (("fp8", "8.6", "A10"), ("int8", "7.0", "V100")):
        monkeypatch.setattr(trt_cuda, "require_cuda_device", lambda index=0, cc=cc, name=name: CudaDevice(0, name, cc, 24 << 30))
        fake_gpu.clear()
        with pytest.raises(MonkeyError, match=f"--precision {precision} needs") as ei:
            build_engine_dir(d, m, BuildConfig(profile=m.profile, precision=precision, workspace_gib=1))
        assert "\n" not in str(ei.value) and not fake_gpu


def test_an_8bit_trt_engine_opens_one_activation_pool_and_hashes_each_plan_once(int8_dir, fake_gpu, tmp_path, monkeypatch):
    """Issue 24: the exact mask pass's fp32 UNet joins the pipeline's activation pool (no second TensorRT pool) and only
    its plan is hashed besides the int8 plans (no second sha256 of every fp32 plan)."""
    from monkey_trt.engine.trt.build import build_engine_dir
    from monkey_trt.engine.trt.engine_dir import memory_report
    from monkey_trt.enginedir.plans import BuildConfig

    d = tmp_path / "engine"
    shutil.copytree(int8_dir, d)
    m = load_manifest(d)
    for precision in ("fp32", "int8"):
        build_engine_dir(d, m, BuildConfig(profile=m.profile, precision=precision, workspace_gib=1))
    hashed: list[str] = []
    from monkey_trt.enginedir import remembered

    real = remembered.sha256_file  # plans are checked through remembered.sha256_matches (hashed when not remembered)
    monkeypatch.setattr(remembered, "sha256_file", lambda path: hashed.append(f"{Path(path).parent.name[:7]}/{Path(path).name}") or real(path))
    with MonkeyPipeline.from_engine_dir(d, backend="trt", precision="int8") as p:
        engines = list({id(e): e for e in (*p.runners.values(), *p.unet_runners.values(), *p.map_runners.values())}.values())
        assert set(p.unet_runners) == {"int8", "fp32"} and set(p.map_runners) == {"fp32"} and len(engines) == 6
        assert len({id(e.activation_memory) for e in engines}) == 1  # one pool, sized for the largest engine
        report = memory_report({**p.runners, "unet-fp32": p.unet_runners["fp32"]})
        assert report["activation_allocated_bytes"] <= max(e.memory()["activation_bytes"] for e in engines)
        assert p.unet_runners["fp32"].graphs_captured == 0  # the public accessor (no CUDA graphs asked for)
    assert sorted(h for h in hashed if h.endswith(".plan")) == sorted([f"v2-int8/{n}.plan" for n in NETWORKS] + ["v2-fp32/unet.plan", "v2-fp32/unet_map.plan"])


def test_bench_and_serve_take_int8(int8_dir):
    from monkey_trt.bench.measure import BenchSettings
    from monkey_trt.serve.service import ServeConfig

    assert BenchSettings.from_options(("ort",), 64, 64, {"precision": "int8"}).spec("ort").precision == "int8"
    with pytest.raises(MonkeyError, match="--precision"):
        BenchSettings.from_options(("ort",), 64, 64, {"precision": "int4"})
    assert ServeConfig.from_fields({"engine_dir": int8_dir, "precision": "int8"}).spec.precision == "int8"
    with pytest.raises(MonkeyError, match="--precision"):
        ServeConfig.from_fields({"engine_dir": int8_dir, "precision": "int4"})


def test_int8_unet_takes_several_ip_images_and_its_map_only_cut_keeps_the_map_bits(int8_dir):
    """Issue 22: the 8-bit CPU graph keeps the image axis (calibrated on one-subject calls); at N = 1 and 3 its map-only
    cut gives its map bit for bit on ORT CPU, and the map is one fp32 softmax per image (rows sum to 1)."""
    from monkey_trt.enginedir.networks import MAP_NETWORK, MAP_OUTPUT
    from monkey_trt.runtime.backend import BackendSpec
    from monkey_trt.runtime.pipeline import open_runners
    from tests.test_multi_subject_graph import _feeds

    m = load_manifest(int8_dir)
    runners = open_runners(int8_dir, m, BackendSpec(backend="ort", precision="int8", threads=1), ("unet", MAP_NETWORK))
    try:
        assert runners["unet"].model_path.name == "unet.int8.onnx" and runners[MAP_NETWORK].model_path.name == "unet_map.int8.onnx"
        for n_img in (1, 3):
            feeds = _feeds(m, 2, 64, 72, n_img, seed=n_img)
            out = runners["unet"].infer(feeds)
            cut = runners[MAP_NETWORK].infer(feeds, outputs=(MAP_OUTPUT,))[MAP_OUTPUT]
            assert out["noise_pred"].shape == (2, 4, 8, 9) and out[MAP_OUTPUT].shape == (2, 6, 4 * n_img)
            assert np.array_equal(out[MAP_OUTPUT].view(np.uint32), cut.view(np.uint32))
            assert np.allclose(cut.reshape(2, 6, n_img, 4).sum(-1), 1.0, atol=1e-6)
    finally:
        for r in runners.values():
            r.deactivate()


# -- fp8 (slow: a second quantization of the UNet and the reference evaluator) -----------------------------
@pytest.mark.slow
def test_fp8_unet_graph_and_fidelity_by_the_reference_evaluator(int8_dir, subject, tmp_path):
    """The fp8 graph, run by onnx's reference evaluator (not the library that wrote it), against fp32."""
    from monkey_trt.engine.onnx_reference import OnnxReferenceRunner
    from monkey_trt.export.onnx_export import add_precisions

    d = tmp_path / "engine"
    shutil.copytree(int8_dir, d)
    # the directory has fp16, so --quant-base auto also writes fp8's GPU graph (fp16 base)
    assert add_precisions(d, ("fp8",), calibration=CalibrationSpec.build(size=1, height=64, width=64)) == ("fp8", "fp8-fp16")
    m = load_manifest(d)
    assert m.precisions == ("fp32", "fp16", "int8", "fp8")
    v = m.networks["vae_decoder"].precisions["fp8"].quantization  # the fp8 VAE decoder: its first FP8_CALIB_CALLS calls
    assert v["settings"]["keep"] == ["io"] and v["settings"]["calib_calls"] == 2 and v["settings"]["calibrate_method"] == "distribution"
    g = onnx.load(str(d / "unet.fp8.onnx")).graph
    inits = {t.name: t for t in g.initializer}
    assert any(inits[n.input[2]].data_type == TensorProto.FLOAT8E4M3FN for n in g.node if n.op_type == "QuantizeLinear")
    dq = _dq_inputs(g)
    assert all(not dq[n] for n in map_path_nodes(onnx.load(str(d / "unet.onnx")).graph))
    with MonkeyPipeline.from_engine_dir(d, backend="ort", providers=("cpu",)) as p32:
        req = Request("a toy in the snow", 64, 64, seed=3)
        noise = NoisePlan.from_seed(3, req.latent_shape(p32.dims), req.config.noise_steps)
        ref = p32(req, subject, noise=noise)
        fp8 = OnnxReferenceRunner(d / "unet.fp8.onnx", name="unet")
        fp8.activate()
        p32.unet_runners, p32.unet_roles = {"fp32": p32.runners["unet"], "fp8": fp8}, unet_roles("fp8")
        got = p32(req, subject, noise=noise)
    np.testing.assert_array_equal(got.mask.mask, ref.mask.mask)
    assert psnr(ref.image, got.image) >= LOOSE_PSNR_DB


def test_int8_same_bits_with_and_without_the_default_ort_cache(int8_dir, subject, tmp_path, monkeypatch):
    """Issue 21 point 5: ORT's optimised graphs are cached by default on the CPU provider; the int8 UNet (and the fp32
    mask pass) loaded from that cache give the image and mask of a fresh optimisation, bit for bit."""
    monkeypatch.setenv("MONKEY_TRT_CACHE", str(tmp_path / "user-cache"))
    runs = []
    for options in ({"ort_cache": False}, {}, {}):  # off, then writing the cache, then reading it
        with MonkeyPipeline.from_engine_dir(int8_dir, backend="ort", providers=("cpu",), precision="int8", threads=1,
                                            **options) as pipe:
            out = pipe.generate("a toy on the beach", subject, seed=5)
        runs.append((out.image, out.mask.mask))
    assert len([p for p in (tmp_path / "user-cache" / "ort-optimized").iterdir() if p.name.startswith("unet-")]) == 2
    for image, mask in runs[1:]:
        assert np.array_equal(image, runs[0][0]) and np.array_equal(mask, runs[0][1])


def test_float8_nan_check_is_the_libraries_done_once_per_initializer(monkeypatch):
    """quantize._float8_checked_once: onnxruntime 1.32's ONNXModel.initializer_extend re-checks every float8
    initializer byte by byte on every addition (quadratic: fp8 at sd15 size never finished). Inside the block the
    check gives ORT's verdicts (a NaN byte 0x7F/0xFF raises its ValueError) and reads each initializer once."""
    from onnxruntime.quantization.onnx_model import ONNXModel

    from monkey_trt.export.quantize import _float8_checked_once

    def fp8(name, raw):
        return helper.make_tensor(name, TensorProto.FLOAT8E4M3FN, [len(raw)], raw, raw=True)

    good, nan = fp8("w", bytes([0, 1, 0x7E, 0x80, 0xFE])), fp8("bad", bytes([3, 0xFF]))
    for init in (good, nan):  # ORT's own check first: these are its verdicts
        ok = True
        try:
            ONNXModel._check_init(None, init)
        except ValueError:
            ok = False
        assert ok == (init is good)
    model = ONNXModel(helper.make_model(helper.make_graph([], "g", [], [])))
    scans = []
    frombuffer = np.frombuffer
    monkeypatch.setattr(np, "frombuffer", lambda *a, **k: (scans.append(1), frombuffer(*a, **k))[1])
    original = ONNXModel._check_init
    with _float8_checked_once():
        model.initializer_extend([good])
        for i in range(20):  # each addition re-walks every initializer: the float8 one is scanned once all the same
            model.initializer_extend([numpy_helper.from_array(np.zeros(2, np.float32), f"z{i}")])
        assert len(scans) == 1
        with pytest.raises(ValueError, match="'bad' has nan"):
            model.initializer_extend([nan])
    assert ONNXModel._check_init is original
