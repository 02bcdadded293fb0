"""The user cache's size bound: derived entries beyond a budget go, least recently used first.

ORT's optimised graphs and OpenVINO's compiled models are a few GB each at SD1.5 size, and every new engine
directory, library version or input shape adds entries. Without a bound they fill the disk. After a backend
writes an entry it calls `enforce_budget`; a hit calls `mark_used`:

    mark_used(record)                    # the entry's record file: its mtime is the entry's last use
    enforce_budget(keep=(folder,))       # remove least recently used entries until the total fits the budget
    usage()                              # (bytes, entries) for `doctor`

Only entries proven ours are counted or removed: a folder whose record (engine.derived_record) was written by
monkey-trt for one of RECORDED_KINDS, by the current user; what the record lists is removed, nothing else (the
folder itself only when that leaves it empty). An entry used in the last GRACE_SECONDS stays (another process may
be loading it), so a set of entries in use can exceed the budget for a while rather than thrash.

Lean: stdlib only.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from monkey_trt.core.user_cache import cache_budget_bytes, cache_root
from monkey_trt.engine.derived_record import read_record, remove_recorded

RECORD_NAME = "monkey-derived.json"  # beside a cached entry's files (one record per entry folder)
ORT_FOLDER, ORT_KIND = "ort-optimized", "ort-optimized-graph"  # engine/ort/runner.py: ORT's optimised graphs
OPENVINO_FOLDER, OPENVINO_KIND = "openvino", "openvino-compiled-model"  # engine/openvino.py: compiled models
RECORDED_KINDS = {ORT_FOLDER: ORT_KIND, OPENVINO_FOLDER: OPENVINO_KIND}  # cache sub-folder -> its entries' record kind
GRACE_SECONDS = 600.0


@dataclass(frozen=True)
class CacheEntry:
    folder: Path
    kind: str
    size: int  # bytes of the files its record lists (+ the record)
    last_used: float  # the record's mtime (seconds since the epoch)


def mark_used(record: Path) -> None:
    """Stamp an entry as used now (its record's mtime); a read-only cache is left as it is."""
    with contextlib.suppress(OSError):
        os.utime(record)


def entries(root: Path | None = None) -> list[CacheEntry]:
    """Every entry of ours under the cache root, oldest use first."""
    root = Path(root) if root is not None else cache_root()
    found = []
    for sub, kind in RECORDED_KINDS.items():
        base = root / sub
        try:
            folders = [f for f in base.iterdir() if f.is_dir() and not f.is_symlink()]
        except OSError:
            continue
        for folder in folders:
            record = folder / RECORD_NAME
            rec = read_record(record, kind)
            if rec is None:
                continue  # not provably ours: neither counted nor touched
            size = 0
            for name in [*rec["files"], RECORD_NAME]:
                with contextlib.suppress(OSError):
                    size += os.lstat(folder / name).st_size
            with contextlib.suppress(OSError):
                found.append(CacheEntry(folder, kind, size, os.lstat(record).st_mtime))
    return sorted(found, key=lambda e: e.last_used)


def usage(root: Path | None = None) -> tuple[int, int]:
    """(bytes, entries) of the entries of ours under the cache root."""
    found = entries(root)
    return sum(e.size for e in found), len(found)


def in_default_root(folder: Path) -> bool:
    """`folder` is an entry of the user cache folder (a folder the user named is theirs to manage)."""
    return Path(folder).parent.parent == cache_root()


def enforce_budget(keep: tuple[Path, ...] = (), root: Path | None = None, budget: int | None = None,
                   now: float | None = None) -> list[Path]:
    """Remove the least recently used entries until the total is within `budget` (default: the configured budget);
    never an entry in `keep` or one used in the last GRACE_SECONDS. Returns the folders removed. A failure to remove
    (a read-only cache) leaves the entry; this never raises for the cache's state."""
    budget = cache_budget_bytes() if budget is None else budget
    found = entries(root)
    total = sum(e.size for e in found)
    now = time.time() if now is None else now
    kept = {Path(k) for k in keep}
    removed = []
    for entry in found:
        if total <= budget:
            break
        if entry.folder in kept or now - entry.last_used < GRACE_SECONDS:
            continue
        remove_recorded(entry.folder / RECORD_NAME, entry.kind)
        with contextlib.suppress(OSError):
            entry.folder.rmdir()  # only when nothing but what we wrote was there
        total -= entry.size
        removed.append(entry.folder)
    return removed
