"""GPU-shaped 8-bit graphs (issue 21, point 4): the calibrated Q/DQ UNet with its float parts in fp16.

The fp16-based graph is walked (every DequantizeLinear fp16 and feeding fp16 layers, the islands fp32, no fp32
compute elsewhere), run by an executor that did not write it (ONNX Runtime's CPU kernels here; onnx's reference
evaluator, 3 s) against the fp32-based graph, recorded in the manifest with its base, and picked by the
GPU providers (TensorRT builds, ORT CUDA/TensorRT EP) while ORT CPU and OpenVINO pick the fp32-based one; a
provider asked for a base the directory lacks is one line naming the export that adds it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from monkey_trt.cli import main
from monkey_trt.core.errors import EngineDirError, MonkeyError
from monkey_trt.enginedir.load import load_manifest

FP16, FP32 = 10, 1  # onnx.TensorProto
# The fp16-based int8 UNet against the fp32 UNet may be at most this much worse than the fp32-based int8 UNet
# (relative L2 error of noise_pred, per recorded call): measured on the tiny UNet, ratio 0.85-1.05 (docs/int8.md).
REL_SLACK, ABS_SLACK = 1.25, 0.01


def _export_argv(tiny_model_dir, out, *extra):
    return ["export", "--out", str(out), "--base", str(tiny_model_dir / "base"), "--ip-adapter", str(tiny_model_dir / "ip-adapter"),
            "--height", "64", "--width", "64", "--min", "64x64", "--max", "128x128", "--batch", "2", *extra]


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        d = tmp_path_factory.mktemp("calib-cache")
        mp.setenv("MONKEY_TRT_CALIB_CACHE", str(d))
        yield d


@pytest.fixture(scope="module")
def both_dir(engine_dir, tiny_model_dir, tmp_path_factory, calib_dir):
    """The session's engine directory (fp32 + fp16) with int8 added by the default export: both bases (fp16 graphs there)."""
    d = tmp_path_factory.mktemp("gpu8") / "engine"
    shutil.copytree(engine_dir, d)
    assert main(_export_argv(tiny_model_dir, d, "--precision", "int8", "--calib-size", "1")) == 0
    return d


def _without(src: Path, dst: Path, key: str, strip_base: bool = False) -> Path:
    """A copy of `src` without the UNet's `key` graph (its files and manifest entry): a directory holding one base.
    strip_base: also drop the "base" fields, as a manifest written before bases existed."""
    shutil.copytree(src, dst)
    raw = json.loads((dst / "manifest.json").read_text())
    entry = raw["networks"]["unet"]["precisions"].pop(key)
    for f in entry["sha256"]:
        (dst / f).unlink()
    if strip_base:
        for p in raw["networks"]["unet"]["precisions"].values():
            p.pop("base", None)
    (dst / "manifest.json").write_text(json.dumps(raw))
    return dst


def _types(path: Path):
    import onnx
    from onnx import shape_inference

    g = shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False)).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    return g, types


# -- the graph ------------------------------------------------------------------------------------------------
def test_the_default_export_writes_both_bases_and_records_them(both_dir):
    m = load_manifest(both_dir)
    unet = m.networks["unet"].precisions
    assert set(unet) >= {"int8", "int8-fp16"} and m.bases("unet", "int8") == ("fp32", "fp16")
    assert unet["int8"].base == "fp32" and unet["int8-fp16"].base == "fp16" and unet["int8-fp16"].file == "unet.int8-fp16.onnx"
    gpu = unet["int8-fp16"].quantization
    assert gpu["gpu"]["base"] == "fp16" and gpu["gpu"]["opset"] >= 19 and gpu["gpu"]["folded_biases"] > 0
    assert gpu["calibration"] == unet["int8"].quantization["calibration"]  # the same calibrated graph
    raw = json.loads((both_dir / "manifest.json").read_text())["networks"]["unet"]["precisions"]
    assert raw["int8"]["base"] == "fp32" and raw["int8-fp16"]["base"] == "fp16"
    assert m.run_precision("text_encoder", "int8", "fp16") == "fp32"  # never quantized
    assert m.run_precision("vae_decoder", "int8", "fp16") == "int8-fp16"  # the 8-bit VAE decoder has its GPU graph too


