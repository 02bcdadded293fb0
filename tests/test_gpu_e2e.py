"""GPU backends end to end against the PyTorch reference (skipped where no GPU / TensorRT / ORT-GPU).

docs/method.md ("What every engine keeps identical"): fp32 — the mask identical, images near bit-exact; fp16 graphs — mask IoU >= 0.98, PSNR >= 35 dB
(the thresholds export/fidelity.py asserts for the fp16 graphs on CPU).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from monkey_trt.cli import main
from monkey_trt.core.config import Request
from monkey_trt.engine.compare import mask_iou, psnr
from monkey_trt.export.fidelity import MIN_MASK_IOU, MIN_PSNR_DB
from monkey_trt.reference.pipeline import torch_noise_plan
from monkey_trt.runtime.pipeline import MonkeyPipeline

FP32_ATOL = 2e-3

CASES = [("a toy on the beach", 0, 128, 128), ("a toy in the jungle", 1, 128, 192), ("a toy in the snow", 2, 192, 128)]


def _trt_ready() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    try:
        from monkey_trt.engine.trt.cuda import require_cuda_device

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
                 "--out", str(out), "--height", "128", "--width", "128", "--min", "64x64", "--max", "256x256",
                 "--precision", "fp32,fp16"]) == 0
    return out


def _compare(reference, pipe, subject, fp16: bool):
    for prompt, seed, h, w in CASES:
        req = Request(prompt, h, w, seed=seed)
        noise = torch_noise_plan(seed, req.latent_shape(reference.dims), req.config.noise_steps)
        want, got = reference(req, subject, noise=noise), pipe(req, subject, noise=noise)
        if fp16:
            assert mask_iou(got.mask.mask, want.mask.mask) >= MIN_MASK_IOU, f"mask IoU for {prompt!r} seed {seed} {h}x{w}"
            assert psnr(got.image, want.image) >= MIN_PSNR_DB
        else:
            assert np.array_equal(got.mask.mask, want.mask.mask), f"mask differs for {prompt!r} seed {seed} {h}x{w}"
            assert np.abs(got.image - want.image).max() <= FP32_ATOL


@pytest.mark.skipif(not _trt_ready(), reason="needs TensorRT, cuda-python and a visible NVIDIA GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_tensorrt_matches_reference(engine_dir, reference, subject, precision, cuda_graph):
    assert main(["build", "--engine-dir", str(engine_dir), "--precision", precision]) == 0  # once per precision (cached key)
    with MonkeyPipeline.from_engine_dir(engine_dir, backend="trt", cuda_graph=cuda_graph, precision=precision) as pipe:
        _compare(reference, pipe, subject, precision == "fp16")


@pytest.mark.skipif(not _trt_ready(), reason="needs TensorRT, cuda-python and a visible NVIDIA GPU")
def test_tensorrt_plans_of_both_precisions_live_side_by_side(engine_dir, reference, subject):
    for precision in ("fp16", "fp32", "fp16"):  # the most recent build must not decide
        assert main(["build", "--engine-dir", str(engine_dir), "--precision", precision]) == 0
    with MonkeyPipeline.from_engine_dir(engine_dir, backend="trt", precision="fp32") as pipe:
        _compare(reference, pipe, subject, fp16=False)


@pytest.mark.skipif(not _ort_cuda_ready(), reason="needs onnxruntime-gpu and a visible NVIDIA GPU")
@pytest.mark.parametrize("cuda_graph", [False, True])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_ort_cuda_matches_reference(engine_dir, reference, subject, cuda_graph, precision):
    with MonkeyPipeline.from_engine_dir(engine_dir, backend="ort", providers=("cuda",), cuda_graph=cuda_graph,
                                        precision=precision) as pipe:
        _compare(reference, pipe, subject, fp16=precision == "fp16")
