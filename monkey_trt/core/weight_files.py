"""Is a weight file whole? A cheap structural check, so a truncated download is one line before any work.

    .safetensors  8-byte little-endian header length N, N bytes of JSON (name -> dtype, shape,
                  data_offsets [begin, end) into the data after the header): whole when the file is
                  at least 8 + N + the largest end long (the format's own layout).
    .bin (torch)  a zip archive since torch 1.6: whole when its central directory (at the end) reads.
                  Older pickles (not zip) are not checked.

Only sizes and headers are read, never the tensors. Stdlib only.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


def damage(path: str | os.PathLike) -> str | None:
    """Why the weight file at `path` is not whole (truncated, not the format its name says), or None."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if p.suffix == ".safetensors":
            return _safetensors_damage(p, size)
        if p.suffix == ".bin":
            with open(p, "rb") as f:
                zipped = f.read(2) == b"PK"
            if zipped:  # torch >= 1.6; a zip cut short has lost its central directory, at the end
                try:
                    with zipfile.ZipFile(p):
                        pass
                except (zipfile.BadZipFile, ValueError):
                    return f"truncated ({size} bytes; its zip directory is missing)"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    return None


def _safetensors_damage(p: Path, size: int) -> str | None:
    with open(p, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            return f"truncated ({size} bytes)"
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER or 8 + n > size:
            return f"truncated or not safetensors (header of {n} bytes in a {size}-byte file)"
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            return "not safetensors (its header is not JSON)"
    if not isinstance(header, dict):
        return "not safetensors (its header is not a JSON object)"
    ends = [t.get("data_offsets", [0, 0])[1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    if not all(isinstance(e, int) for e in ends):
        return "not safetensors (bad data offsets)"
    need = 8 + n + max(ends, default=0)
    if size < need:
        return f"truncated ({size} of {need} bytes)"
    return None
