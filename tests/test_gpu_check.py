"""benchmarks/gpu_check.sh in the modes this machine can reach: no GPU (runs doctor, says what it
skipped, exit 3), dry runs on stand-in GPU machines (a stand-in nvidia-smi; with or without a CUDA torch stand-in
and the carried wheel folder: the check never passes by skipping, exit 4), a failed wheel install shown, and
`--cpu`: the whole logic (reference, rows from one BackendSpec each, comparison, soak, the table) on CPU stand-ins."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash + coreutils")


def _run(tmp_path, *args, path_prefix: Path | None = None, timeout: int = 300, **extra_env: str):
    # the interpreter's own bin folder first: the script's `monkey-trt` is this install's, venv activated or not
    env = {**os.environ, "PYTHON": sys.executable, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "WHEELS": ""}  # none: never the checkout's .whl/gpu-box (nothing is installed into this venv)
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}{os.pathsep}{env['PATH']}"
    env.update(extra_env)
    return subprocess.run(["bash", str(SCRIPT), "--work", str(tmp_path / "work"), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def _table(out: str) -> dict[str, list[str]]:
    """The summary table: row name -> its cells (row, result, secs, mask=ref, IoU, PSNR, max|diff|, p50, graphs, GPU, RSS, note...)."""
    lines = out.split("== summary", 1)[1].splitlines()[2:]
    lines = lines[:lines.index("")] if "" in lines else lines  # the per-stage block follows a blank line
    rows = [line.split() for line in lines if line.strip() and not line.startswith(("no ", "dry "))]
    return {p[0]: p for p in rows if len(p) >= 2}


def _summary(out: str) -> dict[str, str]:
    return {name: cells[1] for name, cells in _table(out).items()}


GPU_ROWS = ("trt-fp32", "trt-fp16", "ort-cuda", "ort-trt-ep", "torch-fp32", "torch-fp16", "torch-fp32-graph", "trt-int8-fp8")
WANTED_WHEELS = ("diffusers", "requests", "urllib3", "certifi", "charset_normalizer", "importlib_metadata", "zipp")


def _stand_in_gpu(tmp_path) -> Path:
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "nvidia-smi").write_text('#!/bin/sh\ncase "$*" in *query-gpu*) echo "Stand-in GPU";; *) echo "GPU 0: Stand-in GPU";; esac\n')
    (fake / "nvidia-smi").chmod(0o755)
    return fake


def _cuda_torch_stand_in(tmp_path) -> str:
    """A sitecustomize that makes torch.cuda.is_available() say True once torch is imported (the GPU box's torch)."""
    d = tmp_path / "cuda-torch"
    d.mkdir()
    (d / "sitecustomize.py").write_text(
        "import builtins, sys\n_imp = builtins.__import__\n"
        "def _hook(name, *a, **k):\n    m = _imp(name, *a, **k)\n    t = sys.modules.get('torch')\n"
        "    if t is not None and hasattr(t, 'cuda') and not getattr(t, '_stand_in', False):\n"
        "        t.cuda.is_available = lambda: True\n        t._stand_in = True\n    return m\n"
        "builtins.__import__ = _hook\n")
    return f"{d}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"


def _wheel(folder: Path, name: str, version: str = "1.0", tag: str = "py3-none-any", payload: bytes = b"") -> Path:
    """A minimal valid wheel (PEP 427: dist-info with METADATA, WHEEL, RECORD)."""
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-{tag}.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/__init__.py", payload)
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n")
        z.writestr(f"{info}/RECORD", f"{name}/__init__.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")
    return path


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="an NVIDIA GPU is visible here")
def test_without_a_gpu_only_doctor_runs(tmp_path):
    proc = _run(tmp_path)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    steps = _summary(proc.stdout)
    assert steps["doctor"] == "ok" and (tmp_path / "work" / "logs" / "doctor.log").is_file()
    assert {steps[s] for s in ("model", "reference", "export", "build-fp32", "build-fp16", *GPU_ROWS)} == {"skipped"}
    assert re.search(r"^trt-fp16 +skipped", proc.stdout, re.M) and "no NVIDIA GPU visible (nvidia-smi)" in proc.stdout  # names why
    assert "no NVIDIA GPU stack found" in proc.stdout


