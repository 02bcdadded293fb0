"""Issue 25, class 8: options that conflict are refused in one line (exit 2), never silently ignored: --seed with
--noise, --cuda-graph where ORT would run on the CPU, mask_pass='same' on a precision with one UNet graph.
(--calib-size on a directory that has the precision already: tests/test_int8.py, beside its 8-bit directory.)"""

from __future__ import annotations

import numpy as np
import pytest

from monkey_trt.cli import main
from monkey_trt.core.errors import MonkeyError
from monkey_trt.runtime.backend import BackendSpec


def _one_line_error(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    return err


def _generate(engine_dir, tiny_model_dir, out, *extra):
    return ["generate", "--engine-dir", str(engine_dir), "--image", str(tiny_model_dir / "subject.png"), "--prompt", "x",
            "--out", str(out), *extra]


def test_seed_with_noise_is_refused(engine_dir, tiny_model_dir, tmp_path, capsys):
    noise = tmp_path / "noise.npz"
    np.savez(noise, latents=np.zeros((1, 4, 8, 8), np.float32), step_noise=np.zeros((7, 1, 4, 8, 8), np.float32))
    err = _one_line_error(capsys, _generate(engine_dir, tiny_model_dir, tmp_path / "o", "--noise", str(noise), "--seed", "0"))
    assert "--seed and --noise" in err and not (tmp_path / "o").exists()


def _no_cuda() -> bool:
    from monkey_trt.engine.ort.providers import default_provider

    return default_provider() == "cpu"


@pytest.mark.skipif(not _no_cuda(), reason="this onnxruntime has CUDA: --cuda-graph is valid by default here")
def test_cuda_graph_where_ort_runs_on_the_cpu_is_refused(engine_dir, tiny_model_dir, tmp_path, capsys):
    from monkey_trt.runtime.pipeline import MonkeyPipeline

    err = _one_line_error(capsys, _generate(engine_dir, tiny_model_dir, tmp_path / "o", "--cuda-graph"))
    assert "--cuda-graph needs a GPU execution provider" in err and not (tmp_path / "o").exists()
    with pytest.raises(MonkeyError, match="--cuda-graph needs a GPU"):
        MonkeyPipeline.from_engine_dir(engine_dir, backend="ort", cuda_graph=True)
    with pytest.raises(MonkeyError, match="--cuda-graph needs a GPU"):  # named CPU provider: the spec refuses it
        BackendSpec("ort", providers=("cpu",), cuda_graph=True)


@pytest.mark.parametrize("backend, precision", [("ort", "fp32"), ("ort", "fp16"), ("trt", "fp16"), ("openvino", "fp32")])
def test_mask_pass_same_needs_a_reduced_precision(backend, precision):
    with pytest.raises(MonkeyError, match="mask_pass='same' applies to the reduced precisions"):
        BackendSpec(backend, precision=precision, mask_pass="same")
    BackendSpec(backend, precision=precision, mask_pass="exact")
    BackendSpec(backend, precision="bf16" if backend == "openvino" else "int8", mask_pass="same")
