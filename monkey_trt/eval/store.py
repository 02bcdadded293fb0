"""The `eval --out` folder: what is done, what may be reused, and the project's no-overwrite rule.

    OUT/eval.json      the record: written_by monkey-trt, the settings rows depend on, subject and
                       precision digests, the files below it may replace ("files")
    OUT/rows.csv       one row per image, rewritten atomically as rows complete (ROW_FIELDS)
    OUT/summary.csv  summary.json  pareto.png  contact.html      (report)
    OUT/images/<subject>/<precision>/s<seed>/<prompt>-<hash>-<method>.png (+ -mask.png for MONKEY)
    OUT/subjects/<subject>.png                                     (contact sheet thumbnails)

Every file is written to this process's staging folder (`.eval.monkey-staging-<pid>@<host>-*`, the
project's staging folders: one whose marker proves a dead process made it is removed by the next run), fsynced, then renamed
into place, so no reader ever sees half a file. A row is complete when it is in rows.csv; an image
is complete when its name exists, and it is ours when its PNG text says so (this run's settings and
its exact case): an image written before an interruption is scored, never generated again. A file
at one of these names that monkey-trt did not write is never replaced: the run stops with one line.
Only one eval writes into OUT at a time (an flock on OUT).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from monkey_trt.core import __version__
from monkey_trt.core.errors import MonkeyError
from monkey_trt.core.atomic import write_bytes_atomic
from monkey_trt.core.output_folders import WRITTEN_BY, check_target, clean_stale_staging, folder_lock, make_dirs, make_staging, record_files, remove_staging

RECORD = "eval.json"
ROWS = "rows.csv"
SUMMARY_CSV, SUMMARY_JSON, PARETO_PNG, CONTACT_HTML = "summary.csv", "summary.json", "pareto.png", "contact.html"
OWN_FILES = (ROWS, SUMMARY_CSV, SUMMARY_JSON, PARETO_PNG, CONTACT_HTML)  # replaced by later runs: listed in the record
OWN_DIRS = ("images", "subjects")
SCHEMA, SCHEMA_VERSION = "monkey-trt-eval", 1
PNG_SOFTWARE = "monkey-trt eval"
PNG_KEY = "monkey-trt-eval"
STAGE_NAME = "eval"  # staging folders: OUT/.eval.monkey-staging-<pid>@<host>-<random>
LOCK_WAIT_S = 1.0
PNG_LEVEL = 1  # zlib level: 4x faster than PIL's default 6 at 512², files ~15% larger

Key = tuple  # (subject, prompt, seed, method, precision)


# -- rows ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    subject: str
    word: str
    prompt: str  # the exact text generated from and scored against
    seed: int
    method: str
    precision: str
    image: str  # relative to OUT
    mask: str  # relative to OUT; "" when the method has none
    clip_t: float
    clip_i: float
    dino: float
    mask_iou_vs_fp32: float | None = None
    psnr_vs_fp32: float | None = None  # inf: identical images
    mask_coverage: float | None = None
    seconds: float | None = None  # generation time of this image

    @property
    def key(self) -> Key:
        return (self.subject, self.prompt, self.seed, self.method, self.precision)


ROW_FIELDS = tuple(f.name for f in fields(Row))
TEXT_FIELDS = ("subject", "word", "prompt", "method", "precision", "image", "mask")
_DIGITS = {"clip_t": 6, "clip_i": 6, "dino": 6, "mask_iou_vs_fp32": 6, "psnr_vs_fp32": 4, "mask_coverage": 6, "seconds": 4}
_FORMULA = tuple("=+-@\t\r'")


def csv_text(text: str) -> str:
    """A text cell a spreadsheet will not run: a leading = + - @ (tab, CR) gets a `'` (and a leading `'` one more)."""
    return "'" + text if text.startswith(_FORMULA) else text


def csv_text_back(cell: str) -> str:
    return cell[1:] if cell.startswith("'") else cell


def _number(x: float | None, digits: int) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.{digits}f}"


def row_cells(row: Row) -> list[str]:
    d = asdict(row)
    return [csv_text(d[k]) if k in TEXT_FIELDS else str(d[k]) if k == "seed" else _number(d[k], _DIGITS[k]) for k in ROW_FIELDS]


def row_from_cells(cells: list[str]) -> Row:
    d: dict = {}
    for k, c in zip(ROW_FIELDS, cells):
        if k in TEXT_FIELDS:
            d[k] = csv_text_back(c)
        elif k == "seed":
            d[k] = int(c)
        else:
            d[k] = None if c == "" else float(c)
    if d["clip_t"] is None or d["clip_i"] is None or d["dino"] is None:
        raise ValueError("a judge metric is empty")
    return Row(**d)


def csv_line(cells) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(cells)
    return buf.getvalue()


def read_rows_csv(path: Path) -> dict[Key, Row]:
    rows: dict[Key, Row] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return rows
        if tuple(header) != ROW_FIELDS:
            raise MonkeyError(f"{path} has other columns than this monkey-trt writes: move it away or choose another --out")
        for cells in reader:
            try:
                if len(cells) != len(ROW_FIELDS):
                    raise ValueError(f"{len(cells)} cells")
                row = row_from_cells(cells)
            except ValueError as e:
                raise MonkeyError(f"{path} line {reader.line_num} is damaged ({e}): it was edited outside monkey-trt") from None
            rows[row.key] = row
    return rows


# -- names ----------------------------------------------------------------------------------------
def _slug(text: str, limit: int = 40) -> str:
    s = re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-.")[:limit].strip("-.")
    return s or "x"


def _h(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:n]


def subject_dir(subject: str) -> str:
    return f"{_slug(subject, 48)}-{_h(subject, 6)}"


def image_name(key: Key, mask: bool = False) -> str:
    subject, prompt, seed, method, precision = key
    tag = method.replace("@", "-")
    return f"images/{subject_dir(subject)}/{precision}/s{seed}/{_slug(prompt)}-{_h(prompt)}-{tag}{'-mask' if mask else ''}.png"


def thumbnail_name(subject: str) -> str:
    return f"subjects/{subject_dir(subject)}.png"


# -- the folder -------------------------------------------------------------------------------------
class EvalStore:
    """An open --out folder (locked; see the module doc). Use as a context manager."""

    def __init__(self, out: Path, record: dict, rows: dict[Key, Row], stage: Path, stack: contextlib.ExitStack):
        self.out, self.record, self.rows, self.stage, self._stack = out, record, rows, stage, stack
        self._lines = {k: csv_line(row_cells(r)) for k, r in rows.items()}  # rows.csv, one text line per row
        self.tag = _h(json.dumps(record["settings"], sort_keys=True), 16)  # in every image we write

    # opening -----------------------------------------------------------------------------------
    @classmethod
    def open(cls, out: Path, settings: dict, precisions: dict[str, str], subjects: dict[str, str]) -> "EvalStore":
        """Check, lock and read OUT; refuse settings or inputs that differ from the rows already there."""
        out = Path(out).absolute()
        check_target(out, RECORD, record_files(), [RECORD, *OWN_FILES])
        for d in OWN_DIRS:
            p = out / d
            if os.path.lexists(p) and (p.is_symlink() or not p.is_dir()):
                raise MonkeyError(f"{out} holds {d}, which is not a folder monkey-trt can write into")
        make_dirs(out)
        stack = contextlib.ExitStack()
        try:
            try:
                stack.enter_context(folder_lock(out, LOCK_WAIT_S))
            except MonkeyError:
                raise MonkeyError(f"another process is writing in {out} (a running monkey-trt eval?): wait for it or use another --out") from None
            clean_stale_staging(out / STAGE_NAME)  # what a killed run left: ours by its marker, its process is gone
            stage = make_staging(out / STAGE_NAME)
            stack.callback(remove_staging, stage)
            record = _merged_record(out, settings, precisions, subjects)
            rows = read_rows_csv(out / ROWS) if ROWS in record["files"] and (out / ROWS).is_file() else {}
            store = cls(out, record, rows, stage, stack)
            store._write_record()
            return store
        except BaseException:
            stack.close()
            raise

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> "EvalStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # atomic writes -----------------------------------------------------------------------------
    def _atomic(self, name: str, data: bytes, sync_dir: bool = True) -> None:
        write_bytes_atomic(self.out / name, data, tmp_dir=self.stage, sync_dir=sync_dir)  # temp files in our staging folder

    def _write_record(self) -> None:
        self.record["updated_unix"] = round(time.time(), 3)
        self._atomic(RECORD, json.dumps(self.record, indent=1, ensure_ascii=False).encode("utf-8"))

    def write_file(self, name: str, data: bytes) -> Path:
        """One of OWN_FILES: recorded before it is first written, replaced atomically after."""
        if name not in OWN_FILES:
            raise ValueError(name)
        if name not in self.record["files"]:
            self.record["files"].append(name)
            self._write_record()
        self._atomic(name, data)
        return self.out / name

    # rows --------------------------------------------------------------------------------------
    def add_rows(self, rows: list[Row]) -> None:
        """Rows become done together: rows.csv is rewritten (atomically) with them."""
        for r in rows:
            cells = row_cells(r)
            self.rows[r.key], self._lines[r.key] = row_from_cells(cells), csv_line(cells)
        self.write_file(ROWS, "".join([csv_line(ROW_FIELDS), *self._lines.values()]).encode("utf-8"))

    # images ------------------------------------------------------------------------------------
    def _meta(self, key: Key, kind: str, extra: dict) -> str:
        return json.dumps({"key": list(key), "kind": kind, "run": self.tag, **extra}, ensure_ascii=False)

    def probe(self, name: str, key: Key, kind: str) -> dict | None:
        """None if `name` is missing; its metadata if it is our image for `key`; MonkeyError otherwise."""
        path = self.out / name
        if not os.path.lexists(path):
            return None
        info = _png_text(path) if path.is_file() and not path.is_symlink() else None
        meta = _parse_meta(info)
        if meta is None or meta.get("run") != self.tag or meta.get("key") != list(key) or meta.get("kind") != kind:
            raise MonkeyError(f"{path} exists and is not this run's image for it (monkey-trt did not write it, or wrote it "
                              "with other settings): move it away or use another --out")
        return meta

    def write_png(self, name: str, pixels: np.ndarray, key: Key, kind: str, **extra) -> None:
        """Write an 8-bit image ([H,W,3] RGB or [H,W] L) tagged with its case; never over a file not ours."""
        self.probe(name, key, kind)  # refuses a foreign file before anything is written
        info = PngInfo()
        info.add_text("Software", PNG_SOFTWARE)
        info.add_text(PNG_KEY, self._meta(key, kind, extra))
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG", pnginfo=info, compress_level=PNG_LEVEL)
        self._atomic(name, buf.getvalue(), sync_dir=False)

    def read_png(self, name: str, key: Key, kind: str) -> tuple[np.ndarray, dict] | None:
        """(pixels, metadata) of our image, None if missing."""
        meta = self.probe(name, key, kind)
        if meta is None:
            return None
        try:
            with Image.open(self.out / name) as im:
                im.load()
                return np.asarray(im), meta
        except Exception as e:
            raise MonkeyError(f"{self.out / name} cannot be read ({type(e).__name__}): move it away to have it made again") from None


def _png_text(path: Path) -> dict | None:
    try:
        with Image.open(path) as im:
            return dict(im.info) if im.format == "PNG" else None
    except Exception:
        return None


def _parse_meta(info: dict | None) -> dict | None:
    if not info or info.get("Software") != PNG_SOFTWARE:
        return None
    try:
        meta = json.loads(info.get(PNG_KEY, ""))
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None



def _merged_record(out: Path, settings: dict, precisions: dict[str, str], subjects: dict[str, str]) -> dict:
    """The record for this run: a new one, or the folder's own extended with new precisions/subjects."""
    fresh = {"written_by": WRITTEN_BY, "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "monkey_trt": __version__,
             "files": [RECORD], "settings": settings, "precisions": dict(precisions), "subjects": dict(subjects)}
    path = out / RECORD
    if not path.is_file():
        return fresh
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise MonkeyError(f"{path} is damaged (not JSON): move it away or use another --out") from None
    if not isinstance(old, dict) or old.get("schema") != SCHEMA or old.get("schema_version") != SCHEMA_VERSION:
        raise MonkeyError(f"{path} is another kind of monkey-trt output: use another --out")
    if old.get("settings") != settings:
        diff = sorted(k for k in set(settings) | set(old.get("settings") or {}) if (old.get("settings") or {}).get(k) != settings.get(k))
        raise MonkeyError(f"{out} holds an eval with other settings ({', '.join(diff)} differ): use the same options or another --out")
    for what, new, label in (("precisions", precisions, "the engine's {} graphs"), ("subjects", subjects, "subject {}")):
        have = old.get(what) or {}
        changed = sorted(k for k in new if k in have and have[k] != new[k])
        if changed:
            raise MonkeyError(f"{out}: {label.format(changed[0])} changed since its rows were computed: use another --out")
        have.update(new)
        old[what] = have
    old["files"] = [RECORD] + [n for n in old.get("files", []) if n in OWN_FILES]
    old["monkey_trt"] = __version__
    return old
