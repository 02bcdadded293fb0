"""The user's own cache folder (derived files, remembered digests): one definition for every layer.

    cache_root()   # $MONKEY_TRT_CACHE, else the platform's user cache folder

Lean: stdlib only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CACHE_ENV = "MONKEY_TRT_CACHE"
APP = "monkey-trt"


def cache_root() -> Path:
    """$MONKEY_TRT_CACHE, else the platform's user cache folder: $XDG_CACHE_HOME/monkey-trt or
    ~/.cache/monkey-trt (Linux), ~/Library/Caches/monkey-trt (macOS), %LOCALAPPDATA%/monkey-trt/Cache (Windows)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / APP
    if os.name == "nt":
        base = os.environ.get("LOCALAPPDATA")
        return (Path(base) if base else Path.home() / "AppData" / "Local") / APP / "Cache"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / APP