def test_gpu_graph_walk_fp16_around_qdq_islands_fp32(both_dir):
    """The structure, walked here node by node (and by check_gpu_graph, which export runs)."""
    import onnx

    from monkey_trt.export.gpu_quant import check_gpu_graph, island_nodes

    g, types = _types(both_dir / "unet.int8-fp16.onnx")
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    islands = island_nodes(g)
    dq = [n for n in g.node if n.op_type == "DequantizeLinear"]
    layers = {c.name for n in dq for c in consumers[n.output[0]] if c.op_type in ("Conv", "MatMul", "Gemm")}
    assert len(dq) > 100 and len(layers) > 50
    assert all(types[n.input[1]] == FP16 and types[n.output[0]] == FP16 for n in dq)  # DQ output type = its scale's
    assert all(types[o] == FP16 for n in g.node if n.name in layers for o in n.output)  # quantized layers: fp16
    assert not any(types.get(n.input[0]) == 6 for n in dq)  # no int32 bias DQ left (folded to float)
    norms = [n for n in g.node if n.op_type in ("InstanceNormalization", "LayerNormalization")]
    assert norms and all(types[n.output[0]] == FP32 for n in norms)  # islands fp32
    mp = [n for n in g.node if n.name in islands and n.op_type == "Softmax"]
    assert mp and all(types[n.output[0]] == FP32 for n in mp)  # the map path's softmax
    compute = [n for n in g.node if n.name not in islands and n.op_type not in
               ("Cast", "Shape", "Size", "Constant", "ConstantOfShape", "QuantizeLinear", "DequantizeLinear")]
    assert compute and not [n.name for n in compute if any(types.get(o) == FP32 for o in n.output)]
    counts = check_gpu_graph(onnx.load(str(both_dir / "unet.int8-fp16.onnx"), load_external_data=False))
    assert counts["dequantize_nodes"] == len(dq) and counts["quantized_layers"] == len(layers)
    # TensorRT's int8: zero point 0, int8 (the CPU graph's uint8 activation pairs, zero point 128, turned back)
    zps = [types[n.input[2]] for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
    assert zps and set(zps) == {onnx.TensorProto.INT8}
    cpu, cpu_types = _types(both_dir / "unet.int8.onnx")
    assert {cpu_types[n.input[2]] for n in cpu.node if n.op_type == "QuantizeLinear"} == {onnx.TensorProto.UINT8}


def test_the_walk_refuses_an_fp32_scale_and_fp32_compute(both_dir):
    import onnx
    from onnx import helper, numpy_helper

    from monkey_trt.export.gpu_quant import check_gpu_graph
    from monkey_trt.export.qdq_types import int8_activations

    cpu = onnx.load(str(both_dir / "unet.int8.onnx"), load_external_data=False)
    with pytest.raises(MonkeyError, match="QuantizeLinear .* has a uint8 zero point"):
        check_gpu_graph(cpu)  # the CPU graph: uint8 activation pairs (export/qdq_types.py)
    assert int8_activations(cpu.graph) > 0
    with pytest.raises(MonkeyError, match="DequantizeLinear .* non-fp16"):
        check_gpu_graph(cpu)  # and fp32 scales everywhere
    gpu = onnx.load(str(both_dir / "unet.int8-fp16.onnx"), load_external_data=True)
    dq = next(n for n in gpu.graph.node if n.op_type == "DequantizeLinear")
    i = next(k for k, t in enumerate(gpu.graph.initializer) if t.name == dq.input[1])
    gpu.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(gpu.graph.initializer[i]).astype(np.float32), dq.input[1]))
    with pytest.raises(MonkeyError, match="GPU-shaped 8-bit graph: DequantizeLinear"):
        check_gpu_graph(gpu)
    gpu = onnx.load(str(both_dir / "unet.int8-fp16.onnx"), load_external_data=True)
    silu = next(n for n in gpu.graph.node if n.op_type == "Sigmoid")  # an fp16 op: run it in fp32 between casts
    x, y = silu.input[0], silu.output[0]
    silu.input[0], silu.output[0] = x + "_f32", y + "_f32"
    at = list(gpu.graph.node).index(silu)
    gpu.graph.node.insert(at, helper.make_node("Cast", [x], [x + "_f32"], to=FP32, name="to32"))
    gpu.graph.node.insert(at + 2, helper.make_node("Cast", [y + "_f32"], [y], to=FP16, name="to16"))
    with pytest.raises(MonkeyError, match="computes in fp32 outside the fp32 islands"):
        check_gpu_graph(gpu)


def _recorded_feeds(calib_dir: Path) -> list[dict]:
    z = np.load(next(calib_dir.glob("calib-*.npz")))
    n = len(z["sample"])
    return [{k: (z[k][i] if k == "ip_scale" else z[k][i:i + 1]) for k in z.files if not k.startswith("__")} for i in range(n)]


