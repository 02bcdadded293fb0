"""Records of derived files (ORT's optimised graphs, calibration arrays): nothing derived is trusted unchecked.

A derived file is written with a record beside it, and before it is used the record must prove it:

    write_record(record_path, kind, source, {"model.onnx": folder / "model.onnx", ...})
    state = check_record(record_path, kind, source)   # "ok" | "missing" | "wrong" | "foreign"

* "ok": the record is monkey-trt's, of this `kind` and `source` (the digest of what the files were derived
  from), and it, its folder and every file it lists belong to the current user, each file's sha256 matching.
* "missing": nothing there: derive and write.
* "wrong": the record is ours (and the user's) but a file is altered, missing or unreadable, or the record is for
  another source: replace what the record lists (`remove_recorded`), then derive again.
* "foreign": not provably ours (no record, someone else's record, another user's file or folder): never used,
  never deleted or overwritten; the caller derives without caching.

Lean: stdlib only.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from monkey_trt.core.atomic import sha256_file, write_bytes_atomic
from monkey_trt.core.output_folders import WRITTEN_BY, safe_relpath, valid_digests
from monkey_trt.enginedir.remembered import sha256_matches

RECORD_MAX_BYTES = 1 << 20


def owned_by_me(path: Path) -> bool:
    """`path` exists, is not a symlink and belongs to the current user (what a cache may trust or write into)."""
    return _mine(Path(path))


def _mine(path: Path) -> bool:
    """`path` exists, is not a symlink and belongs to the current user."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return not stat.S_ISLNK(st.st_mode) and (not hasattr(os, "getuid") or st.st_uid == os.getuid())


def write_record(record_path: Path, kind: str, source: str, files: Mapping[str, Path], extra: Mapping | None = None,
                 tmp_dir: Path | None = None) -> dict:
    """Write `record_path` (atomically; the temp file in `tmp_dir` where given) listing `files` (name relative to the
    record's folder -> path) with their sha256, plus `extra` fields."""
    rec = {**(extra or {}), "written_by": WRITTEN_BY, "kind": kind, "source": source,
           "files": {name: sha256_file(p) for name, p in sorted(files.items())}}
    write_bytes_atomic(Path(record_path), json.dumps(rec, indent=1).encode(), tmp_dir=tmp_dir)
    return rec


def read_record(record_path: Path, kind: str) -> dict | None:
    """The record at `record_path` if it is a regular file of the current user's, written by monkey-trt for `kind`."""
    p = Path(record_path)
    if not _mine(p) or not _mine(p.parent):
        return None
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            rec = json.loads(f.read(RECORD_MAX_BYTES + 1).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(rec, dict) or rec.get("written_by") != WRITTEN_BY or rec.get("kind") != kind:
        return None
    files = rec.get("files")
    if not isinstance(files, dict) or valid_digests(files) != files or not isinstance(rec.get("source"), str):
        return None
    return rec


def check_record(record_path: Path, kind: str, source: str, present: Path | None = None) -> str:
    """"ok", "missing", "wrong" or "foreign" (see the module docstring); `present`: the derived file whose
    absence means "missing" (default: the record itself)."""
    record_path = Path(record_path)
    if not os.path.lexists(present or record_path) and not os.path.lexists(record_path):
        return "missing"
    rec = read_record(record_path, kind)
    if rec is None:
        return "foreign"
    if rec["source"] != source:
        return "wrong"
    folder = record_path.parent
    for name, want in rec["files"].items():
        p = folder / name
        if not _mine(p):
            return "foreign" if os.path.lexists(p) else "wrong"
        try:
            if not stat.S_ISREG(os.lstat(p).st_mode) or not sha256_matches(p, want):  # a check of this very file remembered
                return "wrong"
        except OSError:
            return "wrong"
    return "ok"


def remove_recorded(record_path: Path, kind: str) -> bool:
    """Remove the files our record at `record_path` lists (the current user's only), then the record; True when
    nothing of it is left. Anything the record does not list stays."""
    record_path = Path(record_path)
    rec = read_record(record_path, kind)
    if rec is None:
        return not os.path.lexists(record_path)
    for name in rec["files"]:
        p = record_path.parent / name
        if safe_relpath(name) == name and _mine(p) and not stat.S_ISDIR(os.lstat(p).st_mode):
            with contextlib.suppress(OSError):
                p.unlink()
    with contextlib.suppress(OSError):
        record_path.unlink()
    return not os.path.lexists(record_path)
