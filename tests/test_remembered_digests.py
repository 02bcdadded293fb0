"""Issue 21 point 5: sha256 verification checked once and remembered (enginedir/remembered.py), on real files.

A remembered check is reused only for the very same file state (device, inode, size, mtime_ns, ctime_ns): a file
rewritten in place with its size kept and its mtime restored with os.utime still gets a new ctime, so it is hashed
again and refused; records outside the current user's private folder, or not ours, are never trusted or touched."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from monkey_trt.core.atomic import sha256_file
from monkey_trt.core.errors import EngineDirError
from monkey_trt.enginedir import remembered
from monkey_trt.enginedir.load import load_manifest
from monkey_trt.enginedir.remembered import record_path, sha256_matches

TICK = 0.05  # longer than the kernel's timestamp tick (a jiffy): a write after it gets a new ctime


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A user cache of this test's own, and the racy margin shortened to 20 ms (files here are fresh)."""
    monkeypatch.setenv("MONKEY_TRT_CACHE", str(tmp_path / "user-cache"))
    monkeypatch.setattr(remembered, "RACY_NS", 20_000_000)
    return tmp_path / "user-cache"


@pytest.fixture
def hashes(monkeypatch) -> list[str]:
    """The files remembered.sha256_matches hashed, in order."""
    seen: list[str] = []

    def counting(path, *a, **k):
        seen.append(Path(path).name)
        return sha256_file(path, *a, **k)

    monkeypatch.setattr(remembered, "sha256_file", counting)
    return seen


def _file(tmp_path: Path, data: bytes = b"weights " * 1000) -> tuple[Path, str]:
    f = tmp_path / "unet.onnx.data"
    f.write_bytes(data)
    time.sleep(TICK)  # older than the racy margin
    return f, sha256_file(f)


def _rewrite_same_size(f: Path) -> None:
    """Flip one byte in place, size kept, mtime (and atime) restored with os.utime: only ctime tells."""
    st = f.stat()
    time.sleep(TICK)
    with open(f, "r+b") as fh:
        b = fh.read(1)
        fh.seek(0)
        fh.write(bytes([b[0] ^ 1]))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = f.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    assert after.st_ctime_ns != st.st_ctime_ns  # what no user can set back


def test_a_check_is_remembered_and_not_paid_again(cache, hashes, tmp_path):
    f, digest = _file(tmp_path)
    assert sha256_matches(f, digest) and hashes == ["unet.onnx.data"]
    rec = json.loads(record_path(f, digest).read_text())
    st = f.stat()
    assert rec["path"] == str(f) and rec["sha256"] == digest
    assert rec["state"] == [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    assert (cache / "verified").stat().st_mode & 0o077 == 0  # a private folder
    assert sha256_matches(f, digest) and sha256_matches(f, digest)
    assert hashes == ["unet.onnx.data"]  # remembered: hashed once


def test_a_file_tampered_after_a_remembered_check_is_hashed_again_and_refused(cache, hashes, tmp_path):
    f, digest = _file(tmp_path)
    assert sha256_matches(f, digest) and sha256_matches(f, digest) and len(hashes) == 1
    _rewrite_same_size(f)
    assert not sha256_matches(f, digest)  # the new ctime: hashed again, and it no longer matches
    assert not sha256_matches(f, digest) and len(hashes) == 3  # never remembered as good


def test_a_touched_file_is_hashed_again_and_its_record_replaced(cache, hashes, tmp_path):
    f, digest = _file(tmp_path)
    assert sha256_matches(f, digest)
    time.sleep(TICK)
    os.utime(f)  # same bytes, new mtime and ctime
    time.sleep(TICK)
    assert sha256_matches(f, digest) and len(hashes) == 2
    assert json.loads(record_path(f, digest).read_text())["state"][3] == f.stat().st_mtime_ns  # ours: replaced
    assert sha256_matches(f, digest) and len(hashes) == 2


def test_a_replaced_file_is_hashed_again(cache, hashes, tmp_path):
    """Another file moved into place, same size and mtime: a new inode."""
    f, digest = _file(tmp_path)
    assert sha256_matches(f, digest)
    st = f.stat()
    other = tmp_path / "other"
    other.write_bytes(b"Weights " * 1000)
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, f)
    assert not sha256_matches(f, digest) and len(hashes) == 2


def test_a_file_changed_just_before_its_check_is_not_remembered(cache, hashes, tmp_path, monkeypatch):
    """Timestamps move in ticks: a file written in the tick of its check is hashed again next time (git's racy rule)."""
    monkeypatch.setattr(remembered, "RACY_NS", 10**12)
    f, digest = _file(tmp_path)
    assert sha256_matches(f, digest) and sha256_matches(f, digest) and len(hashes) == 2
    assert not record_path(f, digest).exists()