def test_gpu_graph_against_the_cpu_graph_on_ort_cpu(both_dir, calib_dir):
    """ORT's CPU kernels (not the converter) run both graphs on MONKEY's recorded calls: the fp16-based graph is as
    close to the fp32 UNet as the fp32-based one, within REL_SLACK x + ABS_SLACK per call; maps agree closely."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    run = {k: ort.InferenceSession(str(both_dir / f), so, providers=["CPUExecutionProvider"])
           for k, f in (("fp32", "unet.onnx"), ("cpu", "unet.int8.onnx"), ("gpu", "unet.int8-fp16.onnx"))}
    rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))  # noqa: E731
    feeds = _recorded_feeds(calib_dir)
    assert len(feeds) == 11
    maps = {"cpu": [], "gpu": []}
    for f in feeds:
        out = {k: s.run(None, f) for k, s in run.items()}
        assert out["gpu"][0].dtype == np.float32  # the manifest's float32 outputs
        assert rel(out["gpu"][0], out["fp32"][0]) <= REL_SLACK * rel(out["cpu"][0], out["fp32"][0]) + ABS_SLACK
        for k in maps:
            maps[k].append(rel(out[k][1], out["fp32"][1]))
    # the map (an fp32 island fed by quantized features) moves per call either way (measured 0.02-0.12 rel. for both
    # graphs); over MONKEY's calls the GPU graph's maps are as close to fp32's as the CPU graph's (means 0.046, 0.051)
    assert np.mean(maps["gpu"]) <= 1.5 * np.mean(maps["cpu"]) + ABS_SLACK


def test_gpu_graph_by_the_reference_evaluator(both_dir, calib_dir):
    """onnx's reference evaluator (op by op in numpy, no code shared with ORT) runs the GPU graph and the fp32 UNet on
    one recorded call: within the same tolerance of the CPU graph's own error."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    import onnxruntime as ort

    f = _recorded_feeds(calib_dir)[5]
    g, r = (ReferenceEvaluator(onnx.load(str(both_dir / name))).run(None, f)[0] for name in ("unet.int8-fp16.onnx", "unet.onnx"))
    # the yardstick, the CPU graph's own error, on ORT (the reference evaluator has no opset-17 DequantizeLinear)
    c = ort.InferenceSession(str(both_dir / "unet.int8.onnx"), providers=["CPUExecutionProvider"]).run(None, f)[0]
    rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))  # noqa: E731
    assert rel(g, r) <= REL_SLACK * rel(c, r) + ABS_SLACK


# -- which graph runs where -----------------------------------------------------------------------------------
def test_ort_cpu_runs_the_cpu_graph_and_gpu_providers_the_gpu_graph(both_dir, monkeypatch, tmp_path):
    from monkey_trt.engine.ort.opener import open_ort_runners
    from monkey_trt.enginedir.plans import check_gpu_graphs, manifest_onnx_digest
    from monkey_trt.runtime.backend import BackendSpec
    from tests.fakes import ort as fakes

    m = load_manifest(both_dir)
    cpu = open_ort_runners(both_dir, m, BackendSpec(precision="int8", providers=("cpu",)), ("unet", "vae_decoder"))
    assert cpu["unet"].model_path.name == "unet.int8.onnx" and cpu["unet"].int8 and not cpu["unet"].fp16
    assert cpu["vae_decoder"].model_path.name == "vae_decoder.int8.onnx"  # the 8-bit VAE decoder, CPU graph
    monkeypatch.setenv("MONKEY_TRT_CACHE", str(tmp_path / "cache"))
    fakes.install(monkeypatch)  # an onnxruntime GPU build (tests/fakes/ort.py)
    for providers in (("cuda",), ("tensorrt",)):
        gpu = open_ort_runners(both_dir, m, BackendSpec(precision="int8", providers=providers), ("unet", "vae_decoder"))
        assert gpu["unet"].model_path.name == "unet.int8-fp16.onnx" and gpu["unet"].int8 and gpu["unet"].fp16
        assert gpu["vae_decoder"].model_path.name == "vae_decoder.int8-fp16.onnx"  # and its GPU graph
    check_gpu_graphs(both_dir, m, "int8")  # what `build` checks: present
    assert manifest_onnx_digest(m, ["unet"], "int8") != manifest_onnx_digest(m, ["unet"], "fp32")


