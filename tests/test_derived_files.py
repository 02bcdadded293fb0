"""Issue 25, class 2: derived files (ORT's optimised-graph cache, the calibration cache) are verified against the
sha256 recorded when they were written, used only when the current user's, replaced when wrong; leftovers of a
killed cache write are cleaned by their marker, never by a name pattern."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from monkey_trt.engine.derived_record import check_record
from monkey_trt.engine.ort import OrtRunner
from monkey_trt.engine.ort.runner import ORT_CACHE_KIND, ORT_CACHE_RECORD

W = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
B = np.array([1, 2, 3, 4], dtype=np.float32)


@pytest.fixture
def affine(tmp_path) -> Path:
    """y = x @ W + b (x [N,3] -> y [N,4])."""
    node = helper.make_node("Gemm", ["x", "W", "b"], ["y"])
    g = helper.make_graph([node], "affine", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                          [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    p = tmp_path / "affine.onnx"
    onnx.save(m, str(p))
    return p


X = np.ones((2, 3), dtype=np.float32)  # [N=2, 3]


def _run(model: Path, cache: Path) -> np.ndarray:
    with OrtRunner(model, optimized_model_cache=cache, providers="cpu", name="affine") as r:
        return r.infer({"x": X})["y"]


def _entry(cache: Path) -> Path:
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    return entry


def test_tampered_cached_graph_is_replaced_not_run(affine, tmp_path):
    """Before: a cached model.onnx altered on disk ran (exit 0, wrong numbers)."""
    cache = tmp_path / "cache"
    want = X @ W + B
    np.testing.assert_allclose(_run(affine, cache), want, rtol=1e-6)
    entry = _entry(cache)
    assert check_record(entry / ORT_CACHE_RECORD, ORT_CACHE_KIND, json.loads((entry / ORT_CACHE_RECORD).read_text())["source"]) == "ok"
    m = onnx.load(str(entry / "model.onnx"))
    for t in m.graph.initializer:
        if t.name == "b":
            t.CopyFrom(numpy_helper.from_array(B + 100, "b"))
    onnx.save(m, str(entry / "model.onnx"))  # a valid graph with other numbers
    np.testing.assert_allclose(_run(affine, cache), want, rtol=1e-6)  # re-derived, not the tampered one
    np.testing.assert_allclose(_run(affine, cache), want, rtol=1e-6)  # and the replacement is trusted again
    assert _entry(cache) == entry and (entry / ORT_CACHE_RECORD).is_file()


def test_a_cache_entry_without_our_record_is_neither_used_nor_deleted(affine, tmp_path):
    cache = tmp_path / "cache"
    _run(affine, cache)
    entry = _entry(cache)
    (entry / ORT_CACHE_RECORD).unlink()  # what an older release (or someone else) left: not provably ours
    m = onnx.load(str(entry / "model.onnx"))
    for t in m.graph.initializer:
        if t.name == "b":
            t.CopyFrom(numpy_helper.from_array(B + 100, "b"))
    onnx.save(m, str(entry / "model.onnx"))
    before = sorted(p.name for p in entry.iterdir())
    np.testing.assert_allclose(_run(affine, cache), X @ W + B, rtol=1e-6)
    assert sorted(p.name for p in entry.iterdir()) == before  # left alone


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to give a file to another user")
def test_a_cache_entry_of_another_user_is_not_used(affine, tmp_path):
    cache = tmp_path / "cache"
    _run(affine, cache)
    entry = _entry(cache)
    for p in (entry, *entry.iterdir()):
        os.chown(p, 4321, 4321)
    m = onnx.load(str(entry / "model.onnx"))  # its owner could have written anything
    for t in m.graph.initializer:
        if t.name == "b":
            t.CopyFrom(numpy_helper.from_array(B + 100, "b"))
    onnx.save(m, str(entry / "model.onnx"))
    os.chown(entry / "model.onnx", 4321, 4321)
    rec = entry / ORT_CACHE_RECORD
    raw = json.loads(rec.read_text())
    raw["files"]["model.onnx"] = __import__("hashlib").sha256((entry / "model.onnx").read_bytes()).hexdigest()
    rec.write_text(json.dumps(raw))  # a record that matches: still not ours
    os.chown(rec, 4321, 4321)
    np.testing.assert_allclose(_run(affine, cache), X @ W + B, rtol=1e-6)
    assert (entry / "model.onnx").stat().st_uid == 4321  # not touched


def test_a_killed_cache_write_is_cleaned_by_its_marker_only(affine, tmp_path):
    """A process killed (-9) while writing the cache leaves its staging folder; the next start removes it (its
    marker proves it ours, its process gone). A look-alike folder without a marker stays."""
    cache = tmp_path / "cache"
    _run(affine, cache)
    entry = _entry(cache)
    for p in list(entry.iterdir()):
        p.unlink()
    entry.rmdir()
    code = ("import os, sys; from monkey_trt.core.output_folders import make_staging; "
            "p = make_staging(sys.argv[1]); (p / 'model.onnx').write_bytes(b'half'); print(p, flush=True); os.kill(os.getpid(), 9)")
    p = subprocess.run([sys.executable, "-c", code, str(entry)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert p.returncode == -signal.SIGKILL
    left = Path(p.stdout.strip()).parent
    assert left.is_dir()
    lookalike = cache / f".{entry.name}.monkey-staging-1@host-0123456789abcdef"
    lookalike.mkdir()
    np.testing.assert_allclose(_run(affine, cache), X @ W + B, rtol=1e-6)
    assert not left.exists() and lookalike.is_dir()


# -- the calibration cache ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def calib(engine_dir):
    """(manifest, spec, one recording) on the session's tiny engine directory."""
    from monkey_trt.enginedir.load import load_manifest
    from monkey_trt.export.calibration import CalibrationSpec, collect

    m = load_manifest(engine_dir, verify="size")
    spec = CalibrationSpec.build(size=1, height=64, width=64)
    return m, spec, collect(engine_dir, spec)


