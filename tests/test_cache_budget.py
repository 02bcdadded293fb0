"""The user cache's size bound (engine/cache_budget.py): least recently used entries go, only ours, never one in use."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from monkey_trt.core.errors import MonkeyError
from monkey_trt.core.user_cache import BUDGET_ENV, DEFAULT_BUDGET_GB, cache_budget_bytes
from monkey_trt.engine.cache_budget import ORT_FOLDER, ORT_KIND, RECORD_NAME, enforce_budget, entries, usage
from monkey_trt.engine.derived_record import write_record

HOUR = 3600.0


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("MONKEY_TRT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _entry(root, name: str, size: int, age: float, kind: str = ORT_KIND, folder: str = ORT_FOLDER):
    """An entry as a backend writes it: its file, then our record listing it; last used `age` seconds ago."""
    d = root / folder / name
    d.mkdir(parents=True)
    (d / "model.onnx").write_bytes(b"x" * size)
    write_record(d / RECORD_NAME, kind, f"source-{name}", {"model.onnx": d / "model.onnx"})
    past = time.time() - age
    os.utime(d / RECORD_NAME, (past, past))
    return d


def test_least_recently_used_entries_go_first_until_the_total_fits(root):
    old, mid, new = _entry(root, "old", 1000, 3 * HOUR), _entry(root, "mid", 1000, 2 * HOUR), _entry(root, "new", 1000, HOUR)
    assert [e.folder for e in entries()] == [old, mid, new]  # oldest use first
    assert usage()[1] == 3 and usage()[0] > 3000  # + the records
    removed = enforce_budget(budget=2000)
    assert removed == [old, mid] and not old.exists() and not mid.exists() and (new / "model.onnx").is_file()
    assert enforce_budget(budget=2000) == []  # within the bound now


def test_kept_and_recently_used_entries_stay_even_over_the_bound(root):
    kept, recent = _entry(root, "kept", 1000, 3 * HOUR), _entry(root, "recent", 1000, 10.0)  # used 10 s ago: maybe loading
    assert enforce_budget(keep=(kept,), budget=0) == []
    assert (kept / "model.onnx").is_file() and (recent / "model.onnx").is_file()


def test_only_what_our_record_lists_is_removed(root):
    mine = _entry(root, "mine", 1000, 3 * HOUR)
    (mine / "notes.txt").write_text("the user's own file")  # not in the record: stays, and so does the folder
    foreign = root / ORT_FOLDER / "foreign"
    foreign.mkdir()
    (foreign / "model.onnx").write_bytes(b"y" * 5000)  # no record: not provably ours
    forged = _entry(root, "forged", 1000, 3 * HOUR)
    rec = (forged / RECORD_NAME).read_text().replace('"monkey-trt"', '"someone-else"')
    (forged / RECORD_NAME).write_text(rec)
    os.utime(forged / RECORD_NAME, (time.time() - 3 * HOUR,) * 2)
    assert enforce_budget(budget=0) == [mine]
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert (foreign / "model.onnx").stat().st_size == 5000 and (forged / "model.onnx").is_file()


def test_the_bound_is_one_knob_and_bad_values_are_one_line(monkeypatch):
    monkeypatch.delenv(BUDGET_ENV, raising=False)
    assert cache_budget_bytes() == int(DEFAULT_BUDGET_GB * 1e9)
    monkeypatch.setenv(BUDGET_ENV, "2.5")
    assert cache_budget_bytes() == 2_500_000_000
    for bad in ("-1", "nan", "inf", "lots"):
        monkeypatch.setenv(BUDGET_ENV, bad)
        with pytest.raises(MonkeyError, match=BUDGET_ENV):
            cache_budget_bytes()


def test_ort_sessions_keep_the_cache_within_its_bound(engine_dir, root, monkeypatch):
    """A new optimised graph written by ORT evicts the least recently used entry (real sessions, the CPU provider)."""
    from monkey_trt.core.user_cache import cache_root
    from monkey_trt.engine.ort.runner import OrtRunner

    def open_once(network: str) -> None:
        r = OrtRunner(engine_dir / f"{network}.onnx", name=network, optimized_model_cache=cache_root() / ORT_FOLDER)
        r.activate()
        r.deactivate()

    monkeypatch.setenv(BUDGET_ENV, "0")
    open_once("text_encoder")
    (first,) = entries()
    os.utime(first.folder / RECORD_NAME, (time.time() - HOUR,) * 2)  # used an hour ago
    open_once("text_encoder")  # a hit marks it used now: it survives the next write
    assert entries()[0].last_used > time.time() - 60
    os.utime(first.folder / RECORD_NAME, (time.time() - HOUR,) * 2)
    open_once("vae_decoder")
    assert [e.folder.name.split("-")[0] for e in entries()] == ["vae_decoder"] and not first.folder.exists()


def test_openvino_compiled_models_are_recorded_entries_of_the_bound(engine_dir, root, monkeypatch):
    pytest.importorskip("openvino")
    from monkey_trt.engine.cache_budget import OPENVINO_KIND
    from monkey_trt.engine.openvino import OpenVinoRunner

    latents = np.zeros((1, 4, 8, 8), np.float32)
    with OpenVinoRunner(engine_dir / "vae_decoder.onnx", name="vae_decoder", threads=1) as r:
        r.infer({r.input_specs[0].name: latents})
    (entry,) = entries()
    assert entry.kind == OPENVINO_KIND and (entry.folder / "model.blob").is_file()
    os.utime(entry.folder / RECORD_NAME, (time.time() - HOUR,) * 2)
    assert enforce_budget(budget=0) == [entry.folder] and not entry.folder.exists()


def test_doctor_reports_the_cache_and_its_bound(root, monkeypatch):
    from monkey_trt.commands.doctor import user_cache_row

    _entry(root, "a", 1000, HOUR)
    row = user_cache_row()
    assert row.ok and "1 derived entries" in row.detail and BUDGET_ENV in row.detail
    monkeypatch.setenv(BUDGET_ENV, "lots")
    assert user_cache_row().ok is False


def test_bench_and_demo_workdir_defaults_to_the_user_cache_of_now(tmp_path, monkeypatch):
    """`--workdir` (bench, demo) defaulted to ~/.cache/monkey-trt computed at import: with $MONKEY_TRT_CACHE set, bench
    kept ORT's optimised graphs there, outside the bounded cache (10 GB in one sd15 bench). Now: the user cache."""
    from monkey_trt.bench.measure import BenchSettings
    from monkey_trt.cli.run_commands import default_workdir
    from monkey_trt.engine.cache_budget import in_default_root

    monkeypatch.setenv("MONKEY_TRT_CACHE", str(tmp_path / "cache"))
    workdir = default_workdir(None)
    assert workdir == tmp_path / "cache"
    folder = BenchSettings.from_options(("ort",), 64, 64, {}, workdir=str(workdir)).spec("ort").ort_cache
    assert folder == tmp_path / "cache" / "ort-optimized" and in_default_root(folder / "unet-0123")  # bounded
    assert default_workdir(tmp_path / "mine") == tmp_path / "mine"  # a folder the user names is theirs
