"""The CLI commands end to end: tiny-model, demo (twice: the second run uses the cache), bench, doctor."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from monkey_trt.cli import main


def test_tiny_model_command(tmp_path, capsys):
    assert main(["tiny-model", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "base" / "model_index.json").is_file()
    assert (tmp_path / "m" / "ip-adapter" / "models" / "ip-adapter_sd15.safetensors").is_file()
    assert main(["tiny-model", str(tmp_path / "m2"), "--preset", "sd42"]) == 2


def test_demo_runs_on_ort_and_reuses_its_cache(tmp_path, capsys, tiny_model_dir, engine_dir):
    """The cache seeded from the session's tiny model and export (64..128 covers 64 and 96);
    the first run that writes and exports it is test_demo_first_run (slow)."""
    import shutil

    work, out = tmp_path / "work", tmp_path / "demo"
    shutil.copytree(tiny_model_dir, work / "tiny-model")
    shutil.copytree(engine_dir, work / "tiny-engine")
    assert main(["demo", "--workdir", str(work), "--out", str(out), "--size", "64"]) == 0
    said = capsys.readouterr().out
    assert "demo on ort" in said and str(out) in said
    names = {p.name for p in out.iterdir()}
    assert {"monkey.png", "mask.png", "overlay.png", "ipadapter.png", "grid.png", "result.json"} <= names
    record = json.loads((out / "result.json").read_text())
    assert record["backend"] == "ort" and 0 < record["mask"]["coverage"] < 1
    manifest_mtime = (work / "tiny-engine" / "manifest.json").stat().st_mtime_ns
    assert main(["demo", "--workdir", str(work), "--out", str(out), "--size", "96", "--seed", "1"]) == 0
    assert (work / "tiny-engine" / "manifest.json").stat().st_mtime_ns == manifest_mtime, "the engine is cached"
    assert np.asarray(Image.open(out / "monkey.png")).shape == (96, 96, 3)


@pytest.mark.slow
def test_demo_first_run_writes_the_model_and_exports_once(tmp_path, capsys):
    work, out = tmp_path / "work", tmp_path / "demo"
    assert main(["demo", "--workdir", str(work), "--out", str(out), "--size", "64"]) == 0
    assert "exporting the tiny model" in capsys.readouterr().out  # progress (plain lines off a terminal)
    assert (work / "tiny-model" / "tiny-model.json").is_file() and (work / "tiny-engine" / "manifest.json").is_file()
    assert not [p for p in work.iterdir() if "monkey-staging" in p.name]


def test_demo_torch_backend(tmp_path, capsys, tiny_model_dir):
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "w" / "tiny-model")
    assert main(["demo", "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "d"), "--backend", "torch", "--size", "64"]) == 0
    assert json.loads((tmp_path / "d" / "result.json").read_text())["backend"] == "torch"
    assert not (tmp_path / "w" / "tiny-engine").exists()


def test_doctor_command(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") >= 3}
    assert {"python", "onnxruntime", "tensorrt", "backends"} <= set(rows), out
    assert "ort-cpu" in rows["backends"] and "ok" in rows["onnxruntime"]


@pytest.mark.parametrize("argv", [["--help"], ["generate", "--help"], ["export", "--help"]])
def test_help_exits_zero(argv, capsys):
    assert main(argv) == 0
    assert "Usage" in capsys.readouterr().out