def test_rehash_remembers_nothing(cache, hashes, tmp_path):
    f, digest = _file(tmp_path)
    for _ in range(3):
        assert sha256_matches(f, digest, remember=False)
    assert len(hashes) == 3 and not (cache / "verified").exists()


def test_a_record_that_is_not_ours_is_neither_trusted_nor_overwritten(cache, hashes, tmp_path):
    f, digest = _file(tmp_path)
    rp = record_path(f, digest)
    rp.parent.mkdir(parents=True, mode=0o700)
    rp.write_text("my notes")
    for _ in range(2):
        assert sha256_matches(f, digest)
    assert len(hashes) == 2 and rp.read_text() == "my notes"


def test_a_record_for_another_path_or_digest_is_not_trusted(cache, hashes, tmp_path):
    """A record copied to another file's name (it names its own path) proves nothing about this file."""
    f, digest = _file(tmp_path)
    assert sha256_matches(f, digest)
    g = tmp_path / "g.data"
    g.write_bytes(b"other bytes")
    time.sleep(TICK)
    shutil.copy(record_path(f, digest), record_path(g, digest))
    assert not sha256_matches(g, digest)
    assert len(hashes) == 2


def test_a_folder_others_may_write_is_not_trusted(cache, hashes, tmp_path):
    f, digest = _file(tmp_path)
    assert sha256_matches(f, digest)
    (cache / "verified").chmod(0o777)
    assert sha256_matches(f, digest) and sha256_matches(f, digest) and len(hashes) == 3


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to give a folder to another user")
def test_records_in_a_folder_another_user_owns_are_not_trusted(cache, hashes, tmp_path):
    f, digest = _file(tmp_path)
    assert sha256_matches(f, digest)
    folder = cache / "verified"
    os.chown(folder, 4321, 4321)
    _rewrite_same_size(f)
    rec = json.loads(record_path(f, digest).read_text())
    st = f.stat()
    rec["state"] = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]  # a record that matches the tampered file
    record_path(f, digest).write_text(json.dumps(rec))
    assert not sha256_matches(f, digest)  # hashed: the folder is not ours
    os.chown(folder, 0, 0)
    os.chown(record_path(f, digest), 4321, 4321)  # our folder, another user's record
    assert not sha256_matches(f, digest) and len(hashes) == 3
    assert record_path(f, digest).stat().st_uid == 4321  # not touched


def test_an_engine_directory_is_hashed_once_and_a_tampered_file_refused(engine_dir, cache, hashes, tmp_path):
    """load_manifest (default verify="sha256") on a copy of the tiny engine: the second load hashes nothing, a network
    file rewritten in place (same size, mtime restored) after it is refused as before."""
    eng = tmp_path / "eng"
    shutil.copytree(engine_dir, eng)
    time.sleep(TICK)
    load_manifest(eng)
    first = len(hashes)
    assert first >= 9  # every graph, data file and the tokenizer
    load_manifest(eng)
    assert len(hashes) == first  # remembered
    load_manifest(eng, verify="rehash")
    assert len(hashes) == 2 * first
    _rewrite_same_size(eng / "unet.onnx")
    with pytest.raises(EngineDirError, match="unet.onnx of network unet fails its sha256 check"):
        load_manifest(eng)


def test_checks_of_proven_bytes_are_remembered(engine_dir, cache, tmp_path, monkeypatch):
    """The manifest's schema validation (keyed by its sha256) and each graph's structure check (keyed by its verified
    digest) run once; a changed manifest is validated again, and `verify="size"` (bytes not proven) always scans."""
    from monkey_trt.enginedir import load, onnx_scan

    calls = {"schema": 0, "graph": 0}
    real_schema, real_graph = load._validate_schema, onnx_scan.check_graph

    def schema(*a):
        calls["schema"] += 1
        return real_schema(*a)

    def graph(*a):
        calls["graph"] += 1
        return real_graph(*a)

    monkeypatch.setattr(load, "_validate_schema", schema)
    monkeypatch.setattr(onnx_scan, "check_graph", graph)
    eng = tmp_path / "eng"
    shutil.copytree(engine_dir, eng)
    time.sleep(TICK)
    load_manifest(eng)
    assert calls["schema"] == 1 and calls["graph"] >= 8
    n = calls["graph"]
    load_manifest(eng)
    assert calls == {"schema": 1, "graph": n}  # remembered
    load_manifest(eng, verify="size")
    assert calls == {"schema": 1, "graph": 2 * n}  # graphs not proven by their digests: scanned
    load_manifest(eng, verify="rehash")
    assert calls == {"schema": 2, "graph": 3 * n}  # rehash remembers nothing
    (eng / "manifest.json").write_text((eng / "manifest.json").read_text() + "\n")
    load_manifest(eng)
    assert calls["schema"] == 3
