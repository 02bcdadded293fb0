"""`doctor_report()` runs anywhere and describes this machine."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from monkey_trt.jobs.doctor import CheckRow, doctor_report


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

    code = ("import sys; from monkey_trt.jobs.doctor import doctor_report; doctor_report(); "
            "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; print(heavy); sys.exit(bool(heavy))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("dist", "version", "inside"),
    [("tensorrt", "10.0.1", True), ("tensorrt", "10.16.1.11", True), ("tensorrt", "11.4.0.106", True),
     ("tensorrt", "9.3.0", False), ("tensorrt", "12.0.0", False), ("cuda-python", "12.9.4", True),
     ("cuda-python", "13.4.4", True), ("cuda-python", "12.4.0", False), ("cuda-python", "14.0", False),
     ("polygraphy", "0.53.6", True), ("polygraphy", "0.48.1", False), ("onnxruntime-gpu", "1.32.0", True)],
)
def test_supported_ranges(dist, version, inside):
    from monkey_trt.jobs.doctor import supported_range

    assert supported_range(dist, version)[0] is inside


def test_gpu_extra_pins_the_same_ranges():
    """pyproject's `gpu` extra and engine/trt/api.SUPPORTED (what doctor checks) agree."""
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    from monkey_trt.engine.trt.api import SUPPORTED

    extra = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    pins = {}
    for req in extra:
        name, spec = req.split(">", 1)[0].split("<", 1)[0].split("=", 1)[0], req
        pins[name] = spec[len(name):]
    for dist, (lo, hi) in SUPPORTED.items():
        assert pins[dist] == f"{lo},{hi}", dist


def test_installed_polygraphy_row_states_its_range():
    rows = _rows()
    if importlib.util.find_spec("polygraphy") is None:
        pytest.skip("polygraphy not installed")
    assert rows["polygraphy"].ok is True and "supported >=0.49.9,<1" in rows["polygraphy"].detail
