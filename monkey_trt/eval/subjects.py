"""The subject folder: one subject per image file, or per subfolder (the DreamBooth layout, its first
image by name), each with a subject word.

    SUBJECTS/dog.jpg  SUBJECTS/red_cartoon.png        one subject per image file
    SUBJECTS/dog2/00.jpg  SUBJECTS/dog2/01.jpg ...    one subject per folder: its first image
    SUBJECTS/subjects.csv   (image,word)  or  SUBJECTS/subjects.json  ({"dog2": "dog", ...})

The word comes from the sidecar (keyed by file name, file stem or folder name), else from the name:
`_`/`-` become spaces and trailing digits go ("dog2" -> "dog", "red_cartoon" -> "red cartoon").
Every image is decoded and hashed before any work, so a bad one fails the run in a second, not an hour in;
the decoded pixels are not kept (`Subject.image` decodes again, the last two held), so memory does not grow
with the number of subjects.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from monkey_trt.core.errors import MonkeyError
from monkey_trt.runtime.images import load_subject

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SIDECARS = ("subjects.csv", "subjects.json")
MAX_SUBJECTS = 10_000
MAX_WORD = 100
DECODED_KEPT = 2  # decoded subjects held at once (units run subject by subject)


@dataclass(frozen=True)
class Subject:
    id: str  # file name, or folder name for a subfolder subject: the `subject` column
    path: Path
    word: str
    sha256: str

    @property
    def image(self) -> Image.Image:
        """8-bit RGB, decoded when asked (the last DECODED_KEPT kept): a run holds a few subjects, not all of them."""
        return _decoded(str(self.path), self.sha256)

    def __hash__(self) -> int:
        return hash(self.id)

    def __eq__(self, other) -> bool:
        return isinstance(other, Subject) and other.id == self.id


@functools.lru_cache(maxsize=DECODED_KEPT)
def _decoded(path: str, sha256: str) -> Image.Image:
    return load_subject(Path(path))


def word_from_name(name: str) -> str:
    stem = Path(name).stem if Path(name).suffix.lower() in IMAGE_SUFFIXES else name
    word = re.sub(r"[\s_\-]+", " ", stem).strip()
    word = re.sub(r"[\s\d]+$", "", word).strip()
    return word or stem


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and _visible(p)


def _candidates(folder: Path, exclude: Path | None = None) -> list[tuple[str, Path]]:
    """(subject id, image path) in name order; `exclude` (the --out folder, if it is inside) is skipped."""
    out = []
    skip = Path(exclude).resolve() if exclude is not None else None
    for p in sorted(folder.iterdir(), key=lambda q: q.name):
        if not _visible(p) or p.name in SIDECARS or (skip is not None and p.resolve() == skip):
            continue
        if p.is_dir():
            images = sorted((q for q in p.iterdir() if _is_image(q)), key=lambda q: q.name)
            if images:
                out.append((p.name, images[0]))
        elif _is_image(p):
            out.append((p.name, p))
    return out


def _check_word(word, where: str) -> str:
    if not isinstance(word, str) or not word.strip() or len(word) > MAX_WORD or any(c in word for c in "\r\n\0"):
        raise MonkeyError(f"{where}: a subject word must be one line of 1..{MAX_WORD} characters, got {word!r}")
    return " ".join(word.split())


def read_sidecar(folder: Path) -> dict[str, str]:
    """{image/folder name or stem: word} from subjects.csv or subjects.json ({} when there is none)."""
    present = [folder / n for n in SIDECARS if (folder / n).is_file()]
    if len(present) > 1:
        raise MonkeyError(f"{folder} has both {SIDECARS[0]} and {SIDECARS[1]}; keep one")
    if not present:
        return {}
    path = present[0]
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise MonkeyError(f"{path}: not UTF-8 text") from None
    if path.suffix == ".json":
        try:
            raw = json.loads(text)
        except ValueError as e:
            raise MonkeyError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
            raise MonkeyError(f'{path}: must be an object {{"image or folder name": "word", ...}}')
        return {k: _check_word(v, f"{path} [{k!r}]") for k, v in raw.items()}
    rows = list(csv.reader(io.StringIO(text)))
    header = [h.strip().lower() for h in rows[0]] if rows else []
    name_col = next((header.index(h) for h in ("image", "file", "name") if h in header), None)
    word_col = next((header.index(h) for h in ("word", "class") if h in header), None)
    if name_col is None or word_col is None:
        raise MonkeyError(f"{path}: the first line must name the columns, e.g. 'image,word'")
    words = {}
    for i, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) <= max(name_col, word_col):
            raise MonkeyError(f"{path} line {i}: expected {len(header)} columns, got {len(row)}")
        words[row[name_col].strip()] = _check_word(row[word_col], f"{path} line {i}")
    return words


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def discover_subjects(folder: Path, warn=lambda msg: None, exclude: Path | None = None) -> list[Subject]:
    """Every subject of `folder`, decoded (RGB) and hashed; MonkeyError on an empty folder or a bad image."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MonkeyError(f"--subjects {folder} is not a folder")
    sidecar = read_sidecar(folder)
    found = _candidates(folder, exclude)
    if not found:
        raise MonkeyError(f"--subjects {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}, or subfolders of them)")
    if len(found) > MAX_SUBJECTS:
        raise MonkeyError(f"--subjects {folder}: {len(found)} subjects, at most {MAX_SUBJECTS}")
    subjects, used = [], set()
    for sid, path in found:
        key = next((k for k in (sid, Path(sid).stem) if k in sidecar), None)
        if sidecar and key is None:
            warn(f"{sid} is not in the sidecar: its word comes from the name ({word_from_name(sid)!r})")
        used.add(key)
        word = sidecar[key] if key is not None else word_from_name(sid)
        load_subject(path)  # decoded now, then let go: a bad image is one line naming it, before any work
        subjects.append(Subject(sid, path, word, _file_sha256(path)))
    unused = sorted(set(sidecar) - used)
    if unused:
        warn(f"the sidecar names {len(unused)} entries with no image: {', '.join(unused[:5])}{' ...' if len(unused) > 5 else ''}")
    return subjects