def _npz(folder: Path) -> Path:
    (p,) = folder.glob("calib-*.npz")
    return p


def test_altered_calibration_arrays_are_recorded_again(engine_dir, calib, tmp_path):
    """Before: an npz whose arrays were changed (a valid file) was reused as it was."""
    from monkey_trt.export.calibration import CalibrationData, load_or_collect

    m, spec, want = calib
    load_or_collect(engine_dir, m, spec, cache=tmp_path)
    p = _npz(tmp_path)
    d = CalibrationData.load(p)
    d.arrays["sample"] = d.arrays["sample"] * 0 + 7
    d.save(p)
    got, reused = load_or_collect(engine_dir, m, spec, cache=tmp_path)
    assert not reused and got.digest == want.digest
    again, reused = load_or_collect(engine_dir, m, spec, cache=tmp_path)  # replaced: trusted again
    assert reused and again.digest == want.digest


def test_a_damaged_calibration_entry_is_replaced_not_an_error(engine_dir, calib, tmp_path):
    """Before: a truncated npz failed every later export (zipfile.BadZipFile: exit 1)."""
    from monkey_trt.export.calibration import load_or_collect

    m, spec, want = calib
    load_or_collect(engine_dir, m, spec, cache=tmp_path)
    p = _npz(tmp_path)
    p.write_bytes(p.read_bytes()[:100])
    got, reused = load_or_collect(engine_dir, m, spec, cache=tmp_path)
    assert not reused and got.digest == want.digest
    assert load_or_collect(engine_dir, m, spec, cache=tmp_path)[1]


