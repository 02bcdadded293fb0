"""Export in bounded memory (export/lean_onnx.py, export/onnx_export.py) and streaming calibration (export/quantize.py).

What is checked: folding the graph with its weights held aside gives the same bytes as folding the whole model
(the old way, written out here as the reference), with the weights inline or streamed into one `.onnx.data`
file; the calibration reduces call by call, with min/max ranges equal to ORT's whole-batch calibration and the
quantized graph identical to ORT's quantize_static, histogram methods close to it; and its peak memory does not
grow with the number of calls. The sd15-size numbers are in docs/int8.md.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from monkey_trt.cli import main
from monkey_trt.export import lean_onnx, onnx_export
from monkey_trt.export.quantize import QUANT_OPS, QuantSettings, _Reader, calibrate_streaming, quantize_model_file


@pytest.fixture(scope="module")
def raw(tiny_model_dir, tmp_path_factory):
    """The tiny UNet as torch.onnx writes it (before folding), in a folder of its own."""
    from monkey_trt.core.config import ModelSource
    from monkey_trt.enginedir.networks import network_descs
    from monkey_trt.export.wrappers import UNetNet
    from monkey_trt.reference.loading import load_reference_models

    m = load_reference_models(ModelSource(str(tiny_model_dir / "base"), str(tiny_model_dir / "ip-adapter")))
    desc = network_descs(m.dims)["unet"]
    d = tmp_path_factory.mktemp("raw-unet")
    args = onnx_export.sample_inputs(desc, m.dims, 1, *onnx_export.trace_size("unet", 64, 64, m.dims))
    onnx_export.export_network(UNetNet(m.unet, m.ctx, 0).eval(), desc, args, d / "unet.onnx", 17)
    return d / "unet.onnx", desc


def _whole_model_fold(src: Path, dst: Path, desc) -> None:
    """The reference: the whole model (weights loaded) folded by Polygraphy, as finalize_onnx did before."""
    from polygraphy.backend.onnx import fold_constants

    model = fold_constants(onnx.load(str(src)), error_ok=False, partitioning=None)
    onnx_export.canonical_dims(model, desc)
    onnx.save_model(model, str(dst))
    onnx.shape_inference.infer_shapes_path(str(dst), str(dst))


def _copy_raw(raw: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in raw.parent.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst / raw.name


@pytest.mark.parametrize("hold_bytes", [pytest.param(0, marks=pytest.mark.slow), None])  # 0 (every weight held aside): the slow set
def test_folding_the_graph_without_its_weights_gives_the_same_bytes(raw, tmp_path, monkeypatch, hold_bytes):
    """Every weight held aside (0) or the default threshold: byte for byte the whole-model folding's file."""
    raw_unet, desc = raw
    _whole_model_fold(raw_unet, tmp_path / "reference.onnx", desc)
    if hold_bytes is not None:
        monkeypatch.setattr(lean_onnx, "HOLD_BYTES", hold_bytes)
    src = _copy_raw(raw_unet, tmp_path / "lean")
    assert onnx_export.finalize_onnx(src, True, desc) == ["unet.onnx"]
    assert sorted(p.name for p in src.parent.iterdir()) == ["unet.onnx"], "the exporter's files are gone"
    assert src.read_bytes() == (tmp_path / "reference.onnx").read_bytes()


@pytest.mark.slow  # 20 s of folding the UNet: the slow set (the default set folds it once, above)
def test_weights_streamed_into_one_data_file_are_the_same_model(raw, tmp_path, monkeypatch):
    raw_unet, desc = raw
    inline = _copy_raw(raw_unet, tmp_path / "inline")
    onnx_export.finalize_onnx(inline, True, desc)
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)  # as a > 1 GiB network is written
    ext = _copy_raw(raw_unet, tmp_path / "ext")
    assert onnx_export.finalize_onnx(ext, True, desc) == ["unet.onnx", "unet.onnx.data"]
    a, b = onnx.load(str(inline)), onnx.load(str(ext))  # b: its data loaded from the file
    assert [n.SerializeToString() for n in a.graph.node] == [n.SerializeToString() for n in b.graph.node]
    wa = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    wb = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    skeleton = onnx.load(str(ext), load_external_data=False)
    assert sum(t.data_location == TensorProto.EXTERNAL for t in skeleton.graph.initializer) > 10


