"""benchmarks/gpu_check.sh in the modes this machine can reach: no GPU (runs doctor, says what it
skipped, exit 3) and a dry run on a GPU machine without TensorRT (a stand-in nvidia-smi)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash + coreutils")


def _run(tmp_path, *args, path_prefix: Path | None = None):
    # the interpreter's own bin folder first: the script's `monkey-trt` is this install's, venv activated or not
    env = {**os.environ, "PYTHON": sys.executable, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}{os.pathsep}{env['PATH']}"
    return subprocess.run(["bash", str(SCRIPT), "--work", str(tmp_path / "work"), *args], capture_output=True, text=True,
                          env=env, timeout=300)


def _summary(out: str) -> dict[str, str]:
    lines = out.split("== summary", 1)[1].splitlines()[2:]
    rows = [line.split() for line in lines if not line.startswith(("bench ", "no ", "dry "))]
    return {p[0]: p[1] for p in rows if len(p) >= 2}


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="an NVIDIA GPU is visible here")
def test_without_a_gpu_only_doctor_runs(tmp_path):
    proc = _run(tmp_path)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    steps = _summary(proc.stdout)
    assert steps["doctor"] == "ok" and (tmp_path / "work" / "logs" / "doctor.log").is_file()
    assert {steps[s] for s in ("gpu-tests", "export-512", "build-fp32", "build-fp16", "bench-fp32", "bench-fp16")} == {"skipped"}
    assert "no NVIDIA GPU stack found" in proc.stdout


def test_dry_run_on_a_gpu_without_tensorrt_plans_the_torch_parts(tmp_path):
    if shutil.which("nvidia-smi") is not None:
        pytest.skip("a real nvidia-smi is on PATH")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text('#!/bin/sh\ncase "$*" in *query-gpu*) echo "Stand-in GPU";; *) echo "GPU 0: Stand-in GPU";; esac\n')
    (fake / "nvidia-smi").chmod(0o755)
    proc = _run(tmp_path, "--dry-run", path_prefix=fake)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = _summary(proc.stdout)
    assert steps["gpu-tests"] == steps["sd15-model"] == steps["export-512"] == "planned"
    assert steps["build-fp32"] == steps["build-fp16"] == "skipped"  # no TensorRT here
    assert "TensorRT (or cuda-python, or a GPU) is not available" in proc.stdout
    assert "--precision fp32,fp16" in proc.stdout and "dry run: nothing heavy ran" in proc.stdout
    assert not (tmp_path / "work" / "sd15-model").exists()


def test_usage_error_exits_2(tmp_path):
    proc = _run(tmp_path, "--bogus")
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown argument --bogus")
