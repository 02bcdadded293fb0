"""The torch backend in fp16 (the GPU path): mask IoU >= 0.98 and image PSNR >= 35 dB against fp32.

On CPU torch runs these ops in half precision too (slowly), so the numerics are checked on every CI run;
the CUDA (+ CUDA graphs) run of the same check is marked `gpu`.
"""

from __future__ import annotations

import pytest
import torch

from monkey_trt.core.config import Request
from monkey_trt.engine.compare import mask_iou, psnr
from monkey_trt.export.fidelity import MIN_MASK_IOU, MIN_PSNR_DB


def _check(tiny_model_dir, reference, subject, device: str, cuda_graph: bool = False):
    from monkey_trt.reference.pipeline import ReferencePipeline

    half = ReferencePipeline.from_pretrained(str(tiny_model_dir / "base"), str(tiny_model_dir / "ip-adapter"), device=device, dtype=torch.float16)
    if cuda_graph:
        half.enable_cuda_graphs()
    for prompt, seed in (("a toy on the beach", 0), ("a toy in the jungle", 1)):
        req = Request(prompt, 64, 64, seed=seed)
        full, low = reference(req, subject), half(req, subject)
        assert mask_iou(full.mask.mask, low.mask.mask) >= MIN_MASK_IOU
        assert psnr(full.image, low.image) >= MIN_PSNR_DB


def test_fp16_numerics_on_cpu(tiny_model_dir, reference, subject):
    _check(tiny_model_dir, reference, subject, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_fp16_cuda_graphs(tiny_model_dir, reference, subject, cuda_graph):
    _check(tiny_model_dir, reference, subject, "cuda", cuda_graph)
