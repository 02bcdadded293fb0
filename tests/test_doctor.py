"""`doctor_report()` runs anywhere and describes this machine."""

from __future__ import annotations

import importlib.util
import sys

import pytest

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
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed on this machine")
    rows = _rows()
    assert rows["tensorrt"].ok is None and "not installed" in rows["tensorrt"].detail
    assert "tensorrt" not in rows["backends"].detail.split(", ")


def test_doctor_does_not_import_heavy_packages():
    """In a fresh process (the test session has torch loaded already)."""
    import subprocess

    code = ("import sys; from monkey_trt.doctor import doctor_report; doctor_report(); "
            "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; print(heavy); sys.exit(bool(heavy))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