def test_a_directory_written_before_bases_reads_as_fp32_based(both_dir, tmp_path):
    old = _without(both_dir, tmp_path / "old", "int8-fp16", strip_base=True)
    m = load_manifest(old)
    assert m.networks["unet"].precisions["int8"].base == "fp32" and m.bases("unet", "int8") == ("fp32",)
    assert "int8" in m.precisions and m.path(old, "unet", "int8").name == "unet.int8.onnx"
    with pytest.raises(EngineDirError) as ei:  # a GPU provider: one line naming the export that adds the GPU graph
        m.path(old, "unet", "int8", "fp16")
    msg = str(ei.value)
    assert "\n" not in msg and "quantized from fp32 only" in msg and "--precision int8 --quant-base fp16" in msg
    assert "no new calibration" in msg


def test_a_base_that_does_not_match_its_key_is_refused(both_dir, tmp_path):
    d = tmp_path / "bad"
    shutil.copytree(both_dir, d)
    raw = json.loads((d / "manifest.json").read_text())
    raw["networks"]["unet"]["precisions"]["int8-fp16"]["base"] = "fp32"
    (d / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(EngineDirError):
        load_manifest(d)


def test_wrong_base_is_one_line_exit_2_for_ort_cpu_and_trt_build(both_dir, tiny_model_dir, tmp_path, capsys):
    gpu_only = _without(both_dir, tmp_path / "gpu-only", "int8")
    argv = ["generate", "--engine-dir", str(gpu_only), "--precision", "int8", "--prompt", "a toy",
            "--image", str(tiny_model_dir / "subject.png"), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "quantized from fp16 only (the GPU graph)" in err
    assert "--quant-base fp32" in err and not (tmp_path / "o").exists()
    # TensorRT (build and the plan lookup): the CPU graph only is refused, before anything is built
    from monkey_trt.enginedir import plans

    cpu_only = _without(both_dir, tmp_path / "cpu-only", "int8-fp16")
    with pytest.raises(EngineDirError, match=r"quantized from fp32 only .* TensorRT .*--quant-base fp16"):
        plans.find_plan_dir(cpu_only, load_manifest(cpu_only), "int8", "10.9.0", "Fake GPU", "9.0")


def test_adding_the_gpu_graph_converts_without_calibrating(both_dir, tiny_model_dir, tmp_path, capsys, monkeypatch):
    from monkey_trt.export import calibration

    old = _without(both_dir, tmp_path / "old", "int8-fp16", strip_base=True)
    before = (old / "unet.int8.onnx").read_bytes()
    # --calib-* would change nothing (the GPU graph is converted from the calibrated one): refused
    assert main(_export_argv(tiny_model_dir, old, "--precision", "int8", "--quant-base", "fp16", "--calib-size", "2")) == 2
    assert "would change nothing" in capsys.readouterr().err
    monkeypatch.setattr(calibration, "load_or_collect", lambda *a, **k: pytest.fail("calibrated again"))
    assert main(_export_argv(tiny_model_dir, old, "--precision", "int8", "--quant-base", "fp16")) == 0
    assert "added int8-fp16" in capsys.readouterr().out
    m = load_manifest(old)
    assert m.bases("unet", "int8") == ("fp32", "fp16") and (old / "unet.int8.onnx").read_bytes() == before
    assert main(_export_argv(tiny_model_dir, old, "--precision", "int8", "--quant-base", "both")) == 0  # nothing to add
    assert "already has int8" in capsys.readouterr().out


def test_quant_base_choices_and_refusals(tiny_model_dir, tmp_path, capsys):
    from monkey_trt.export.gpu_quant import DEFAULT_QUANT_BASE, resolve_bases

    assert DEFAULT_QUANT_BASE == "auto"
    assert resolve_bases("auto", "int8", fp16_graphs=False, gpu_visible=False) == ("fp32",)  # CPU-only: no GPU graph
    assert resolve_bases("auto", "int8", fp16_graphs=True, gpu_visible=False) == ("fp32", "fp16")
    assert resolve_bases("auto", "int8", fp16_graphs=False, gpu_visible=True) == ("fp32", "fp16")
    assert resolve_bases("auto", "fp8", fp16_graphs=False, gpu_visible=False) == ("fp32", "fp16")  # TensorRT only
    assert resolve_bases("fp16", "int8", False, False) == ("fp16",) and resolve_bases("both", "int8", False, False) == ("fp32", "fp16")
    assert resolve_bases("fp16", "fp16", False, False) == ()
    for extra, match in ((["--precision", "fp32", "--quant-base", "fp16"], "--quant-base applies to --precision int8 or fp8 only"),
                         (["--precision", "int8", "--quant-base", "gpu"], "--quant-base must be one of auto, fp32, fp16, both")):
        assert main(_export_argv(tiny_model_dir, tmp_path / "x", *extra)) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and match in err and not (tmp_path / "x").exists()


# -- the mask pass on GPUs ------------------------------------------------------------------------------------
def test_mask_pass_modes():
    from monkey_trt.runtime.backend import BackendSpec
    from monkey_trt.runtime.unet_graphs import unet_roles

    assert unet_roles("int8", "exact") == {"mask": "fp32", "final": "int8", "baseline": "int8"}
    assert unet_roles("int8", "fp16") == {"mask": "fp16", "final": "int8", "baseline": "int8"}
    assert unet_roles("fp8", "same")["mask"] == "fp8"
    assert BackendSpec(backend="trt", precision="fp8", mask_pass="fp16").mask_pass == "fp16"
    with pytest.raises(MonkeyError, match="mask_pass='fp16' runs pass 1 on the fp16 UNet"):
        BackendSpec(backend="openvino", precision="int8", mask_pass="fp16")
    with pytest.raises(MonkeyError, match="mask_pass='fp16' applies to the reduced precisions"):
        BackendSpec(backend="ort", precision="fp16", mask_pass="fp16")


def test_mask_pass_fp16_runs_pass_one_on_the_fp16_unet(both_dir, subject):
    """ORT CPU runs the fp16 UNet too: the mode's mechanics (the IoU on GPUs is gpu_int8.sh's row)."""
    from monkey_trt.engine.compare import mask_iou
    from monkey_trt.runtime.pipeline import MonkeyPipeline

    masks = {}
    for mode in ("exact", "fp16"):
        with MonkeyPipeline.from_engine_dir(both_dir, backend="ort", precision="int8", mask_pass=mode) as p:
            assert set(p.unet_runners) == {"int8", "fp32" if mode == "exact" else "fp16"}
            masks[mode] = p.generate("a toy on the beach", subject, seed=0).mask.mask
    assert 0.0 <= mask_iou(masks["exact"], masks["fp16"]) <= 1.0


# -- benchmarks/gpu_int8.sh: what runs without a GPU ----------------------------------------------------------
GPU_INT8 = Path(__file__).parents[1] / "benchmarks" / "gpu_int8.sh"


def _sh(*args, **env):
    import os
    import subprocess
    import sys

    full = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(GPU_INT8), *args], capture_output=True, text=True, env=full, timeout=120)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_int8_script_arguments_and_no_gpu(tmp_path):
    r = _sh("--help")
    assert r.returncode == 0 and "fp16 base" in r.stdout and "STEP_SHARE" in r.stdout
    r = _sh("--bogus")
    assert r.returncode == 2 and r.stderr.strip() == "error: unknown argument --bogus (see --help)"
    for env, msg in ((("RUNS", "x"), "RUNS must be a positive integer"), (("CONTRAST", "2"), "CONTRAST must be 0 or 1"),
                     (("SEEDS", "0;rm"), "SEEDS must be a comma list"), (("STEP_SHARE", "150"), "STEP_SHARE must be a percentage")):
        r = _sh("--work", str(tmp_path / "w"), **dict([env]))
        assert r.returncode == 2 and msg in r.stderr and r.stderr.count("\n") == 1
    r = _sh("--work", str(tmp_path / "w"))  # no TensorRT here: says so, exit 3, nothing run
    assert r.returncode == 3 and "no TensorRT + NVIDIA GPU here" in r.stdout


