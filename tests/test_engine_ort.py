"""OrtRunner on CPU with tiny ONNX graphs built in the test (no model download)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from monkey_trt.core.errors import BackendUnavailable, MonkeyError
from monkey_trt.engine.ort import (
    OrtRunner,
    available_providers,
    ort_version,
    physical_cores,
    resolve_providers,
)
from monkey_trt.engine.runner import TensorDesc

RNG = np.random.default_rng(0)
W = RNG.standard_normal((8, 4)).astype(np.float32)
BIAS = RNG.standard_normal((4,)).astype(np.float32)
TABLE = RNG.standard_normal((10, 3)).astype(np.float32)


def _save(model: onnx.ModelProto, path) -> str:
    model.opset_import[0].version = 17
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture(scope="module")
def mlp_path(tmp_path_factory) -> str:
    """y = x @ W + b with a dynamic batch "B"; ids (int64, [B, 5]) -> Gather -> emb [B, 5, 3]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8])
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])
    emb = helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["B", 5, 3])
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "bias"], ["y"]),
        helper.make_node("Gather", ["table", "ids"], ["emb"], axis=0),
    ]
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(BIAS, "bias"), numpy_helper.from_array(TABLE, "table")]
    graph = helper.make_graph(nodes, "mlp", [x, ids], [y, emb], initializer=inits)
    return _save(helper.make_model(graph), tmp_path_factory.mktemp("ort") / "mlp.onnx")


def _feeds(batch: int) -> dict[str, np.ndarray]:
    return {
        "x": RNG.standard_normal((batch, 8)).astype(np.float32),
        "ids": RNG.integers(0, 10, size=(batch, 5)).astype(np.int64),
    }


def test_cpu_matches_numpy_across_batches(mlp_path):
    with OrtRunner(mlp_path, providers="cpu") as r:
        assert r.backend == "onnxruntime" and r.name == "mlp"
        for batch in (1, 3, 2):
            f = _feeds(batch)
            out = r.infer(f)
            assert set(out) == {"y", "emb"}
            np.testing.assert_allclose(out["y"], f["x"] @ W + BIAS, rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(out["emb"], TABLE[f["ids"]])
            assert out["y"].dtype == np.float32 and out["y"].shape == (batch, 4)


def test_outputs_are_caller_owned(mlp_path):
    with OrtRunner(mlp_path) as r:
        f = _feeds(2)
        a = r.infer(f)["y"]
        keep = a.copy()
        r.infer(_feeds(2))
        np.testing.assert_array_equal(a, keep)  # a later run does not overwrite earlier results


def test_specs(mlp_path):
    with OrtRunner(mlp_path) as r:
        assert r.input_specs == [TensorDesc("x", "float32", ("B", 8)), TensorDesc("ids", "int64", ("B", 5))]
        assert r.output_specs == [TensorDesc("y", "float32", ("B", 4)), TensorDesc("emb", "float32", ("B", 5, 3))]


def test_specs_need_activation(mlp_path):
    r = OrtRunner(mlp_path)
    with pytest.raises(MonkeyError, match="not active"):
        _ = r.input_specs
    with pytest.raises(MonkeyError, match="not active"):
        r.infer(_feeds(1))


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda f: {**f, "z": f["x"]}, "unknown input"),
        (lambda f: {"x": f["x"]}, "missing input"),
        (lambda f: {**f, "x": f["x"].astype(np.float64)}, "dtype float64"),
        (lambda f: {**f, "ids": f["ids"].astype(np.int32)}, "dtype int32"),
        (lambda f: {**f, "x": f["x"][None]}, "rank 3"),
        (lambda f: {**f, "x": f["x"][:, :7]}, r"shape \(2, 7\)"),
        (lambda f: {**f, "x": f["x"].tolist()}, "numpy array"),
    ],
)
def test_feed_validation(mlp_path, mutate, pattern):
    with OrtRunner(mlp_path) as r:
        with pytest.raises(MonkeyError, match=pattern) as ei:
            r.infer(mutate(_feeds(2)))
        assert "\n" not in str(ei.value)


def test_non_contiguous_input(mlp_path):
    with OrtRunner(mlp_path) as r:
        f = _feeds(4)
        xt = np.asfortranarray(f["x"])
        out = r.infer({"x": xt, "ids": f["ids"]})
        np.testing.assert_allclose(out["y"], f["x"] @ W + BIAS, rtol=1e-5, atol=1e-5)


def test_missing_providers_raise_backend_unavailable(mlp_path):
    have = available_providers()
    assert "CPUExecutionProvider" in have
    for short, full in (("tensorrt", "TensorrtExecutionProvider"), ("cuda", "CUDAExecutionProvider")):
        if full in have:
            continue
        with pytest.raises(BackendUnavailable) as ei:
            OrtRunner(mlp_path, providers=short)
        msg = str(ei.value)
        assert full in msg and "CPUExecutionProvider" in msg and "\n" not in msg


