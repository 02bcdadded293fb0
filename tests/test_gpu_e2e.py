"""GPU backends end to end against the PyTorch reference (skipped where no GPU / TensorRT / ORT-GPU).

SPEC.md: the mask identical; images fp32 near bit-exact, fp16 above a PSNR floor.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from monkey_trt.cli import main
from monkey_trt.config import Request
from monkey_trt.engine.compare import psnr
from monkey_trt.reference.pipeline import torch_noise_plan
from monkey_trt.runtime.pipeline import MonkeyPipeline

FP32_ATOL = 2e-3
FP16_PSNR_DB = 30.0
CASES = [("a toy on the beach", 0, 128, 128), ("a toy in the jungle", 1, 128, 192), ("a toy in the snow", 2, 192, 128)]


def _trt_ready() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    try:
        from monkey_trt.engine.trt import require_cuda_device

        require_cuda_device()
        return True
    except Exception:
        return False


def _ort_cuda_ready() -> bool:
    from monkey_trt.engine.ort import available_providers

    return "CUDAExecutionProvider" in available_providers()


pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def engine_dir(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-engines") / "tiny"
    assert main(["export", "--base", str(tiny_model_dir / "base"), "--ip-adapter", str(tiny_model_dir / "ip-adapter"),
                 "--out", str(out), "--height", "128", "--width", "128", "--min", "64x64", "--max", "256x256"]) == 0
    return out


def _compare(reference, pipe, subject, fp16: bool):
    for prompt, seed, h, w in CASES:
        req = Request(prompt, h, w, seed=seed)
        noise = torch_noise_plan(seed, req.latent_shape, req.config.noise_steps)
        want, got = reference(req, subject, noise=noise), pipe(req, subject, noise=noise)
        assert np.array_equal(got.mask.mask, want.mask.mask), f"mask differs for {prompt!r} seed {seed} {h}x{w}"
        if fp16:
            assert psnr(got.image, want.image) >= FP16_PSNR_DB
        else:
            assert np.abs(got.image - want.image).max() <= FP32_ATOL


@pytest.mark.skipif(not _trt_ready(), reason="needs TensorRT, cuda-python and a visible NVIDIA GPU")
@pytest.mark.parametrize("fp16", [False, True])
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_tensorrt_matches_reference(engine_dir, reference, subject, fp16, cuda_graph):
    assert main(["build", "--engine-dir", str(engine_dir), "--fp16" if fp16 else "--fp32", "--force"]) == 0
    with MonkeyPipeline.from_engine_dir(engine_dir, backend="trt", cuda_graph=cuda_graph) as pipe:
        _compare(reference, pipe, subject, fp16)


@pytest.mark.skipif(not _ort_cuda_ready(), reason="needs onnxruntime-gpu and a visible NVIDIA GPU")
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_ort_cuda_matches_reference(engine_dir, reference, subject, cuda_graph):
    with MonkeyPipeline.from_engine_dir(engine_dir, backend="ort", providers=("cuda",), cuda_graph=cuda_graph) as pipe:
        _compare(reference, pipe, subject, fp16=False)