@pytest.mark.slow  # reproducible exports are also checked by the default set (test_export_ort)
def test_a_second_finalize_of_the_same_export_is_byte_identical(raw, tmp_path):
    raw_unet, desc = raw
    outs = []
    for name in ("a", "b"):
        p = _copy_raw(raw_unet, tmp_path / name)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)
            onnx_export.finalize_onnx(p, True, desc)
        outs.append([f.read_bytes() for f in sorted(p.parent.iterdir())])
    assert outs[0] == outs[1]


# -- streaming calibration ---------------------------------------------------------------------------------
def _model(path: Path, channels: int = 8, side: int = 6) -> None:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((channels, 4, 3, 3)).astype(np.float32), "w")
    m = numpy_helper.from_array(rng.standard_normal((channels, channels)).astype(np.float32), "m")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="/conv1/Conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Transpose", ["r"], ["t"], name="t", perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["t", "m"], ["y"], name="/proj/MatMul")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, side, side])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, side, side, channels])], [w, m])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _feeds(n: int, side: int = 6) -> list[dict]:
    rng = np.random.default_rng(1)
    return [{"x": (rng.standard_normal((1, 4, side, side)) * (1 + (i % 7))).astype(np.float32)} for i in range(n)]


def _whole_batch_ranges(model: Path, feeds, method, options, tmp: Path):
    """ORT's calibrator fed every call at once (what quantize_static did without a stride)."""
    from onnxruntime.quantization.calibrate import create_calibrator

    c = create_calibrator(model, list(QUANT_OPS), augmented_model_path=str(tmp / "aug.onnx"), calibrate_method=method,
                          extra_options=options)
    c.collect_data(_Reader(feeds))
    return c.compute_data()


def test_streamed_minmax_ranges_equal_the_whole_batch_and_the_graph_is_ort_s(tmp_path):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import load_tensors_data

    _model(tmp_path / "m.onnx")
    feeds = _feeds(20)
    whole = _whole_batch_ranges(tmp_path / "m.onnx", feeds, CalibrationMethod.MinMax, {}, tmp_path)
    calibrate_streaming(tmp_path / "m.onnx", feeds, CalibrationMethod.MinMax, {}, False, tmp_path, tmp_path / "r.json")
    stream = load_tensors_data(tmp_path / "r.json")
    assert set(whole.keys()) == set(stream.keys())
    for k in whole.keys():
        assert [np.asarray(v).ravel().tolist() for v in whole[k].range_value] == [np.asarray(v).ravel().tolist() for v in stream[k].range_value], k
    s = QuantSettings("int8", reduce_range=False)
    quantize_model_file(tmp_path / "m.onnx", tmp_path / "ours.onnx", feeds, s, external=False)
    quantize_static(str(tmp_path / "m.onnx"), str(tmp_path / "ort.onnx"), _Reader(feeds), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(QUANT_OPS), per_channel=True, reduce_range=False, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, nodes_to_quantize=["/conv1/Conv", "/proj/MatMul"], calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
                                   "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"], "DedicatedQDQPair": True})
    a, b = onnx.load(str(tmp_path / "ours.onnx")), onnx.load(str(tmp_path / "ort.onnx"))
    del a.metadata_props[:], b.metadata_props[:]
    assert a.SerializeToString() == b.SerializeToString()


