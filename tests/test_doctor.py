"""`doctor_report()` runs anywhere and describes this machine."""

from __future__ import annotations

import importlib.util
import sys

from monkey_trt.doctor import CheckRow, doctor_report


def _rows() -> dict[str, CheckRow]:
    rows = doctor_report()
    assert all(isinstance(r, CheckRow) for r in rows)
    names = [r.name for r in rows]
    assert len(names) == len(set(names))
    return {r.name: r for r in rows}


def test_report_covers_everything():
    rows = _rows()
    for name in ("python", "numpy", "onnxruntime", "onnx", "polygraphy", "torch", "diffusers", "transformers",
                 "tensorrt", "cuda-python", "nvidia gpu", "backends"):
        assert name in rows, name
    for r in rows.values():
        assert r.ok in (True, False, None)
        assert isinstance(r.detail, str) and r.detail and "\n" not in r.detail


def test_python_numpy_and_onnxruntime():
    rows = _rows()
    assert rows["python"].ok is True and sys.version.split()[0] in rows["python"].detail
    assert rows["numpy"].ok is True
    assert rows["onnxruntime"].ok is True and "CPUExecutionProvider" in rows["onnxruntime"].detail
    assert rows["backends"].ok is True and "ort-cpu" in rows["backends"].detail.split(", ")


def test_tensorrt_marked_not_installed_here():
    rows = _rows()
    if importlib.util.find_spec("tensorrt") is None:
        assert rows["tensorrt"].ok is None and "not installed" in rows["tensorrt"].detail
        assert "tensorrt" not in rows["backends"].detail.split(", ")


def test_doctor_does_not_import_heavy_packages():
    heavy = {"torch", "diffusers", "transformers"}
    before = heavy & set(sys.modules)
    doctor_report()
    assert heavy & set(sys.modules) == before