def test_a_gpu_where_no_gpu_row_can_run_fails_with_the_reasons(tmp_path):
    """Issue 24: every GPU row skipped is not a pass. A GPU is visible, but this torch has no CUDA and there is no
    TensorRT / ORT GPU: exit 4 naming each row's reason."""
    if shutil.which("nvidia-smi") is not None:
        pytest.skip("a real nvidia-smi is on PATH")
    proc = _run(tmp_path, "--dry-run", path_prefix=_stand_in_gpu(tmp_path))
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: a GPU is visible (Stand-in GPU) but no GPU row would run: trt-fp32: TensorRT")
    assert "torch-fp16: PyTorch has no CUDA" in proc.stderr and proc.stderr.count("\n") == 1
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
    stages = proc.stdout.split("per-stage p50 s", 1)[1].splitlines()
    assert "final_pass" in stages[0] and "decode" in stages[0] and any(line.split()[0] == "torch-cpu" for line in stages[1:] if line.strip())
    assert (tmp_path / "work" / "rows" / "ort-cpu.json").is_file()
    import json

    row = json.loads((tmp_path / "work" / "rows" / "ort-cpu.json").read_text())
    assert row["spec"]["backend"] == "ort" and row["spec"]["batch_passes"] is True and row["soak"] == 1


def test_dry_run_on_the_gpu_box_plans_the_torch_rows_and_checks_the_wheels(tmp_path):
    """The box the project lends: a CUDA torch, no TensorRT / ORT GPU, the carried wheel folder (checked: pure-Python
    wheels, installable, under the carry limit, nothing missing). The torch rows are planned; exit 0."""
    if shutil.which("nvidia-smi") is not None:
        pytest.skip("a real nvidia-smi is on PATH")
    wheels = tmp_path / "wheels"
    for name in WANTED_WHEELS:
        _wheel(wheels, name)
    proc = _run(tmp_path, "--dry-run", path_prefix=_stand_in_gpu(tmp_path), WHEELS=str(wheels),
                PYTHONPATH=_cuda_torch_stand_in(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = _summary(proc.stdout)
    assert steps["wheels"] == "planned" and "7 wheels" in proc.stdout and "of 64 MiB" in proc.stdout
    assert steps["torch-fp32"] == steps["torch-fp16"] == steps["torch-fp32-graph"] == steps["reference"] == "planned"
    assert steps["trt-fp32"] == steps["ort-cuda"] == "skipped"
    assert "--spec {\"backend\": \"torch\", \"device\": \"cuda\", \"precision\": \"fp16\", \"cuda_graph\": true" in proc.stdout


@pytest.mark.parametrize("problem", ["platform wheel", "over the limit", "missing"])
def test_the_wheel_check_refuses_a_bad_folder(tmp_path, problem):
    """benchmarks/gpu_wheels.sh --check (what the dry run calls): pure-Python wheels only, all there, under the limit."""
    wheels = tmp_path / "wheels"
    for name in WANTED_WHEELS[:-1] if problem == "missing" else WANTED_WHEELS:
        _wheel(wheels, name)
    if problem == "platform wheel":
        _wheel(wheels, "rpds_py", tag="cp311-cp311-manylinux_2_17_x86_64")
    env = {**os.environ, "PYTHON": sys.executable, **({"LIMIT_MIB": "0"} if problem == "over the limit" else {})}
    proc = subprocess.run(["bash", str(SCRIPT.with_name("gpu_wheels.sh")), "--out", str(wheels), "--check"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    want = {"platform wheel": "not pure-Python", "over the limit": "over the 0 MiB carry limit", "missing": "missing from"}[problem]
    assert any(line.startswith("error: ") and want in line for line in proc.stdout.splitlines()), proc.stdout
    assert "wheel " in proc.stdout.splitlines()[0]  # it lists what the folder holds


def test_a_failed_wheel_install_is_shown_not_hidden(tmp_path):
    """Not a dry run: a carried wheel pip cannot install is a FAILED step with pip's reason, and the check fails."""
    if shutil.which("nvidia-smi") is not None:
        pytest.skip("a real nvidia-smi is on PATH")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "zz_not_installed-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    proc = _run(tmp_path, path_prefix=_stand_in_gpu(tmp_path), WHEELS=str(wheels), BUDGET="1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    table = _table(proc.stdout)
    assert table["wheels"][1] == "FAILED" and "pip install failed" in " ".join(table["wheels"])
    assert "carried wheels: install FAILED" in proc.stdout
    assert table["doctor"][1] == "FAILED" and "budget is spent" in proc.stdout  # BUDGET=1: nothing heavy started


def test_usage_error_exits_2(tmp_path):
    proc = _run(tmp_path, "--bogus")
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown argument --bogus")
