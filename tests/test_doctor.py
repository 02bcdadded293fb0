"""`doctor_report()` runs anywhere and describes this machine."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from monkey_trt.commands.doctor import CheckRow, doctor_report


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

    code = ("import sys; from monkey_trt.commands.doctor import doctor_report; doctor_report(); "
            "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; print(heavy); sys.exit(bool(heavy))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("dist", "version", "inside"),
    [("tensorrt", "10.0.1", True), ("tensorrt", "10.16.1.11", True), ("tensorrt", "11.4.0.106", True),
     ("tensorrt", "9.3.0", False), ("tensorrt", "12.0.0", False), ("cuda-python", "12.9.4", True),
     ("cuda-python", "13.4.4", True), ("cuda-python", "12.4.0", False), ("cuda-python", "14.0", False),
     ("polygraphy", "0.53.6", True), ("polygraphy", "0.48.1", False), ("polygraphy", "0.49.26", False), ("onnxruntime-gpu", "1.32.0", True)],
)
def test_supported_ranges(dist, version, inside):
    from monkey_trt.commands.doctor import supported_range

    assert supported_range(dist, version)[0] is inside


def test_gpu_extra_pins_the_same_ranges():
    """pyproject's `gpu` extra and engine/trt/api_names.SUPPORTED (what doctor checks) agree."""
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    from monkey_trt.engine.trt.api_names import SUPPORTED

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
    assert rows["polygraphy"].ok is True and "supported >=0.53.6,<1" in rows["polygraphy"].detail


def test_doctor_reports_every_extra():
    """Issue 16: one row per pyproject extra, naming what is missing and the pip line to install it."""
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    declared = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    rows = _rows()
    for extra in declared:
        row = rows.get(f"extra {extra}")
        assert row is not None, f"doctor has no row for the {extra} extra"
        assert row.ok is True or (row.ok is None and f"pip install 'monkey-trt[{extra}]'" in row.detail), row


def test_doctor_extra_row_names_the_missing_modules(monkeypatch):
    import monkey_trt.core.extras as extras

    monkeypatch.setitem(extras.EXTRAS, "serve", ("fastapi", "no_such_module_xyz"))
    row = _rows()["extra serve"]
    assert row.ok is None and "no_such_module_xyz" in row.detail and "monkey-trt[serve]" in row.detail


def test_serve_without_its_extra_names_it_in_one_line(tmp_path, capsys, monkeypatch):
    """`serve` without fastapi/prometheus_client: one line naming the extra, exit 2 (not an internal error)."""
    import monkey_trt.core.extras as extras
    from monkey_trt.cli import main

    monkeypatch.setitem(extras.EXTRAS, "serve", ("fastapi", "no_such_module_xyz"))
    code = main(["serve", "--engine-dir", str(tmp_path / "none")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: serve needs the serve extra") and "pip install 'monkey-trt[serve]'" in err


def test_serve_modules_missing_for_real_is_one_line(tmp_path):
    """In a fresh process where prometheus_client cannot be imported (as without the extra)."""
    import subprocess

    code = ("import sys; sys.modules['prometheus_client'] = None; import importlib.util as u; real = u.find_spec; "
            "u.find_spec = lambda n, *a: None if n == 'prometheus_client' else real(n, *a); "
            "from monkey_trt.cli import main; sys.exit(main(['serve', '--engine-dir', sys.argv[1]]))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "none")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: serve needs the serve extra (prometheus_client not installed): "
                                                "pip install 'monkey-trt[serve]'"]


@pytest.mark.parametrize("trt, pg, ok", [("11.4.0.106", "0.49.26", False), ("11.0.0.114", "0.53.6", True),
                                         ("10.16.1.11", "0.49.26", True), (None, "0.53.6", None)])
def test_doctor_checks_the_tensorrt_polygraphy_pair(trt, pg, ok):
    from monkey_trt.commands.doctor import polygraphy_pair_row

    row = polygraphy_pair_row(trt, pg)
    if ok is None:
        assert row is None
        return
    assert row.ok is ok
    if not ok:
        assert "precision_is_set" in row.detail and "pip install 'polygraphy>=0.53.6'" in row.detail and "\n" not in row.detail
