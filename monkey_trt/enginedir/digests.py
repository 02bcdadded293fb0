"""Digests of an engine directory's files and their verification before anything runs.

`verify="sha256"` (the default) checks every listed file's sha256, hashing only files not already checked in
this very state (enginedir/remembered.py: device, inode, size, mtime, ctime remembered in the user's cache);
`verify="rehash"` hashes every file on every load and remembers nothing; `verify="size"` checks the networks'
sizes and hashes the small files (the tokenizer). Lean: stdlib only.
"""

from __future__ import annotations

from pathlib import Path

from monkey_trt.core.errors import EngineDirError
from monkey_trt.core.atomic import sha256_file
from monkey_trt.enginedir.remembered import sha256_matches

VERIFY_MODES = ("sha256", "rehash", "size")


__all__ = ["VERIFY_MODES", "sha256_file", "verify_files"]


def verify_files(root: Path, manifest, verify: str = "sha256") -> None:
    """Check every listed file's contents: "sha256" checks every digest (a check of an unchanged file remembered),
    "rehash" hashes all every time; "size" checks the networks' sizes and hashes the small ones (`files`: the tokenizer)."""
    if verify not in VERIFY_MODES:
        raise EngineDirError(f"verify must be one of {', '.join(VERIFY_MODES)}, got {verify!r}")
    for fname, digest in manifest.files.items():
        f = root / fname
        if not f.is_file():
            raise EngineDirError(f"{root}: file {fname} is missing")
        if not sha256_matches(f, digest, remember=verify == "sha256"):
            raise EngineDirError(f"{root}: file {fname} fails its sha256 check (altered)")
    for name, entry in manifest.networks.items():
        for fname, digest, size in _network_files(entry):
            f = root / fname
            if not f.is_file():
                raise EngineDirError(f"{root}: file {fname} of network {name} is missing")
            if f.stat().st_size != size:
                raise EngineDirError(f"{root}: file {fname} of network {name} has the wrong size (altered or truncated)")
            if verify != "size" and not sha256_matches(f, digest, remember=verify == "sha256"):
                raise EngineDirError(f"{root}: file {fname} of network {name} fails its sha256 check (altered)")


def _network_files(entry):
    """(file name, sha256, size) of every file of every precision of `entry`."""
    for precision in ("fp32", *entry.precisions):
        _file, digests, sizes = entry.files(precision)
        for fname, digest in digests.items():
            yield fname, digest, sizes.get(fname, -1)
