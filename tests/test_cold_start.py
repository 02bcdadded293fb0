"""Issue 21 point 5, a cold start in seconds: ORT's optimised graphs cached by default where it is safe (the CPU
provider), in the user's cache, keyed and verified as before (`ort_cache=False` turns it off), giving the same bits
as a fresh optimisation (fp32, fp16 here; int8 in tests/test_int8.py); the pipeline's optional warm-up.
(Remembered digests: tests/test_remembered_digests.py; bench's fresh-process figures: tests/test_bench.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from monkey_trt.engine.ort.opener import ORT_CACHE_FOLDER, ort_cache_folder
from monkey_trt.runtime.backend import BackendSpec
from monkey_trt.runtime.pipeline import MonkeyPipeline


@pytest.fixture
def user_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MONKEY_TRT_CACHE", str(tmp_path / "user-cache"))
    return tmp_path / "user-cache"


def _entries(cache: Path) -> list[str]:
    folder = cache / ORT_CACHE_FOLDER
    return sorted(p.name.rsplit("-", 1)[0] for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def _generate(engine_dir, subject, **options):
    with MonkeyPipeline.from_engine_dir(engine_dir, backend="ort", providers=("cpu",), threads=1, **options) as pipe:
        out = pipe.generate("a toy on the beach", subject, seed=3)
    return out.image, out.mask.mask


def test_where_the_cache_goes_by_default(user_cache, tmp_path):
    assert ort_cache_folder(None, ("cpu",)) == user_cache / ORT_CACHE_FOLDER  # the CPU provider: on
    assert ort_cache_folder(None, ("cuda", "cpu")) is None  # GPU providers opt in
    assert ort_cache_folder(True, ("cuda", "cpu")) == user_cache / ORT_CACHE_FOLDER
    assert ort_cache_folder(False, ("cpu",)) is None
    assert ort_cache_folder(tmp_path / "mine", ("cpu",)) == tmp_path / "mine"
    assert BackendSpec("ort", ort_cache=False).ort_cache is False and BackendSpec("ort", ort_cache=True).to_dict()["ort_cache"] is True


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_the_cached_graphs_give_the_same_bits(engine_dir, subject, user_cache, precision):
    plain = _generate(engine_dir, subject, precision=precision, ort_cache=False)
    assert _entries(user_cache) == []  # off means off
    first = _generate(engine_dir, subject, precision=precision)  # optimises and writes the cache
    assert _entries(user_cache) == ["image_encoder", "text_encoder", "unet", "unet_map", "vae_decoder"]  # + the map-only UNet
    cached = _generate(engine_dir, subject, precision=precision)  # loads the cached graphs
    for got in (first, cached):
        assert np.array_equal(got[0], plain[0]) and np.array_equal(got[1], plain[1])  # image and mask, bit for bit


def test_warm_up_runs_every_network_once_and_changes_no_bits(engine_dir, subject, user_cache):
    with MonkeyPipeline.from_engine_dir(engine_dir, backend="ort", providers=("cpu",), threads=1) as pipe:
        cold = pipe.generate("a toy on the beach", subject, seed=3)
    with MonkeyPipeline.from_engine_dir(engine_dir, backend="ort", providers=("cpu",), threads=1) as pipe:
        took = pipe.warm_up()
        assert set(took) == {"text_encoder", "image_encoder", "unet (fp32)", "unet_map (fp32)", "vae_decoder"}
        assert min(took.values()) > 0
        assert pipe.runners["unet"] is pipe.unet_runners["fp32"] and pipe._size == (64, 64)
        warm = pipe.generate("a toy on the beach", subject, seed=3)
    assert np.array_equal(warm.image, cold.image) and np.array_equal(warm.mask.mask, cold.mask.mask)


def test_generate_no_ort_cache_turns_it_off(engine_dir, tiny_model_dir, user_cache, tmp_path, capsys):
    from monkey_trt.cli import main

    argv = ["generate", "--engine-dir", str(engine_dir), "--image", str(tiny_model_dir / "subject.png"), "--prompt", "a toy",
            "--threads", "1", "--providers", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "off"), "--no-ort-cache"]) == 0
    assert _entries(user_cache) == []
    assert main([*argv, "--out", str(tmp_path / "on")]) == 0
    assert _entries(user_cache) == ["image_encoder", "text_encoder", "unet", "unet_map", "vae_decoder"]  # + the map-only UNet
    capsys.readouterr()
    assert main([*argv[:-2], "--backend", "torch", "--out", str(tmp_path / "t"), "--no-ort-cache"]) == 2
    assert "--ort-cache applies to --backend ort only" in capsys.readouterr().err


def test_a_failing_cold_start_process_is_one_line(tmp_path):
    from monkey_trt.bench.coldstart import cold_start
    from monkey_trt.core.config import Request
    from monkey_trt.core.errors import MonkeyError

    with pytest.raises(MonkeyError, match=r"^ort: the cold-start process failed: error: engine directory .* does not exist"):
        cold_start(BackendSpec("ort"), str(tmp_path / "none"), None, Request("a toy", 64, 64, 0), None)
