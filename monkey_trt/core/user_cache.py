"""The user's own cache folder (derived files, remembered digests): one definition for every layer.

    cache_root()            # $MONKEY_TRT_CACHE, else the platform's user cache folder
    cache_budget_bytes()    # $MONKEY_TRT_CACHE_MAX_GB (default 16): the bound on derived entries (engine/cache_budget.py)

Lean: stdlib only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from monkey_trt.core.errors import MonkeyError

CACHE_ENV = "MONKEY_TRT_CACHE"
BUDGET_ENV = "MONKEY_TRT_CACHE_MAX_GB"
DEFAULT_BUDGET_GB = 16.0  # ORT's optimised graphs + OpenVINO's compiled models of one SD1.5 directory: about 5-10 GB
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


def cache_budget_bytes() -> int:
    """$MONKEY_TRT_CACHE_MAX_GB (GB = 10**9 bytes, a number >= 0; 0 keeps only what is in use) else DEFAULT_BUDGET_GB."""
    raw = os.environ.get(BUDGET_ENV, "").strip()
    if not raw:
        return int(DEFAULT_BUDGET_GB * 1e9)
    try:
        gb = float(raw)
    except ValueError:
        gb = float("nan")
    if not (gb >= 0 and gb < 1e6):  # NaN and inf fail both
        raise MonkeyError(f"{BUDGET_ENV}={raw!r}: need a number of GB >= 0 (the size bound of the user cache)")
    return int(gb * 1e9)
