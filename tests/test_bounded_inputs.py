"""Issue 25, class 5: memory and time bounded on input files (prompt files, subject folders, calibration images)."""

from __future__ import annotations

import gc
import os
import pathlib
import tracemalloc
import weakref
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monkey_trt.core.errors import MonkeyError
from monkey_trt.core.prompts import read_prompt_file


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)  # no disk used; reads as NUL bytes
    return path


def test_a_huge_prompt_file_is_refused_before_it_is_read(tmp_path):
    """Before: read whole (a 1 GB --calib-prompts took 5.7 GB, then exit 1; 32 MiB here)."""
    big = _sparse(tmp_path / "prompts.txt", 32 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(MonkeyError, match="larger than 16 MiB"):
            read_prompt_file(big, "--calib-prompts")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_prompt_files_refuse_absurd_lines_and_counts(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("a dog\n" + "x" * 5000 + "\n")
    with pytest.raises(MonkeyError, match="line 2 is 5000 characters"):
        read_prompt_file(p, "--prompts")
    p.write_text("".join(f"prompt {i}\n" for i in range(100_001)))
    with pytest.raises(MonkeyError, match="more than 100000 prompts"):
        read_prompt_file(p, "--prompts")
    p.write_text("# c\n\na dog\na dog\n  a cat \n")
    assert read_prompt_file(p, "--prompts") == ("a dog", "a cat")
    assert os.path.getsize(p) < 16 << 20


def test_the_cli_refuses_a_huge_calib_prompts_file_in_one_line(tiny_model_dir, tmp_path, capsys):
    from monkey_trt.cli import main

    big = _sparse(tmp_path / "prompts.txt", 32 << 20)
    argv = ["export", "--out", str(tmp_path / "e"), "--base", str(tiny_model_dir / "base"), "--ip-adapter",
            str(tiny_model_dir / "ip-adapter"), "--precision", "int8", "--calib-prompts", str(big)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --calib-prompts") and "16 MiB" in err[0]
    assert not (tmp_path / "e").exists()


def test_the_calib_images_check_is_linear(tmp_path, monkeypatch):
    """Before: each entry was looked up in the list of images (40k files: > 500 s before any work)."""
    from monkey_trt.export.calibration import read_images

    n = 3000
    for i in range(n):
        (tmp_path / f"{i:05d}.png").touch()
    (tmp_path / "notes.txt").touch()
    calls = [0]
    real = pathlib.PurePath.__eq__

    def counting(self, other):
        calls[0] += 1
        return real(self, other)

    monkeypatch.setattr(pathlib.PurePath, "__eq__", counting)
    with pytest.raises(MonkeyError, match="mixes images with other entries"):
        read_images(tmp_path)
    assert calls[0] < 10 * n  # quadratic was ~n²/2 = 4.5 million


def test_eval_subjects_are_not_all_kept_decoded(tmp_path):
    """Before: every subject's pixels were held for the whole run (60 large PNGs: 6.6 GB)."""
    from monkey_trt.eval.subjects import DECODED_KEPT, discover_subjects
    from monkey_trt.runtime.images import load_subject

    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"dog{i}.png")
    subjects = discover_subjects(tmp_path)
    assert len(subjects) == 4
    assert not any(isinstance(v, Image.Image) for s in subjects for v in vars(s).values())
    for s in subjects:
        assert np.array_equal(np.asarray(s.image), np.asarray(load_subject(s.path)))
    refs = [weakref.ref(s.image) for s in subjects]
    gc.collect()
    assert sum(r() is not None for r in refs) <= DECODED_KEPT


def test_calibration_holds_one_decoded_subject(engine_dir, tmp_path, monkeypatch):
    """Before: every decoded calibration subject stayed in a dict for the whole recording."""
    from monkey_trt.export.calibration import CalibrationSpec, CalibSubject, collect

    rng = np.random.default_rng(1)
    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"s{i}.png")
    spec = CalibrationSpec.build(images_dir=folder, size=3, height=64, width=64)
    live: list[weakref.ref] = []
    held: list[int] = []
    real = CalibSubject.load

    def load(self):
        gc.collect()
        held.append(sum(r() is not None for r in live))
        im = real(self)
        live.append(weakref.ref(im))
        return im

    monkeypatch.setattr(CalibSubject, "load", load)
    data = collect(engine_dir, spec)
    assert len(held) == 3 and max(held) == 0, held  # the previous subject is let go before the next is decoded
    assert len(data) == 33
