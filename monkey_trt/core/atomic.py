"""Single files written atomically (temp file in the same folder, fsync, rename), and their digests.

    write_bytes_atomic(path, data)     # never a half-written file, even on a crash or a full disk
    write_json_atomic(path, obj)
    sha256_file(path)                  # hex digest, read in 4 MiB blocks

Lean: stdlib only.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path


def write_bytes_atomic(path: Path, data, tmp_dir: Path | None = None, sync_dir: bool = True) -> Path:
    """Write a bytes-like object (incl. TensorRT IHostMemory) to a temp file, fsync, rename onto `path`.

    The temp file goes next to `path`, or into `tmp_dir` (a staging folder on the same file system: a killed
    writer then leaves its temp file where its owner's cleanup finds it). `sync_dir`: fsync the folder after."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent if tmp_dir is None else tmp_dir)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)
    return path


def write_json_atomic(path: Path, obj) -> Path:
    return write_bytes_atomic(path, json.dumps(obj, indent=1).encode())


def fsync_dir(folder: Path) -> None:
    """Make renames in `folder` durable (best effort: not every filesystem supports it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