def test_provider_chain_and_unknown_names():
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    assert resolve_providers(["cpu"]) == ["CPUExecutionProvider"]
    with pytest.raises(MonkeyError, match="unknown execution provider"):
        resolve_providers("rocm")
    with pytest.raises(MonkeyError):
        resolve_providers([])


def test_versions_and_threads():
    assert ort_version() and ort_version()[0].isdigit()
    # an independent count: distinct (physical id, core id) pairs of /proc/cpuinfo among the usable CPUs
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo")
    usable = os.sched_getaffinity(0)
    cores = set()
    for block in cpuinfo.read_text().strip().split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if int(fields["processor"]) in usable:
            cores.add((fields.get("physical id", "?"), fields.get("core id", fields["processor"])))
    assert physical_cores() == len(cores) <= len(usable)


def test_missing_or_bad_model_file(tmp_path):
    with pytest.raises(MonkeyError, match="does not exist"):
        OrtRunner(tmp_path / "nope.onnx").activate()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(MonkeyError, match="cannot load") as ei:
        OrtRunner(bad).activate()
    assert "\n" not in str(ei.value)


def _mlp(f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"y": f["x"] @ W + BIAS, "emb": TABLE[f["ids"]]}


def _check(out: dict[str, np.ndarray], f: dict[str, np.ndarray], names=("y", "emb")) -> None:
    want = _mlp(f)
    assert set(out) == set(names)
    for n in names:
        assert np.isfinite(out[n]).all(), f"{n}: a buffer nobody wrote"
        np.testing.assert_allclose(out[n], want[n], rtol=1e-5, atol=1e-5)


