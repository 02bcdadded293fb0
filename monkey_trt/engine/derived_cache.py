"""Derived caches (ORT's optimised graphs, the ORT TensorRT EP's engines): where they live and how they are written.

An engine directory is sealed: nothing is written into it at run time. What a backend derives from
its files goes to the user cache folder, in a sub-folder keyed by the digest of what it was derived
from (the manifest's sha256 of the graph files, the onnxruntime version, the providers and their
options), so a changed graph, library or option never reuses a stale entry and identical inputs at
another path share one.

    cache_root()                                  # $MONKEY_TRT_CACHE, else the platform cache folder
    folder = keyed_folder("ort-trt", material)    # <root>/ort-trt/<sha256(material)[:24]>
    with StagedFolder(folder) as stage:           # a library writes into stage.path ...
        ...
    # ... and on exit new or changed files are moved into `folder` with os.replace (atomic per file)

Lean: stdlib only (+ core.output_folders for the staging-folder names).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from monkey_trt.core.atomic import fsync_dir
from monkey_trt.core.output_folders import clean_stale_staging, make_staging, remove_staging
from monkey_trt.core.user_cache import APP, CACHE_ENV, cache_root  # noqa: F401  (re-exported: engine.derived_cache.cache_root)



def digest(material: Mapping) -> str:
    """sha256 of the canonical JSON of `material` (hex)."""
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def keyed_folder(kind: str, material: Mapping, root: Path | None = None) -> Path:
    """<root or cache_root()>/<kind>/<first 24 hex digits of digest(material)>."""
    return Path(root if root is not None else cache_root()) / kind / digest({"kind": kind, **material})[:24]


def source_digest(files: Mapping[str, str]) -> str:
    """One digest for a set of files given as name -> sha256 (the manifest's record of a graph and its data)."""
    return digest({"files": dict(sorted(files.items()))})


class StagedFolder:
    """A cache folder that a library writes into by itself (ORT's TensorRT EP writes its engine, profile
    and timing-cache files with plain ofstreams): it writes into a private staging copy instead, and
    `commit()` moves new or changed files into the shared folder with os.replace, so a reader never
    sees a half-written file. Staging folders of dead processes are removed (core.output_folders markers).

    The copy is a reflink where the filesystem has them, else a byte copy (engines can be large: the
    cost is paid once per start, not per run).
    """

    def __init__(self, final: Path) -> None:
        self.final = Path(final)
        self.path: Path | None = None
        self._seeded: dict[str, tuple[int, int]] = {}

    def open(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_staging(self.final)
        self.path = make_staging(self.final)  # proven ours by its marker (core.output_folders), never by its name
        if self.final.is_dir():
            for src in self.final.iterdir():
                if src.is_file() and not src.is_symlink():
                    dst = self.path / src.name
                    _copy(src, dst)
                    st = dst.stat()
                    self._seeded[src.name] = (st.st_size, st.st_mtime_ns)
        return self.path

    def commit(self) -> list[str]:
        """Publish what the library wrote since `open` (or the last commit); returns the file names moved."""
        if self.path is None or not self.path.is_dir():
            return []
        moved = []
        for f in sorted(self.path.iterdir()):
            if not f.is_file() or f.is_symlink():
                continue
            st = f.stat()
            if self._seeded.get(f.name) == (st.st_size, st.st_mtime_ns):
                continue  # untouched copy of a committed file
            self.final.mkdir(parents=True, exist_ok=True)
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            tmp = self.final / f".{f.name}.{os.getpid()}.tmp"
            _copy(f, tmp)
            os.replace(tmp, self.final / f.name)
            st = f.stat()
            self._seeded[f.name] = (st.st_size, st.st_mtime_ns)
            moved.append(f.name)
        if moved:
            fsync_dir(self.final)
        return moved

    def close(self) -> list[str]:
        """commit() and remove the staging folder."""
        try:
            return self.commit()
        finally:
            if self.path is not None:
                remove_staging(self.path)
                self.path = None

    def discard(self) -> None:
        """Remove the staging folder without publishing anything (the library failed midway)."""
        if self.path is not None:
            remove_staging(self.path)
            self.path = None

    def __enter__(self) -> "StagedFolder":
        self.open()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()


def _copy(src: Path, dst: Path) -> None:
    """Reflink (FICLONE) where possible, else a byte copy; keeps the mtime."""
    try:
        import fcntl

        with open(src, "rb") as s, open(dst, "wb") as d:
            fcntl.ioctl(d.fileno(), 0x40049409, s.fileno())  # FICLONE
    except (ImportError, OSError):
        shutil.copyfile(src, dst)
    shutil.copystat(src, dst)

