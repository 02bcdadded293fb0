"""Writes the embedded model's own .json files (indent 2, sorted keys, final newline): pinned bytes."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: Path, obj, indent: int | None = 2, sort_keys: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")