def test_optimized_model_cache(mlp_path, tmp_path):
    cache = tmp_path / "ortcache"
    f = _feeds(3)
    with OrtRunner(mlp_path, optimized_model_cache=cache) as r:
        first = r.infer(f)
    entries = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and (entries[0] / "model.onnx").is_file()
    with OrtRunner(mlp_path, optimized_model_cache=cache) as r:  # second start: loads the cached graph
        second = r.infer(f)
        assert [s.name for s in r.input_specs] == ["x", "ids"]
    np.testing.assert_allclose(second["y"], first["y"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(second["emb"], first["emb"])
    assert len([p for p in cache.iterdir()]) == 1  # no temp folders left behind


def test_optimized_model_cache_is_keyed_by_content(mlp_path, tmp_path):
    """The key is the graph's digest (+ ORT version, providers, machine), not its path, size or mtime:
    the same bytes elsewhere (a copied engine directory, a touched file) reuse the entry; other bytes get their own."""
    cache = tmp_path / "ortcache"
    with OrtRunner(mlp_path, optimized_model_cache=cache, name="mlp"):
        pass
    copy = tmp_path / "elsewhere" / "mlp.onnx"
    copy.parent.mkdir()
    copy.write_bytes(Path(mlp_path).read_bytes())
    os.utime(copy, ns=(1, 1))
    with OrtRunner(copy, optimized_model_cache=cache, name="mlp") as r:
        f = _feeds(2)
        _check(r.infer(f), f)
    assert len(list(cache.iterdir())) == 1
    m = onnx.load(mlp_path)
    m.graph.initializer[1].CopyFrom(numpy_helper.from_array(BIAS + 1, "bias"))
    other = _save(m, tmp_path / "elsewhere" / "mlp2.onnx")
    with OrtRunner(other, optimized_model_cache=cache, name="mlp") as r:
        f = _feeds(2)
        np.testing.assert_allclose(r.infer(f)["y"], f["x"] @ W + BIAS + 1, rtol=1e-5, atol=1e-5)
    assert len(list(cache.iterdir())) == 2
    # a given digest wins over the file's: two runners naming the same digest share an entry
    with OrtRunner(other, optimized_model_cache=tmp_path / "c2", source_digest="abc", name="mlp"):
        pass
    with OrtRunner(mlp_path, optimized_model_cache=tmp_path / "c2", source_digest="abc"):
        pass
    assert len(list((tmp_path / "c2").iterdir())) == 1


# -- static inputs and outputs (runner.py's interface) --------------------------------------
def test_bind_static_handles_are_owned_by_the_caller(mlp_path):
    """bind_static: fixed inputs bound once into a handle; two handles never see each other's values;
    a feed overrides a static value; a handle of another runner, or a released one, is refused."""
    from monkey_trt.engine.runner import StaticInputs

    with OrtRunner(mlp_path, providers="cpu") as r, OrtRunner(mlp_path, name="other") as other:
        f1, f2 = _feeds(2), _feeds(2)
        ids1 = f1["ids"].copy()
        h1 = r.bind_static({"ids": f1["ids"]})
        h2 = r.bind_static({"ids": f2["ids"]})
        assert isinstance(h1, StaticInputs) and h1.shapes() == {"ids": (2, 5)}
        f1["ids"][:] = 0  # the caller reusing its array does not change the bound handle
        for h, ids in ((h1, ids1), (h2, f2["ids"]), (h1, ids1)):
            out = r.infer({"x": f1["x"]}, static=h)
            np.testing.assert_array_equal(out["emb"], TABLE[ids])
            np.testing.assert_allclose(out["y"], f1["x"] @ W + BIAS, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(r.infer({"x": f1["x"], "ids": f2["ids"]}, static=h1)["emb"], TABLE[f2["ids"]])
        with pytest.raises(MonkeyError, match="ids"):
            r.infer({"x": f1["x"]})
        with pytest.raises(MonkeyError, match="bind_static"):
            r.infer({"x": f1["x"]}, static=other.bind_static({"ids": ids1}))
        h2.release()
        with pytest.raises(MonkeyError, match="released"):
            r.infer({"x": f1["x"]}, static=h2)
        with pytest.raises(MonkeyError, match="unknown input"):
            r.bind_static({"nope": ids1})
        with pytest.raises(MonkeyError, match="dtype int32"):
            r.bind_static({"ids": ids1.astype(np.int32)})


def test_outputs_names_what_comes_back(mlp_path):
    with OrtRunner(mlp_path) as r:
        f = _feeds(3)
        _check(r.infer(f, outputs=("emb",)), f, names=("emb",))
        _check(r.infer(f, outputs=["y", "emb"]), f)
        with pytest.raises(MonkeyError, match="unknown output"):
            r.infer(f, outputs=("z",))


def test_runner_reports_providers_device_and_max_batch(mlp_path):
    r = OrtRunner(mlp_path)
    assert r.providers == ("CPUExecutionProvider",) and r.device == "cpu" and r.max_batch is None
    with r:
        assert r.providers == ("CPUExecutionProvider",) and r.device == "cpu"


# -- the GPU paths, on tests/fakes/ort.py (a simulated device around the real CPU math) -------------
@pytest.fixture
def fake_ort(monkeypatch, tmp_path):
    from tests.fakes import ort as fakes

    monkeypatch.setenv("MONKEY_TRT_CACHE", str(tmp_path / "user-cache"))
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "unset")  # recorded, so that the test's own value is undone after it
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE")
    return fakes.install(monkeypatch)


def test_cuda_graph_returns_fresh_outputs_every_call(mlp_path, fake_ort):
    """Issue defect 1: every call after the first returned buffers the graph never wrote (outputs were
    re-bound after the capturing run). Fixed buffers are bound before capture; each call's inputs land in them."""
    with OrtRunner(mlp_path, providers="cuda", cuda_graph=True) as r:
        for _ in range(5):
            f = _feeds(2)
            _check(r.infer(f), f)
        assert fake_ort.stats.captures == 1 and fake_ort.stats.replays == 4
        assert r.device == "cuda" and r.providers[0] == "CUDAExecutionProvider"


def test_cuda_graph_one_capture_per_shape_set_over_a_soak(mlp_path, fake_ort):
    """Issue defect 2: the UNet batch goes 2 -> 1 inside every generation (pass batching) and each change
    rebuilt the session and re-captured. One graph per input-shape set (gpu_graph_id), captured once."""
    results = []
    with OrtRunner(mlp_path, providers="cuda", cuda_graph=True) as r:
        for generation in range(50):
            for batch in (2, 2, 1, 1, 1):
                f = _feeds(batch)
                results.append((f, r.infer(f)))
    s = fake_ort.stats
    assert (s.sessions, s.captures, s.replays) == (1, 2, 50 * 5 - 2)
    for f, out in results:
        _check(out, f)


def test_cuda_graph_without_graph_ids_uses_a_session_per_shape_set(mlp_path, monkeypatch, tmp_path):
    """ORT < 1.18 has no gpu_graph_id (one graph per session): one graph session per shape set, still captured once."""
    from tests.fakes import ort as fakes

    fake = fakes.install(monkeypatch, version="1.17.3")
    with OrtRunner(mlp_path, providers="cuda", cuda_graph=True) as r:
        for _ in range(10):
            for batch in (2, 1):
                f = _feeds(batch)
                _check(r.infer(f), f)
    assert fake.stats.captures == 2 and fake.stats.sessions == 1 + 2


def test_cuda_graph_static_handles_interleave(mlp_path, fake_ort):
    """Issue defect 3 at the runner: in graph mode a handle's values are copied into the graph's fixed buffers
    when the buffer holds another handle's, so interleaved sessions each run with their own inputs."""
    with OrtRunner(mlp_path, providers="cuda", cuda_graph=True) as r:
        fa, fb = _feeds(2), _feeds(2)
        ha, hb = r.bind_static({"ids": fa["ids"]}), r.bind_static({"ids": fb["ids"]})
        for h, f in ((ha, fa), (hb, fb), (hb, fb), (ha, fa), (hb, fb)):
            x = RNG.standard_normal((2, 8)).astype(np.float32)
            _check(r.infer({"x": x}, static=h), {"x": x, "ids": f["ids"]})
    with OrtRunner(mlp_path, providers="cuda") as r:  # no graph: each handle holds its own device copy
        fa, fb = _feeds(2), _feeds(2)
        ha, hb = r.bind_static({"ids": fa["ids"]}), r.bind_static({"ids": fb["ids"]})
        assert set(ha.device) == {"ids"} and ha.device["ids"].data_ptr() != hb.device["ids"].data_ptr()
        before = fake_ort.stats.h2d_bytes
        for h, f in ((ha, fa), (hb, fb), (ha, fa)):
            _check(r.infer({"x": fa["x"]}, static=h), {"x": fa["x"], "ids": f["ids"]})
        assert fake_ort.stats.h2d_bytes - before == 3 * fa["x"].nbytes  # the static ids are not copied again
    assert not ha.device and ha.released  # deactivate released the handles' device copies


@pytest.mark.parametrize("graph", [False, True])
def test_only_requested_outputs_come_to_the_host(mlp_path, fake_ort, graph):
    with OrtRunner(mlp_path, providers="cuda", cuda_graph=graph) as r:
        f = _feeds(4)
        _check(r.infer(f), f)  # first call (capture in graph mode) fetches everything
        before = fake_ort.stats.d2h_bytes
        out = r.infer(f, outputs=("y",))
        _check(out, f, names=("y",))
        assert fake_ort.stats.d2h_bytes - before == out["y"].nbytes  # emb stayed on the device


def _trt_profile(lo=1, opt=2, hi=4):
    return {"x": ((lo, 8), (opt, 8), (hi, 8)), "ids": ((lo, 5), (opt, 5), (hi, 5))}


def test_tensorrt_ep_builds_one_engine_for_the_profile(mlp_path, fake_ort):
    """Issue defect 6: without trt_profile_*_shapes the TensorRT EP rebuilds its engine whenever a shape leaves
    the range it has seen; with the engine directory's profile it builds once and serves every batch in it."""
    from tests.fakes.ort import parse_profile_shapes

    with OrtRunner(mlp_path, providers="tensorrt", trt_profile=_trt_profile()) as r:
        assert r.max_batch == 4 and r.device == "cuda"
        for batch in (1, 2, 3, 4, 2, 1):
            f = _feeds(batch)
            _check(r.infer(f), f)
        with pytest.raises(MonkeyError, match="outside the engine profile"):
            r.infer(_feeds(5))
    s = fake_ort.stats
    assert s.trt_engine_builds == 1 and not s.warnings
    _, providers, opts = s.session_log[-1]
    trt = opts["TensorrtExecutionProvider"]
    assert parse_profile_shapes(trt["trt_profile_min_shapes"]) == {"x": [[1, 8]], "ids": [[1, 5]]}
    assert parse_profile_shapes(trt["trt_profile_opt_shapes"]) == {"x": [[2, 8]], "ids": [[2, 5]]}
    assert parse_profile_shapes(trt["trt_profile_max_shapes"]) == {"x": [[4, 8]], "ids": [[4, 5]]}
    assert trt["trt_fp16_enable"] == "0" and trt["trt_timing_cache_enable"] == "1" and trt["trt_engine_cache_enable"] == "1"
    with OrtRunner(mlp_path, providers="tensorrt") as r:  # what the EP does without a profile
        for batch in (1, 2, 3):
            r.infer(_feeds(batch))
    assert s.trt_engine_builds == 1 + 3


@pytest.mark.parametrize("precision, fp16, want", [("fp32", False, "0"), ("fp32", True, "1"), ("fp16", False, "1")])
def test_tensorrt_ep_precision_options(mlp_path, fake_ort, precision, fp16, want):
    """fp32 graphs: fp16 kernels only when asked (they change the math); fp16 graphs: fp16 kernels allowed (ORT's
    TensorRT EP builds weakly typed networks, so without the flag TensorRT would run the fp16 layers in fp32),
    LayerNorm reductions kept in fp32."""
    with OrtRunner(mlp_path, providers="tensorrt", precision=precision, fp16=fp16, trt_profile=_trt_profile()):
        pass
    trt = fake_ort.stats.session_log[-1][2]["TensorrtExecutionProvider"]
    assert trt["trt_fp16_enable"] == want
    assert trt.get("trt_layer_norm_fp32_fallback", "0") == want


def test_tensorrt_ep_caches_live_in_the_user_cache_keyed_by_digest(mlp_path, fake_ort, tmp_path):
    """Issue defect 5 at the runner: engine + timing caches go to $MONKEY_TRT_CACHE/ort-trt/<key>, written through a
    staging copy; the next start loads the engine; another digest or other options get another folder."""
    model_dir = Path(mlp_path).parent
    before = {p.name for p in model_dir.iterdir()}
    r = OrtRunner(mlp_path, providers="tensorrt", trt_profile=_trt_profile(), source_digest="d1")
    folder = r.trt_cache_folder()
    assert folder.parent == tmp_path / "user-cache" / "ort-trt"
    with r:
        r.infer(_feeds(2))
    names = sorted(p.name for p in folder.iterdir())
    assert any(n.endswith(".engine") for n in names) and any(n.endswith(".profile") for n in names)
    assert any(n.endswith(".timing") for n in names)
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # no staging folder left behind
    assert {p.name for p in model_dir.iterdir()} == before
    s = fake_ort.stats
    with OrtRunner(mlp_path, providers="tensorrt", trt_profile=_trt_profile(), source_digest="d1") as r2:
        _check(r2.infer(f := _feeds(3)), f)
    assert (s.trt_engine_builds, s.trt_engine_loads) == (1, 1)
    other = [OrtRunner(mlp_path, providers="tensorrt", trt_profile=_trt_profile(), source_digest="d2"),
             OrtRunner(mlp_path, providers="tensorrt", trt_profile=_trt_profile(), source_digest="d1", fp16=True),
             OrtRunner(mlp_path, providers="tensorrt", trt_profile=_trt_profile(hi=3), source_digest="d1")]
    assert len({folder, *(o.trt_cache_folder() for o in other)}) == 4


def test_tensorrt_ep_cuda_graph_one_session_per_shape_set(mlp_path, fake_ort):
    """ORT's TensorRT EP keeps one CUDA graph per session (no gpu_graph_id): one graph session per shape set,
    each captured once; they load the engine the first session built."""
    with OrtRunner(mlp_path, providers="tensorrt", trt_profile=_trt_profile(), cuda_graph=True) as r:
        for _ in range(20):
            for batch in (2, 1):
                f = _feeds(batch)
                _check(r.infer(f), f)
        assert r.graphs_captured == 2
    s = fake_ort.stats
    assert s.captures == 2 and s.sessions == 1 + 2 and s.trt_engine_builds == 1 and s.trt_engine_loads == 2


def test_profile_shape_strings_parse_as_ort_parses_them():
    from monkey_trt.engine.ort.providers import shape_text as _shape_text
    from tests.fakes.ort import parse_profile_shapes, validate_profile_shapes

    text = _shape_text({"sample": (1, 4, 8, 8), "ip_scale": (16,)})
    assert text == "sample:1x4x8x8,ip_scale:16"
    assert parse_profile_shapes(text) == {"sample": [[1, 4, 8, 8]], "ip_scale": [[16]]}
    assert parse_profile_shapes("x:1xa") is None and parse_profile_shapes(":1x2") is None
    assert parse_profile_shapes("x:2x3,x:4x3") == {"x": [[2, 3], [4, 3]]}  # a repeated name: a second profile
    assert not validate_profile_shapes({"x": [[1]]}, {"y": [[1]]}, {"x": [[1]]})


# -- the lean runtime on ORT (tiny engine directory: tests/conftest.py) -------------------------------
def _unet_call_inputs(pipe, subject):
    """Two different sets of session inputs (prompt, subject, guidance, masks) and one latent/timestep."""
    from PIL import ImageOps

    from monkey_trt.core.config import Request

    pipe.prepare(Request("a toy", 64, 64))
    mask = np.zeros((64, 64), np.float32)
    mask[:, :32] = 1
    a = (pipe.encode_prompt("a toy on the beach")[0], pipe.encode_subject(subject), pipe.guidance(1.5), [None])
    b = (pipe.encode_prompt("a red car in the jungle")[0], pipe.encode_subject(ImageOps.mirror(subject)), pipe.guidance(3.0), [mask])
    c = (a[0], a[1], a[2], [None, np.zeros((64, 64), np.float32)])  # a batch-2 layout (pass batching)
    lat = np.random.default_rng(5).standard_normal((1, 4, 8, 8)).astype(np.float32)
    return a, b, c, lat


def _session_results(pipe, subject, interleave: bool, want: list | None = None, atol: float = 1e-6) -> list:
    """The calls of `plan` on three UNet sessions: made one at a time (solo), or all open at once and interleaved
    (each call then checked against `want` as it comes)."""
    a, b, c, lat = _unet_call_inputs(pipe, subject)
    t1, t2 = np.array([999.0], np.float32), np.array([999.0, 999.0], np.float32)
    lat2 = np.concatenate([lat, lat])
    plan = [("a", lat, t1, 0.8, True), ("b", lat, t1, 1.0, True), ("c", lat2, t2, 0.8, True), ("a", lat, t1, 0.8, False),
            ("b", lat, t1, 0.5, False), ("c", lat2, t2, 0.8, True), ("a", lat, t1, 0.8, True)]
    out = []
    if interleave:  # all sessions open at once (the last one made has the first call's batch), calls interleaved
        sessions = {k: pipe.unet_session(*v) for k, v in (("c", c), ("a", a), ("b", b))}
        for i, (k, *args) in enumerate(plan):
            out.append((k, sessions[k](*args)))
            if want is not None:
                _assert_same_results(out[-1:], want[i:i + 1], atol=atol)
        return out
    for k, *args in plan:  # one session at a time: each call on a session made just before it
        out.append((k, pipe.unet_session(*{"a": a, "b": b, "c": c}[k])(*args)))
    return out


def _assert_same_results(got: list, want: list, atol=1e-6) -> None:
    for (k, (eps, amap)), (k2, (eps2, amap2)) in zip(got, want):
        assert k == k2
        np.testing.assert_allclose(eps, eps2, rtol=0, atol=atol, err_msg=f"session {k}: noise_pred")
        assert (amap is None) == (amap2 is None)
        if amap is not None:
            np.testing.assert_allclose(amap, amap2, rtol=0, atol=atol, err_msg=f"session {k}: ip_attn_map")


@pytest.fixture(scope="module")
def cpu_pipe(engine_dir):
    from monkey_trt.runtime.pipeline import MonkeyPipeline

    with MonkeyPipeline.from_engine_dir(engine_dir, backend="ort") as pipe:
        yield pipe


def test_unet_sessions_do_not_share_inputs_cpu(cpu_pipe, subject):
    """Issue defect 3: unet_session wrote the runner's shared static inputs, so an earlier session silently ran
    with a later session's text / IP tokens / mask. Interleaved sessions must each equal a solo run."""
    solo = _session_results(cpu_pipe, subject, interleave=False)
    eps = {k: r[0] for k, r in solo}
    assert np.abs(eps["a"] - eps["b"]).max() > 1e-3  # the two sessions really differ
    _session_results(cpu_pipe, subject, interleave=True, want=solo, atol=0)


@pytest.mark.parametrize("providers, graph", [(("cuda",), False), (("cuda",), True), (("tensorrt",), True)])
def test_unet_sessions_do_not_share_inputs_gpu(engine_dir, cpu_pipe, subject, fake_ort, providers, graph):
    """Issue defect 3 on the (simulated) GPU: each session's inputs live in its own device buffers, or are
    copied into the graph's fixed buffers per call from the session's own handle."""
    from monkey_trt.runtime.pipeline import MonkeyPipeline

    solo = _session_results(cpu_pipe, subject, interleave=False)
    with MonkeyPipeline.from_engine_dir(engine_dir, backend="ort", providers=providers, cuda_graph=graph) as pipe:
        _session_results(pipe, subject, interleave=True, want=solo)
        assert pipe.runners["unet"].device == "cuda"
        if graph:
            assert pipe.runners["unet"].graphs_captured == 2  # batch 1 and batch 2


def test_gpu_soak_captures_one_graph_per_shape_set(engine_dir, cpu_pipe, subject, fake_ort):
    """Issue defect 2 end to end: 50 generations with pass batching (UNet batch 2 -> 1 in each) at two sizes:
    as many captures as distinct UNet input shapes, no session rebuilt, results equal to the CPU runtime."""
    from monkey_trt.core.config import Request
    from monkey_trt.runtime.pipeline import MonkeyPipeline

    sizes = [(64, 64), (96, 64)]
    with MonkeyPipeline.from_engine_dir(engine_dir, backend="ort", providers=("cuda",), cuda_graph=True) as pipe:
        assert pipe.batch_passes_default
        unet_shapes = set()
        unet = pipe.runners["unet"]
        real_infer = unet.infer

        def spy(feeds, *args, **kwargs):
            unet_shapes.add(tuple(feeds["sample"].shape))
            return real_infer(feeds, *args, **kwargs)

        unet.infer = spy
        for i in range(50):
            h, w = sizes[i % 2]
            req = Request("a toy on the beach", h, w, seed=i % 3)
            out = pipe(req, subject)
            assert out.batched_steps == 2
            if i in (0, 1, 48, 49):
                want = cpu_pipe(req, subject, batch_passes=True)
                assert np.array_equal(out.mask.mask, want.mask.mask)
                np.testing.assert_allclose(out.image, want.image, rtol=0, atol=1e-5)
        assert len(unet_shapes) == 4 and unet.graphs_captured == 4
    assert fake_ort.stats.captures == 4 and fake_ort.stats.sessions == 5  # one per network (+ the map-only UNet), none rebuilt


def _read_only(root: Path, on: bool) -> None:
    for p in [root, *root.rglob("*")]:
        if p.is_dir():
            p.chmod(0o555 if on else 0o755)
        else:
            p.chmod(0o444 if on else 0o644)


def test_engine_dir_is_never_written(engine_dir, subject, fake_ort, tmp_path):
    """Issue defect 5: the ORT TensorRT EP's engine cache went to <engine dir>/ort-trt-cache. A read-only engine
    directory (chmod does not stop root: every file's listing and mtime is compared) stays untouched; the caches
    land under $MONKEY_TRT_CACHE, one keyed folder per network, with nothing half-written left behind."""
    import shutil

    from monkey_trt.core.config import Request
    from monkey_trt.runtime.pipeline import MonkeyPipeline
    from tests.fakes.ort import engine_dir_snapshot

    root = tmp_path / "engine"
    shutil.copytree(engine_dir, root)
    _read_only(root, True)
    try:
        before = engine_dir_snapshot(root)
        with MonkeyPipeline.from_engine_dir(root, backend="ort", providers=("tensorrt",)) as pipe:
            pipe(Request("a toy", 64, 64, seed=1), subject)
        with MonkeyPipeline.from_engine_dir(root, backend="ort", providers=("tensorrt",), ort_cache=tmp_path / "ortc") as pipe:
            pipe(Request("a toy", 64, 64, seed=1), subject)
        assert engine_dir_snapshot(root) == before
    finally:
        _read_only(root, False)
    cache = tmp_path / "user-cache" / "ort-trt"
    folders = sorted(cache.iterdir())
    assert len(folders) == 5 and all(not f.name.startswith(".") for f in folders)  # + the map-only UNet's; no staging folders left
    for f in folders:
        assert sorted(p.suffix for p in f.iterdir()) == [".engine", ".profile", ".timing"]
    assert fake_ort.stats.trt_engine_builds == 5 and fake_ort.stats.trt_engine_loads == 5  # the second start loaded them


def test_tensorrt_ep_gets_the_engine_profile(engine_dir, subject, fake_ort):
    """Issue defect 6 end to end: every network's TensorRT EP session gets the manifest's profile (min/opt/max per
    input), so sizes and batches inside it build nothing more; fp16 options follow the precision asked for."""
    from monkey_trt.core.config import Request
    from monkey_trt.enginedir.load import load_manifest
    from monkey_trt.runtime.pipeline import MonkeyPipeline

    m = load_manifest(engine_dir)
    with MonkeyPipeline.from_engine_dir(engine_dir, backend="ort", providers=("tensorrt",)) as pipe:
        assert pipe.max_unet_batch == m.profile.batch.max == 2 and pipe.batch_passes_default
        for h, w in ((64, 64), (96, 64), (128, 128), (64, 64)):
            pipe(Request("a toy", h, w, seed=2), subject)
        assert pipe.info()["providers"]["unet"][0] == "TensorrtExecutionProvider"
    s = fake_ort.stats
    assert s.trt_engine_builds == 5 and not s.warnings  # the four networks and the map-only UNet
    logged = {f: o["TensorrtExecutionProvider"] for f, _, o in s.session_log}
    for name, entry in m.networks.items():
        ranges = entry.desc.profile_shapes(m.profile, m.dims, m.max_ip_images)  # the UNets: 1..max_subjects + 1 images
        if name in ("unet", "unet_map"):
            assert ranges["ip_mask"][2][1] == m.max_subjects + 1 == 5 and ranges["ip_mask"][1][1] == 1
        trt = logged[Path(entry.file).name]
        for i, kind in enumerate(("min", "opt", "max")):
            assert trt.get(f"trt_profile_{kind}_shapes") == ",".join(f"{n}:{'x'.join(map(str, r[i]))}" for n, r in ranges.items())
        assert trt["trt_fp16_enable"] == "0"
    s.session_log.clear()
    with MonkeyPipeline.from_engine_dir(engine_dir, backend="ort", providers=("tensorrt",), precision="fp16"):
        pass
    assert all(o["TensorrtExecutionProvider"]["trt_fp16_enable"] == "1" for _, _, o in s.session_log)


class _StubRunner:
    """A runner with no ORT session behind it (the TensorRT backend's kind): only the interface."""

    def __init__(self, device: str, providers: tuple, max_batch):
        self.device, self.providers, self.max_batch = device, providers, max_batch

    def deactivate(self) -> None:
        pass


def test_pipeline_reads_the_runner_interface(engine_dir):
    """Issue defect 9: info() and batch_passes_default read `runner.session.get_providers()`; a runner without an
    ORT session (TensorRT plans, a stub) reported no providers and never batched. They use providers/device/max_batch."""
    from monkey_trt.enginedir.load import load_manifest
    from monkey_trt.enginedir.manifest import TOKENIZER_FILE
    from monkey_trt.enginedir.networks import NETWORKS
    from monkey_trt.runtime.backend import BackendSpec
    from monkey_trt.runtime.pipeline import MonkeyPipeline
    from monkey_trt.runtime.tokenizer import ClipTokenizer

    m = load_manifest(engine_dir)
    tok = ClipTokenizer.from_file(engine_dir / TOKENIZER_FILE)

    def pipe(device, providers, max_batch):
        runners = {n: _StubRunner(device, providers, max_batch) for n in NETWORKS}
        return MonkeyPipeline(engine_dir, m, runners, BackendSpec(backend="ort"), tok)

    gpu = pipe("cuda", ("CUDAExecutionProvider", "CPUExecutionProvider"), None)
    assert gpu.info()["providers"].get("unet") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert gpu.info().get("devices", {}).get("unet") == "cuda"
    assert gpu.batch_passes_default and gpu.max_unet_batch == 64
    plan = pipe("cuda", ("TensorRT",), 1)
    assert plan.max_unet_batch == 1 and not plan.batch_passes_default
    assert pipe("cuda", ("TensorRT",), 2).batch_passes_default
    assert not pipe("cpu", ("CPUExecutionProvider",), None).batch_passes_default


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    from monkey_trt.engine.derived_cache import cache_root, keyed_folder

    monkeypatch.setenv("MONKEY_TRT_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv("MONKEY_TRT_CACHE")
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "monkey-trt"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec: only absolute paths count
    assert cache_root() == Path.home() / ".cache" / "monkey-trt"
    a, b = keyed_folder("k", {"x": 1}, root=tmp_path), keyed_folder("k", {"x": 2}, root=tmp_path)
    assert a.parent == b.parent == tmp_path / "k" and a != b and a == keyed_folder("k", {"x": 1}, root=tmp_path)


def test_staged_folder_publishes_only_whole_new_files(tmp_path):
    """A library writing into the stage (plain ofstreams) never exposes a half-written file: new or changed files
    are copied next to the target and renamed over it; untouched copies are not republished; a failed run
    publishes nothing; a dead process's staging folder is removed by the next one."""
    from monkey_trt.core.output_folders import staging_owner, staging_prefix
    from monkey_trt.engine.derived_cache import StagedFolder

    final = tmp_path / "cache" / "key"
    with StagedFolder(final) as st:
        (st.path / "a.engine").write_bytes(b"A" * 100)
        assert not final.exists()  # nothing visible before the commit
    assert (final / "a.engine").read_bytes() == b"A" * 100
    mtime = (final / "a.engine").stat().st_mtime_ns
    with StagedFolder(final) as st:
        assert (st.path / "a.engine").read_bytes() == b"A" * 100  # seeded with the committed files
        (st.path / "b.timing").write_bytes(b"T")
        assert st.commit() == ["b.timing"]
    assert (final / "a.engine").stat().st_mtime_ns == mtime and (final / "b.timing").read_bytes() == b"T"
    with pytest.raises(RuntimeError):
        with StagedFolder(final) as st:
            (st.path / "c.engine").write_bytes(b"half")
            raise RuntimeError("the build failed")
    assert not (final / "c.engine").exists()
    lookalike = final.parent / f"{staging_prefix(final)}{staging_owner(999999999)}-abc"  # a name, no marker: kept
    lookalike.mkdir()
    code = ("import os, sys; from pathlib import Path; from monkey_trt.core.output_folders import make_staging;"
            "make_staging(Path(sys.argv[1])); os._exit(9)")  # a run killed mid-way: its marker proves it ours
    subprocess.run([sys.executable, "-c", code, str(final)], check=False, timeout=120,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert len(list(final.parent.iterdir())) == 3
    with StagedFolder(final):
        pass
    assert sorted(p.name for p in final.parent.iterdir()) == sorted(["key", lookalike.name])


# -- issue 22: the UNet's IP-image axis (ip_tokens [B, N*T, D], ip_mask [B, N, H, W]) in CUDA-graph and io-binding keys --
@pytest.mark.parametrize("providers, graph", [("cuda", True), ("cuda", False), ("tensorrt", True)])
def test_ip_image_axis_gets_a_graph_per_count(tmp_path, fake_ort, providers, graph):
    """N = 1, 2, 3 IP images alternating: one captured graph per (B, N) input-shape set, each call's outputs right
    (a graph captured for N = 1 never replays an N = 2 call)."""
    import onnxruntime as real_ort

    from tests.test_engine_trt import _ip_axis_onnx, _ip_feeds

    path = _ip_axis_onnx(tmp_path / "ip_axis.onnx")
    want = real_ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    order = [(1, 1), (1, 2), (1, 1), (1, 2), (2, 2), (1, 3), (1, 2), (2, 2)]
    with OrtRunner(path, providers=providers, cuda_graph=graph) as r:
        for batch, n in order:
            f = _ip_feeds(batch, n)
            got = r.infer(f)
            y, m = want.run(["y", "m"], f)
            assert got["m"].shape == (batch, 4 * n, 2)
            np.testing.assert_allclose(got["y"], y, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(got["m"], m, rtol=1e-6, atol=1e-6)
        handle = r.bind_static({"tokens": _ip_feeds(1, 2)["tokens"]})  # a session's two images' tokens, bound once
        f = {"mask": _ip_feeds(1, 2)["mask"]}
        np.testing.assert_allclose(r.infer(f, static=handle)["y"], want.run(["y"], {**handle.host, **f})[0], rtol=1e-5, atol=1e-5)
        if graph and providers == "cuda":
            assert r.graphs_captured == 4  # (1,1) (1,2) (2,2) (1,3)
    if graph and providers == "cuda":
        assert fake_ort.stats.captures == 4
