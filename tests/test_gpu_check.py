"""benchmarks/gpu_check.sh in the modes this machine can reach: no GPU (runs doctor, says what it
skipped, exit 3), a dry run on a GPU machine without TensorRT (a stand-in nvidia-smi), and `--cpu`: the whole
logic (reference, rows from one BackendSpec each, comparison, soak, the table) on CPU stand-ins."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash + coreutils")


def _run(tmp_path, *args, path_prefix: Path | None = None, timeout: int = 300, **extra_env: str):
    # the interpreter's own bin folder first: the script's `monkey-trt` is this install's, venv activated or not
    env = {**os.environ, "PYTHON": sys.executable, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}{os.pathsep}{env['PATH']}"
    env.update(extra_env)
    return subprocess.run(["bash", str(SCRIPT), "--work", str(tmp_path / "work"), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def _table(out: str) -> dict[str, list[str]]:
    """The summary table: row name -> its cells (row, result, secs, mask=ref, IoU, PSNR, max|diff|, p50, graphs, GPU, RSS, note...)."""
    lines = out.split("== summary", 1)[1].splitlines()[2:]
    rows = [line.split() for line in lines if line.strip() and not line.startswith(("no ", "dry "))]
    return {p[0]: p for p in rows if len(p) >= 2}


def _summary(out: str) -> dict[str, str]:
    return {name: cells[1] for name, cells in _table(out).items()}


GPU_ROWS = ("trt-fp32", "trt-fp16", "ort-cuda", "ort-trt-ep", "torch-fp16", "trt-int8-fp8")


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="an NVIDIA GPU is visible here")
def test_without_a_gpu_only_doctor_runs(tmp_path):
    proc = _run(tmp_path)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    steps = _summary(proc.stdout)
    assert steps["doctor"] == "ok" and (tmp_path / "work" / "logs" / "doctor.log").is_file()
    assert {steps[s] for s in ("model", "reference", "export", "build-fp32", "build-fp16", *GPU_ROWS)} == {"skipped"}
    assert "trt-fp16      skipped" in proc.stdout and "no NVIDIA GPU visible (nvidia-smi)" in proc.stdout  # names why
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
    assert steps["model"] == steps["reference"] == "planned"
    assert steps["torch-fp16"] == "skipped" and "PyTorch has no CUDA" in proc.stdout  # this torch is a CPU build
    assert steps["build-fp32"] == steps["build-fp16"] == steps["trt-fp16"] == steps["trt-int8-fp8"] == "skipped"  # no TensorRT here
    assert steps["export"] == "skipped" and "nothing runs an engine directory" in proc.stdout
    assert "TensorRT (or cuda-python, or a GPU) is not available" in proc.stdout
    assert "-m monkey_trt.cli tiny-model" in proc.stdout and "--preset sd15" in proc.stdout
    assert "dry run: nothing heavy ran" in proc.stdout
    assert not (tmp_path / "work" / "sd15-model").exists()


@pytest.mark.slow  # ~40 s of subprocesses (torch reference, ORT, soak): the default suite keeps the no-GPU and dry-run paths
def test_cpu_mode_runs_the_rows_compares_soaks_and_ends_with_one_table(tmp_path, tiny_model_dir, engine_dir):
    """The check's logic end to end on CPU stand-ins: the reference, one row per backend from a BackendSpec (ort-cpu,
    torch-cpu), mask identical to the reference, a soak with memory readings, the GPU rows named as skipped."""
    proc = _run(tmp_path, "--cpu", "--model", str(tiny_model_dir), "--engine", str(engine_dir), SOAK="1", timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = _table(proc.stdout)
    assert table["reference"][1] == "ok"
    for row in ("ort-cpu", "torch-cpu"):
        cells = table[row]
        assert cells[1] == "ok" and cells[3] == "yes", cells  # mask identical to the CPU fp32 reference
        assert cells[5] == "inf" or float(cells[5]) > 40, cells  # PSNR dB
        assert "->" in cells[10] and "soak" in " ".join(cells[11:]), cells  # RSS start->end over the soak
    assert {table[r][1] for r in GPU_ROWS} == {"skipped"}
    assert (tmp_path / "work" / "rows" / "ort-cpu.json").is_file()
    import json

    row = json.loads((tmp_path / "work" / "rows" / "ort-cpu.json").read_text())
    assert row["spec"]["backend"] == "ort" and row["spec"]["batch_passes"] is True and row["soak"] == 1


def test_usage_error_exits_2(tmp_path):
    proc = _run(tmp_path, "--bogus")
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown argument --bogus")