@pytest.fixture
def fake_trt(monkeypatch):
    """tests/fakes/trt.py's TensorRT, Polygraphy and CUDA runtime (a compute capability 9.0 GPU)."""
    pytest.importorskip("polygraphy.backend.trt")
    from tests.fakes.trt import install_fake_gpu

    log: list = []
    fake, cudart = install_fake_gpu(monkeypatch, log)
    return log, fake


def test_gpu_int8_unet_steps_on_the_fake_tensorrt(both_dir, fake_trt, tmp_path, capsys, monkeypatch):
    """The helper gpu_int8.sh calls: one strongly typed UNet plan per graph (the fake runs the plan's ONNX with onnx's
    reference evaluator), timed, tabled; bad graphs are one line, exit 2."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_int8_unet", Path(__file__).parents[1] / "benchmarks" / "gpu_int8_unet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    log, fake = fake_trt
    # The fake resolves an output's symbolic dims from its inputs' only (tests/fakes/trt.py); TensorRT's shape inference
    # gets the map's query count Q from h and w. Here Q comes from ONNX Runtime running the same feeds.
    import onnxruntime as ort

    feeds = mod.feeds_for(load_manifest(both_dir))
    q = ort.InferenceSession(str(both_dir / "unet.onnx"), providers=["CPUExecutionProvider"]).run(["ip_attn_map"], feeds)[0].shape[1]
    init = fake.Engine.__init__

    def with_q(self, header, model):
        init(self, header, model)
        self.outputs = {n: (dt, tuple(q if d == "Q" else d for d in dims)) for n, (dt, dims) in self.outputs.items()}

    monkeypatch.setattr(fake.Engine, "__init__", with_q)
    out = tmp_path / "steps.json"
    # (the CPU graph, `int8`, is opset 17: onnx's reference evaluator inside the fake has no opset-17 DequantizeLinear)
    argv = ["--engine-dir", str(both_dir), "--graphs", "fp16,int8-fp16", "--work", str(tmp_path / "w"), "--runs", "1",
            "--warmup", "0", "--json", str(out)]
    assert mod.main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["graph"] for r in rows] == ["fp16", "int8-fp16"] and all(r["finite"] and r["step_p50_s"] > 0 for r in rows)
    assert all(kw == {"strongly_typed": True} for name, kw in log if name == "network_from_onnx_path")
    table = capsys.readouterr().out
    assert "| fp16 | - |" in table and "1.00x" in table and "| int8-fp16 | fp16 |" in table
    assert mod.main(["--table", str(out)]) == 0 and "| int8-fp16 | fp16 |" in capsys.readouterr().out
    assert mod.main(["--engine-dir", str(both_dir), "--graphs", "fp8-fp16", "--work", str(tmp_path / "w")]) == 2
    assert "has no UNet graph fp8-fp16" in capsys.readouterr().err
    budget = tmp_path / "b.json"
    assert mod.main(["--engine-dir", str(both_dir), "--graphs", "fp16,int8-fp16", "--work", str(tmp_path / "w"),
                     "--budget", "-1", "--json", str(budget)]) == 0  # no time left: nothing starts, said so
    assert [r.get("skipped") for r in json.loads(budget.read_text())["rows"]] == ["budget", "budget"]


def test_seven_bit_cpu_weights_get_their_eighth_bit_back_in_the_gpu_graph():
    """A CPU graph quantized on a CPU without VNNI has 7-bit weights (reduce_range); the GPU graph re-quantizes them
    from the fp32 weights to the full symmetric int8 range, per output channel, halving the rounding error."""
    from onnx import helper, numpy_helper

    from monkey_trt.export.gpu_quant import requantize_weights

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, 4, 3, 3)) * np.linspace(0.01, 1.0, 8)[:, None, None, None]).astype(np.float32)
    amax = np.abs(w).max(axis=(1, 2, 3))
    s7 = (amax / 63.5).astype(np.float32)  # onnxruntime's reduce_range: [-64, 64]
    q7 = np.clip(np.rint(w / s7[:, None, None, None]), -64, 64).astype(np.int8)
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["w_quantized", "w_scale", "w_zero_point"], ["w_dq"], axis=0),
         helper.make_node("Conv", ["x", "w_dq"], ["y"])], "g",
        [helper.make_tensor_value_info("x", 1, [1, 4, 5, 5])], [helper.make_tensor_value_info("y", 1, None)],
        [numpy_helper.from_array(q7, "w_quantized"), numpy_helper.from_array(s7, "w_scale"),
         numpy_helper.from_array(np.zeros(8, np.int8), "w_zero_point")])
    assert requantize_weights(graph, {"w": w}.get) == 1
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    q8, s8 = inits["w_quantized"], inits["w_scale"]
    assert q8.dtype == np.int8 and int(np.abs(q8).max()) == 127 and s8.shape == (8,) and s8.dtype == np.float32
    err7 = np.abs(q7 * s7[:, None, None, None] - w).max(axis=(1, 2, 3))
    err8 = np.abs(q8 * s8[:, None, None, None] - w).max(axis=(1, 2, 3))
    assert np.all(err8 <= s8 / 2 + 1e-7) and np.all(err8 <= err7) and err8.mean() < 0.75 * err7.mean()
    assert requantize_weights(graph, lambda name: None) == 0  # no fp32 weight of that name: left as it is