@pytest.mark.parametrize("method", ["Percentile", "Distribution"])
def test_streamed_histogram_ranges_are_close_to_the_whole_batch(tmp_path, method):
    """Histograms merged call by call: the thresholds stay within the data's range and close to the whole batch's."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import load_tensors_data

    _model(tmp_path / "m.onnx")
    feeds = _feeds(20)
    m = getattr(CalibrationMethod, method)
    opts = {"percentile": 99.99} if method == "Percentile" else {}
    whole = _whole_batch_ranges(tmp_path / "m.onnx", feeds, m, opts, tmp_path)
    calibrate_streaming(tmp_path / "m.onnx", feeds, m, {"CalibPercentile": 99.99} if opts else {}, False, tmp_path, tmp_path / "r.json")
    stream = load_tensors_data(tmp_path / "r.json")
    for k in whole.keys():
        lo_w, hi_w = (float(np.asarray(v).ravel()[0]) for v in whole[k].range_value)
        lo_s, hi_s = (float(np.asarray(v).ravel()[0]) for v in stream[k].range_value)
        width = hi_w - lo_w
        assert abs(hi_s - hi_w) <= 0.1 * width and abs(lo_s - lo_w) <= 0.1 * width, (k, whole[k].range_value, stream[k].range_value)


PEAK_SCRIPT = textwrap.dedent("""
    import resource, sys, tempfile, pathlib
    import numpy as np
    from onnxruntime.quantization import CalibrationMethod
    from monkey_trt.export.quantize import calibrate_streaming
    n, model = int(sys.argv[1]), pathlib.Path(sys.argv[2])
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((1, 4, 96, 96)).astype(np.float32)} for _ in range(n)]  # 147 KiB each
    with tempfile.TemporaryDirectory() as t:
        calibrate_streaming(model, feeds, CalibrationMethod.Percentile, {}, False, pathlib.Path(t), pathlib.Path(t) / "r.json")
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def test_calibration_memory_does_not_grow_with_the_number_of_calls(tmp_path):
    """Percentile run whole-batch keeps every activation of every call (measured: 126 MiB peak for 2 calls, 673 MiB
    for 48); streamed, 48 calls peak within 20 MiB of 2 (measured +9 MiB, the feeds themselves are 7 MiB more)."""
    _model(tmp_path / "m.onnx", channels=64, side=96)
    peaks = {}
    for n in (2, 48):
        r = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(n), str(tmp_path / "m.onnx")], capture_output=True, text=True, check=True)
        peaks[n] = int(r.stdout.split()[-1]) / 1024
    assert peaks[48] - peaks[2] < 20, peaks


# -- --calib-height / --calib-width ------------------------------------------------------------------------
def _argv(tiny_model_dir, out, *extra):
    return ["export", "--out", str(out), "--base", str(tiny_model_dir / "base"), "--ip-adapter", str(tiny_model_dir / "ip-adapter"),
            "--height", "64", "--width", "64", "--min", "64x64", "--max", "128x128", *extra]


