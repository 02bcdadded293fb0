"""Digests checked once and remembered: sha256 verification as strong as hashing, not paid on every start.

    sha256_matches(path, expected)                   # == (sha256_file(path) == expected), hashed only when needed
    sha256_matches(path, expected, remember=False)   # always hashed, nothing remembered (`--verify rehash`)

A file whose sha256 matched is remembered in the user's own cache (`core.user_cache.cache_root()/verified/`),
one record per (absolute path, expected digest), holding what changes when the file does: device, inode, size,
mtime_ns and ctime_ns (POSIX only). The next check re-hashes when any of them differs. No user can set a ctime: a file
rewritten in place with its size kept and its mtime restored (os.utime) still gets a new ctime, and a
replaced file gets a new inode. The record is trusted only when

* it and its folder belong to the current user, are not symlinks, and the folder is not writable by others;
* it is monkey-trt's record of this kind, for this path and this digest.

A record that is ours but stale is replaced after the file is hashed again; anything else at a record's name
is left alone (never deleted or overwritten) and the file is hashed every time. A file changed within
RACY_NS of its check is not remembered: timestamps move in coarse ticks, so a write in the same tick as the
check could leave them unchanged (git's "racy clean" rule).

Checks that are a function of bytes already proven (the manifest's schema for its sha256, a graph's structure for
its verified digest) are remembered the same way, keyed by what they read and by the code that checks them:

    if not passed("graph", material): check(...); remember_pass("graph", material)

Lean: stdlib only.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from pathlib import Path

from monkey_trt.core.atomic import sha256_file, write_bytes_atomic
from monkey_trt.core.output_folders import WRITTEN_BY
from monkey_trt.core.user_cache import cache_root

KIND = "verified-file"
FOLDER = "verified"  # under cache_root()
RACY_NS = 2_000_000_000  # a file changed less than 2 s before its check is hashed again next time
RECORD_MAX_BYTES = 1 << 16

CHECK_KIND = "passed-check"
CHECKERS = ("load.py", "manifest.py", "manifest_schema.py", "networks.py", "onnx_scan.py")  # what decides a check

__all__ = ["KIND", "RACY_NS", "passed", "record_path", "remember_pass", "sha256_matches"]


def memo_folder() -> Path:
    """Where the records live: <user cache>/verified."""
    return cache_root() / FOLDER


def record_path(path: str | os.PathLike, expected: str) -> Path:
    """The record of (`path` made absolute, `expected`)."""
    key = hashlib.sha256(json.dumps([os.path.abspath(path), expected]).encode()).hexdigest()[:32]
    return memo_folder() / f"{key}.json"


def _state(st: os.stat_result) -> list[int]:
    """What changes when a file does (ctime: no user can set it)."""
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _private_folder(folder: Path) -> bool:
    """The current user's folder, not a symlink, not writable by group or others."""
    try:
        st = os.lstat(folder)
    except OSError:
        return False
    mine = not hasattr(os, "getuid") or st.st_uid == os.getuid()
    return stat.S_ISDIR(st.st_mode) and mine and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _read(rp: Path, kind: str = KIND) -> dict | None:
    """Our record at `rp` (a regular file of the current user's, written by monkey-trt for `kind`), else None."""
    try:
        fd = os.open(rp, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
                return None
            rec = json.loads(f.read(RECORD_MAX_BYTES + 1).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(rec, dict) or rec.get("written_by") != WRITTEN_BY or rec.get("kind") != kind:
        return None
    return rec


def _remembered(path: str, expected: str, st: os.stat_result) -> bool:
    rp = record_path(path, expected)
    if not _private_folder(rp.parent):
        return False
    rec = _read(rp)
    return rec is not None and rec.get("path") == path and rec.get("sha256") == expected and rec.get("state") == _state(st)


def _remember(path: str, expected: str, before: os.stat_result) -> None:
    """Record the check, unless the file changed while it was hashed, changed too recently to tell, or the record's
    name is taken by something not ours. Best effort: a cache that cannot be written only costs the next hash."""
    try:
        after = os.stat(path)
        if _state(after) != _state(before) or max(after.st_mtime_ns, after.st_ctime_ns) > time.time_ns() - RACY_NS:
            return
        rp = record_path(path, expected)
        folder = rp.parent
        if not os.path.lexists(folder):
            folder.parent.mkdir(parents=True, exist_ok=True)
            folder.mkdir(mode=0o700)
        if not _private_folder(folder) or (os.path.lexists(rp) and _read(rp) is None):
            return  # another user's folder, or a file we did not write: neither trusted nor touched
        rec = {"written_by": WRITTEN_BY, "kind": KIND, "path": path, "sha256": expected, "state": _state(before)}
        write_bytes_atomic(rp, json.dumps(rec).encode(), sync_dir=False)
    except OSError:
        return


def sha256_matches(path: str | os.PathLike, expected: str, remember: bool = True) -> bool:
    """Whether the file at `path` has the sha256 `expected`: remembered from a check of this very file (same device,
    inode, size, mtime and ctime), else hashed now (and remembered when it matches and `remember`).
    OSError when the file cannot be read, as sha256_file."""
    p = os.path.abspath(path)
    st = os.stat(p)
    remember = remember and os.name == "posix"  # Windows' st_ctime is the creation time, which a user can set
    if remember and _remembered(p, expected, st):
        return True
    if sha256_file(Path(p)) != expected:
        return False
    if remember:
        _remember(p, expected, st)
    return True


_CODE: list[str] = []


def _code_digest() -> str:
    """sha256 of the enginedir modules that decide the checks (a new release checks again)."""
    if not _CODE:
        h = hashlib.sha256()
        for name in CHECKERS:
            h.update((Path(__file__).with_name(name)).read_bytes())
        _CODE.append(h.hexdigest())
    return _CODE[0]


def _check_record(check: str, material) -> tuple[Path, str]:
    digest = hashlib.sha256(json.dumps({"check": check, "code": _code_digest(), "material": material},
                                       sort_keys=True, default=str).encode()).hexdigest()
    return memo_folder() / f"check-{digest[:32]}.json", digest


def passed(check: str, material) -> bool:
    """Whether the check `check` passed before on exactly `material` (JSON-able: digests of what it read) with this
    code; never when the record is not provably ours (see the module docstring)."""
    try:
        rp, digest = _check_record(check, material)
    except OSError:
        return False
    if not _private_folder(rp.parent):
        return False
    rec = _read(rp, CHECK_KIND)
    return rec is not None and rec.get("check") == check and rec.get("digest") == digest


def remember_pass(check: str, material) -> None:
    """Record that `check` passed on `material` (best effort, as `_remember`)."""
    try:
        rp, digest = _check_record(check, material)
        folder = rp.parent
        if not os.path.lexists(folder):
            folder.parent.mkdir(parents=True, exist_ok=True)
            folder.mkdir(mode=0o700)
        if not _private_folder(folder) or (os.path.lexists(rp) and _read(rp, CHECK_KIND) is None):
            return
        rec = {"written_by": WRITTEN_BY, "kind": CHECK_KIND, "check": check, "digest": digest}
        write_bytes_atomic(rp, json.dumps(rec).encode(), sync_dir=False)
    except OSError:
        return
