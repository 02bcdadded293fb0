"""Issue 25, classes 1 and 10: writers of one engine directory take turns; Ctrl-C is a failure.

Real processes and real signals; nothing here depends on timing: each test waits for a line the other
process prints (or for its exit), never for a sleep.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from monkey_trt.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _sigint_default() -> None:
    """In the child: SIGINT as a terminal gives a foreground command, whatever the test runner inherited (a runner
    started as a background job of a script has it ignored, and the child would inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "monkey_trt.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, preexec_fn=_sigint_default)


def _export_argv(tiny_model_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["export", "--out", str(out), "--base", str(tiny_model_dir / "base"), "--ip-adapter", str(tiny_model_dir / "ip-adapter"),
            "--height", "64", "--width", "64", "--min", "64x64", "--max", "128x128", "--batch", "2", *extra]


@pytest.fixture(scope="module")
def fp32_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model exported with fp32 only (the session's engine_dir has fp16 already)."""
    d = tmp_path_factory.mktemp("fp32-only") / "engine"
    assert main(_export_argv(tiny_model_dir, d)) == 0
    return d


# -- class 1: lost updates of an engine directory -----------------------------------------------------
def test_two_writers_adding_precisions_both_land(fp32_dir, tiny_model_dir, tmp_path):
    """This process adds fp16; once it has read the manifest, another process adds int8 to the same directory.
    Before: the other one committed first and this commit dropped its int8 graphs (both reported success)."""
    from monkey_trt.enginedir.load import load_manifest
    from monkey_trt.export.onnx_export import add_precisions

    d = tmp_path / "engine"
    shutil.copytree(fp32_dir, d)
    other: dict = {}

    def progress(msg: str, _done: int, _total: int) -> None:
        if other:
            return
        p = _cli(*_export_argv(tiny_model_dir, d, "--precision", "int8", "--calib-size", "1"),
                 env={"MONKEY_TRT_CALIB_CACHE": str(tmp_path / "calib")})
        other["p"] = p
        for line in p.stdout:  # until it waits for this writer, or ends
            other.setdefault("lines", []).append(line)
            if "waiting for another process" in line:
                other["waited"] = True
                break

    assert add_precisions(d, ("fp16",), progress=progress) == ("fp16",)
    out, err = other["p"].communicate(timeout=600)
    assert other["p"].returncode == 0, err
    assert "added int8" in out
    m = load_manifest(d)  # verifies every recorded file
    assert set(m.precisions) == {"fp32", "fp16", "int8"}  # before: {"fp32", "fp16"}, int8's graphs deleted
    assert (d / "unet.fp16.onnx").is_file() and (d / "unet.int8.onnx").is_file()
    assert other.get("waited"), "".join(other.get("lines", []))  # it said why it paused
    assert not [p.name for p in d.parent.iterdir() if ".monkey-staging-" in p.name]


# -- class 10: Ctrl-C is a failure ----------------------------------------------------------------------
def _interrupt_at(p: subprocess.Popen, marker: str) -> tuple[str, str]:
    """Send a real SIGINT once `p` has printed a line with `marker` (its work goes on for seconds after it)."""
    seen = []
    for line in p.stdout:
        seen.append(line)
        if marker in line:
            p.send_signal(signal.SIGINT)
            break
    out, err = p.communicate(timeout=300)
    return "".join(seen) + out, err


def test_ctrl_c_during_export_exits_130_with_one_line_and_no_staging(tiny_model_dir, tmp_path):
    """Before: exit 0 and nothing printed (typer turned KeyboardInterrupt into a returned 130 that main dropped)."""
    out_dir = tmp_path / "engine"
    p = _cli(*_export_argv(tiny_model_dir, out_dir))
    out, err = _interrupt_at(p, "exporting unet")
    assert p.returncode == 130, (out, err)
    assert err.strip().splitlines() == ["error: interrupted (Ctrl-C)"]
    assert "engine directory:" not in out
    assert sorted(x.name for x in tmp_path.iterdir()) == []  # no engine directory, no staging folder


def test_ctrl_c_during_generate_exits_130_and_writes_nothing(engine_dir, tiny_model_dir, tmp_path):
    out_dir = tmp_path / "gen"
    p = _cli("generate", "--engine-dir", str(engine_dir), "--image", str(tiny_model_dir / "subject.png"), "--prompt", "a toy",
             "--out", str(out_dir), "--height", "128", "--width", "128")
    out, err = _interrupt_at(p, "loading the ort backend")
    assert p.returncode == 130, (out, err)
    assert err.strip().splitlines()[-1] == "error: interrupted (Ctrl-C)"
    assert sorted(x.name for x in tmp_path.iterdir()) == []