def test_a_calibration_entry_without_our_record_is_neither_used_nor_overwritten(engine_dir, calib, tmp_path):
    from monkey_trt.export.calibration import load_or_collect

    m, spec, want = calib
    load_or_collect(engine_dir, m, spec, cache=tmp_path)
    p = _npz(tmp_path)
    p.with_suffix(".json").unlink()
    p.write_bytes(b"someone's file")
    got, reused = load_or_collect(engine_dir, m, spec, cache=tmp_path)
    assert not reused and got.digest == want.digest and p.read_bytes() == b"someone's file"


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to give a folder to another user")
def test_a_calibration_cache_folder_of_another_user_is_not_used(engine_dir, calib, tmp_path):
    """Before: an entry in a folder another user owns (who could have written any arrays) was reused."""
    from monkey_trt.export.calibration import load_or_collect

    m, spec, want = calib
    folder = tmp_path / "theirs"
    load_or_collect(engine_dir, m, spec, cache=folder)
    for p in (folder, *folder.iterdir()):
        os.chown(p, 4321, 4321)
    got, reused = load_or_collect(engine_dir, m, spec, cache=folder)
    assert not reused and got.digest == want.digest


def test_calibration_cache_follows_monkey_trt_cache(monkeypatch, tmp_path):
    from monkey_trt.export.calibration import cache_dir

    monkeypatch.delenv("MONKEY_TRT_CALIB_CACHE", raising=False)
    monkeypatch.setenv("MONKEY_TRT_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" / "calibration"


def test_the_quantizers_temp_folders_stay_inside_our_scratch_folder(tmp_path, monkeypatch):
    """Before: onnxruntime.quantization made `ort.quant.*` in the system temp folder, left there by a killed
    quantization (nothing of ours could prove them ours). Now they live under the output's own scratch folder."""
    import tempfile

    from monkey_trt.export.quantize import QuantSettings, quantize_model_file
    from tests.test_int8 import _small_model

    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    made = []
    real = tempfile.TemporaryDirectory

    def spy(*a, **k):
        d = real(*a, **k)
        made.append(Path(d.name))
        return d

    monkeypatch.setattr(tempfile, "TemporaryDirectory", spy)
    out = tmp_path / "out"
    out.mkdir()
    feeds = _small_model(tmp_path / "m.onnx")
    quantize_model_file(tmp_path / "m.onnx", out / "q.onnx", feeds, QuantSettings("int8", reduce_range=False), external=False)
    # every temp folder made (ours; ORT's `ort.quant.*` where it makes one: since the calibration runs on its own
    # and quantize_static reads its ranges from a cache file, it makes none) is inside the output's scratch folder
    assert made and all(out in d.parents for d in made), made
    assert list(system_tmp.iterdir()) == [] and tempfile.tempdir == str(system_tmp)


def test_a_killed_calibration_cache_write_is_cleaned_by_its_marker(engine_dir, calib, tmp_path):
    """A write killed (-9) midway leaves its staging folder with a temp file; the next save removes it by its
    marker. A look-alike temp file of nobody's stays."""
    from monkey_trt.export.calibration import load_or_collect

    m, spec, want = calib
    load_or_collect(engine_dir, m, spec, cache=tmp_path)
    p = _npz(tmp_path)
    code = ("import os, sys; from monkey_trt.core.output_folders import make_staging; "
            "s = make_staging(sys.argv[1]); (s / '.x.npz.tmp').write_bytes(b'half'); print(s, flush=True); os.kill(os.getpid(), 9)")
    r = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    left = Path(r.stdout.strip()).parent
    assert r.returncode == -signal.SIGKILL and left.is_dir()
    lookalike = tmp_path / f".{p.name}.abc.tmp"
    lookalike.write_bytes(b"not ours")
    p.write_bytes(b"damaged")  # so the next run records again and writes
    got, reused = load_or_collect(engine_dir, m, spec, cache=tmp_path)
    assert not reused and got.digest == want.digest
    assert not left.exists() and lookalike.read_bytes() == b"not ours"
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted([p.name, p.with_suffix(".json").name, lookalike.name])