@pytest.mark.parametrize("extra, match", [
    (["--precision", "int8", "--calib-height", "136"], "--calib-height 136 is outside the engine profile 64..128"),
    (["--precision", "int8", "--calib-width", "56"], "--calib-width 56 is outside the engine profile 64..128"),
    (["--precision", "int8", "--calib-width", "100"], "--calib-width must be a multiple of 8, got 100"),
    (["--calib-height", "64"], "--calib-height apply to --precision int8 or fp8 only"),
])
def test_calibration_sizes_outside_the_profile_are_one_line_before_any_work(tiny_model_dir, tmp_path, capsys, extra, match):
    out = tmp_path / "e"
    assert main(_argv(tiny_model_dir, out, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {match}" or (err.startswith("error: ") and match in err and "\n" not in err), err
    assert not out.exists()


def test_calibration_size_is_the_given_one_and_recorded():
    from monkey_trt.enginedir.networks import Profile, ShapeRange
    from monkey_trt.export.calibration import calibration_from_options

    p = Profile(ShapeRange(1, 1, 1), ShapeRange(256, 512, 768), ShapeRange(256, 512, 768))
    spec = calibration_from_options(("fp32", "int8"), p, None, None, 2, 256, None)
    assert (spec.height, spec.width) == (256, 512) and spec.record()["height"] == 256 and spec.record()["width"] == 512
    default = calibration_from_options(("fp32", "int8"), p, None, None, 2)
    assert (default.height, default.width) == (512, 512) and default.key({}) != spec.key({})


def test_recorded_calls_share_only_bit_identical_inputs():
    """The recording keeps one copy of an input repeated over calls (a case's text, mask); anything whose bytes differ
    (a new latent, -0.0 for 0.0) is its own copy, and no row is a view of the engine's buffer."""
    from monkey_trt.export.calibration import _kept_row

    held: dict = {}
    buf = {"mask": np.ones((1, 1, 4, 4), np.float32), "sample": np.zeros((1, 4, 2, 2), np.float32)}
    r1 = _kept_row(buf, held)
    buf["sample"][:] = 1.0  # the engine reuses its buffers
    r2 = _kept_row(buf, held)
    buf["mask"] = -np.zeros((1, 1, 4, 4), np.float32)
    r3 = _kept_row(buf, held)
    assert r2["mask"] is r1["mask"] and r1["sample"].max() == 0.0 and r2["sample"].min() == 1.0
    assert r3["mask"] is not r1["mask"] and np.signbit(r3["mask"]).all() and r3["sample"] is r2["sample"]
    rows = [r1, r2, r3]
    assert np.concatenate([r["sample"] for r in rows]).tolist() == [[[[0.0] * 2] * 2] * 4, [[[1.0] * 2] * 2] * 4, [[[1.0] * 2] * 2] * 4]


@pytest.mark.slow  # ~30 s on 2 busy cores: records the tiny UNet's calls and calibrates twice
def test_streamed_minmax_ranges_of_the_unet_equal_ort_s_default_order(engine_dir, tmp_path):
    """On a branchy graph (the tiny UNet, real recorded calls) the lean session's priority-based order gives the very
    bits of ORT's own calibrator run in its default order: only independent nodes change places."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import load_tensors_data

    from monkey_trt.export.calibration import CalibrationSpec, collect

    feeds = collect(engine_dir, CalibrationSpec.build(size=1, height=64, width=64)).feeds()[::4]  # both passes, masked too
    unet = engine_dir / "unet.onnx"
    whole = _whole_batch_ranges(unet, feeds, CalibrationMethod.MinMax, {"symmetric": True}, tmp_path)
    calibrate_streaming(unet, feeds, CalibrationMethod.MinMax, {"CalibTensorRangeSymmetric": True}, False, tmp_path, tmp_path / "r.json")
    stream = load_tensors_data(tmp_path / "r.json")
    assert len(whole.keys()) > 100 and set(whole.keys()) == set(stream.keys())
    for k in whole.keys():
        assert [np.asarray(v).tobytes() for v in whole[k].range_value] == [np.asarray(v).tobytes() for v in stream[k].range_value], k


def test_recordings_open_onnx_runtime_without_its_arena_and_other_backends_refuse_the_option(engine_dir):
    """`cpu_arena=False` (the calibration recordings) reaches every ORT session; the default keeps the arena; the
    option means nothing to OpenVINO: one line."""
    from monkey_trt.core.errors import MonkeyError
    from monkey_trt.runtime.backend import BackendSpec
    from monkey_trt.runtime.pipeline import MonkeyPipeline

    for arena in (False, True):
        with MonkeyPipeline.from_engine_dir(engine_dir, providers=("cpu",), verify="size", cpu_arena=arena) as pipe:
            got = {n: r.session.get_session_options().enable_cpu_mem_arena for n, r in pipe.runners.items()}
        assert set(got.values()) == {arena} and len(got) == 4, got
    with pytest.raises(MonkeyError, match="cpu_arena applies to --backend ort only, not --backend openvino"):
        BackendSpec(backend="openvino", cpu_arena=False)


@pytest.mark.parametrize("record", ["unet", "inputs"])
def test_recordings_run_the_full_unet_without_the_arena(engine_dir, monkeypatch, record):
    """Both recordings open the fp32 engine without ORT's arena and without the map-only UNet (adding int8 to a
    directory that has one records what one export records, without its weights loaded beside the UNet's)."""
    from monkey_trt.export.calibration import CalibrationSpec, collect
    from monkey_trt.export.network_calibration import collect_inputs
    from monkey_trt.runtime.pipeline import MonkeyPipeline

    seen = []
    real = MonkeyPipeline.open.__func__
    monkeypatch.setattr(MonkeyPipeline, "open", classmethod(lambda cls, spec, root: seen.append(spec) or real(cls, spec, root)))
    spec = CalibrationSpec.build(size=1, height=64, width=64)
    data = collect(engine_dir, spec) if record == "unet" else collect_inputs(engine_dir, spec, ("vae_decoder",))
    assert [(s.cpu_arena, s.map_only, s.precision) for s in seen] == [(False, False, "fp32")]
    assert (len(data) == 11) if record == "unet" else data.calls("vae_decoder") == 1
