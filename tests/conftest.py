"""Shared fixtures: the embedded tiny model is written once per test session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if "MONKEY_TRT_CACHE" not in os.environ:  # the session's own user cache (remembered digests, ORT's graphs): never yours
    _cache = tempfile.mkdtemp(prefix="monkey-trt-test-cache-")
    os.environ["MONKEY_TRT_CACHE"] = _cache
    atexit.register(shutil.rmtree, _cache, True)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """OUT_DIR with `base/` (diffusers LCM pipeline) and `ip-adapter/` (h94/IP-Adapter layout)."""
    from monkey_trt.embedded.tiny import write_tiny_model

    out = tmp_path_factory.mktemp("tiny-model")
    write_tiny_model(out, preset="tiny")
    return out


@pytest.fixture(scope="session")
def subject(tiny_model_dir):
    """The tiny model's demo subject, RGB."""
    from PIL import Image

    return Image.open(tiny_model_dir / "subject.png").convert("RGB")


@pytest.fixture(scope="session")
def reference(tiny_model_dir):
    """The PyTorch reference on the tiny model (tests that change its weights restore them)."""
    from monkey_trt.reference.pipeline import ReferencePipeline

    return ReferencePipeline.from_pretrained(str(tiny_model_dir / "base"), str(tiny_model_dir / "ip-adapter"))


@pytest.fixture(scope="session")
def engine_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model exported once per session through the CLI: 64² opt, 64..128 sides, UNet batch 1..2 (pass batching), fp32 + fp16."""
    from monkey_trt.cli import main

    out = tmp_path_factory.mktemp("engines") / "tiny-engine"
    argv = ["export", "--base", str(tiny_model_dir / "base"), "--ip-adapter", str(tiny_model_dir / "ip-adapter"),
            "--out", str(out), "--height", "64", "--width", "64", "--min", "64x64", "--max", "128x128", "--batch", "2", "--precision", "fp32,fp16"]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def runtime(engine_dir):
    """The lean runtime on ORT (CPU) over `engine_dir`, open for one test module."""
    from monkey_trt.runtime.pipeline import MonkeyPipeline

    with MonkeyPipeline.from_engine_dir(engine_dir, backend="ort") as pipe:
        yield pipe
