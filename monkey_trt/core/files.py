"""Atomic writes and the one mechanism for every output folder monkey-trt writes.

Rule: monkey-trt never deletes or overwrites a file it did not write.

An output folder (a generation, an engine directory, the tiny model) is built in a staging folder
next to its target and committed under a lock:

    stage = OutputStage.open(out, record="result.json")   # .<name>.monkey-staging-<pid>-<rand>/
    ...write files into stage.path, the record file listing them...
    stage.commit(files)                                    # or stage.discard()

* A new (or missing) target: the staging folder is renamed into place, one atomic step.
* An existing folder: only files recorded by the previous output's record are removed or
  replaced; anything else stays. A new file whose name a user's file already holds is refused
  with one line, before anything changes.
* Staging folders (`.<name>.monkey-staging-<pid>@<host>-<random>`) of dead processes on this host
  (kill -9, power loss) are removed by the next run on the same target; they are dot-names with a
  recognisable tag and never look like outputs.
* Concurrent writers to one target take turns on an flock of the parent folder: the last one
  wins, both succeed.
* Folders get the user's umask (mkdtemp alone would make them 0700).

Lean: stdlib only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

from monkey_trt.core.errors import MonkeyError

STAGING_TAG = ".monkey-staging-"
LOCK_TIMEOUT_S = 120.0


# -- single files -------------------------------------------------------------------------
def write_bytes_atomic(path: Path, data) -> Path:
    """Write a bytes-like object (incl. TensorRT IHostMemory) to a temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
    _fsync_dir(path.parent)
    return path


def write_json_atomic(path: Path, obj) -> Path:
    return write_bytes_atomic(path, json.dumps(obj, indent=1).encode())


def _fsync_dir(folder: Path) -> None:
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


# -- names --------------------------------------------------------------------------------
def safe_relpath(name: object) -> str | None:
    """`name` if it is a plain relative POSIX path that stays inside its folder, else None.

    Refused: non-strings, empty, absolute, `..`/`.` components, backslashes, NUL, empty components.
    """
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name or name.startswith("/"):
        return None
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    return str(PurePosixPath(name))


def inside(root: Path, name: str) -> bool:
    """root/name resolves (symlinks followed) to a path inside root."""
    root_real = Path(root).resolve()
    target = (Path(root) / name).resolve()
    return target != root_real and root_real in target.parents


def _is_own_file(root: Path, name: str) -> bool:
    """root/name is a regular file (not a symlink) reached through real folders inside root."""
    path = Path(root) / name
    for parent in reversed(path.relative_to(root).parents[:-1]):  # every folder between root and the file
        p = Path(root) / parent
        if p.is_symlink() or not p.is_dir():
            return False
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


# -- staging folders ----------------------------------------------------------------------
def staging_prefix(target: Path) -> str:
    return f".{Path(target).name}{STAGING_TAG}"


def _host() -> str:
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in socket.gethostname()) or "localhost"


def staging_owner(pid: int | None = None) -> str:
    """`<pid>@<host>`: the part of a staging name that says which process made it."""
    return f"{os.getpid() if pid is None else pid}@{_host()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _siblings(target: Path) -> list[Path]:
    """Everything next to `target` (nothing if its folder cannot be listed)."""
    try:
        return list(Path(target).parent.iterdir())
    except OSError:
        return []


def clean_stale_staging(target: Path) -> list[Path]:
    """Remove staging folders for `target` whose owning process on this host is gone (another host's or
    container's, on a shared volume, are left alone). Returns what was removed."""
    target = Path(target)
    prefix = staging_prefix(target)
    removed = []
    for p in _siblings(target):
        if not p.name.startswith(prefix):
            continue
        owner = p.name[len(prefix):].rsplit("-", 1)[0]  # <pid>@<host>-<mkdtemp random, no '-'>
        pid_text, _, host = owner.partition("@")
        if not pid_text.isdigit() or host != _host() or _pid_alive(int(pid_text)):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


# monkey-trt 0.1.0 staged into `.<name>.<mkdtemp random>` and set the old output aside as
# `.<name>.old-<pid>`. Such a folder is ours only if it holds nothing but what 0.1.0 wrote there.
_LEGACY_STAGING = r"^\.{name}\.(?:old-(?P<pid>\d+)|[a-z0-9_]{{8}})$"
_LEGACY_OUTPUT_NAMES = frozenset(
    ["monkey.png", "mask.png", "overlay.png", "ipadapter.png", "grid.png", "arrays.npz", "result.json",  # generate
     "manifest.json", "tokenizer", "base", "ip-adapter", "subject.png"]  # export, tiny model
    + [f for n in ("text_encoder", "image_encoder", "unet", "vae_decoder") for f in (f"{n}.onnx", f"{n}.onnx.data", f".{n}")]
)


def clean_legacy_staging(target: Path) -> list[Path]:
    """Remove what an interrupted monkey-trt 0.1.0 left next to `target` (`.out.XXXXXXXX`,
    `.out.old-PID` of a dead PID): only folders holding nothing but 0.1.0's own output names."""
    import re

    target = Path(target)
    pattern = re.compile(_LEGACY_STAGING.format(name=re.escape(target.name)))
    removed = []
    for p in _siblings(target):
        m = pattern.match(p.name)
        if m is None or p.is_symlink() or not p.is_dir():
            continue
        if m.group("pid") and _pid_alive(int(m.group("pid"))):
            continue
        try:
            if not {c.name for c in p.iterdir()} <= _LEGACY_OUTPUT_NAMES:
                continue
        except OSError:
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def make_dirs(folder: Path) -> None:
    """mkdir -p with the user's umask (what mkdir does anyway; named for clarity)."""
    Path(folder).mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def folder_lock(folder: Path, timeout_s: float = LOCK_TIMEOUT_S):
    """An exclusive flock on `folder` itself (no lock file left behind)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise MonkeyError(f"another process has been writing in {folder} for {timeout_s:.0f} s; try again later") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


RecordReader = Callable[[Path], set[str]]


WRITTEN_BY = "monkey-trt"  # records carry {"written_by": WRITTEN_BY, "files": [...]}


def record_files(key: str = "files") -> RecordReader:
    """A reader for records that list their folder's files under `key` (result.json, tiny-model.json).

    A JSON file without `"written_by": "monkey-trt"` is someone else's: it records nothing.
    """

    def read(record_path: Path) -> set[str]:
        try:
            raw = json.loads(record_path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            return set()
        if not isinstance(raw, dict) or not _written_by_us(raw):
            return set()
        names = raw.get(key)
        return {n for n in (safe_relpath(x) for x in names) if n} if isinstance(names, list) else set()

    return read


def _written_by_us(raw: dict) -> bool:
    """Our mark, or (result.json of monkey-trt 0.1.0, before the mark) our versions block."""
    versions = raw.get("versions")
    return raw.get("written_by") == WRITTEN_BY or (isinstance(versions, dict) and "monkey_trt" in versions)


class OutputStage:
    """A staging folder for one output folder `target` (see the module docstring)."""

    def __init__(self, target: Path, path: Path, record: str, recorded: RecordReader):
        self.target, self.path, self.record, self.recorded = target, path, record, recorded

    @classmethod
    def open(cls, target: Path, record: str, recorded: RecordReader | None = None, names: Iterable[str] = ()) -> "OutputStage":
        """Check the target (against `names`, the files this output will have, where known), create
        missing parents, clean stale staging, make the staging folder."""
        target = Path(target).absolute()
        check_target(target, record, recorded or record_files(), names)
        make_dirs(target.parent)
        clean_stale_staging(target)
        clean_legacy_staging(target)
        path = Path(tempfile.mkdtemp(prefix=f"{staging_prefix(target)}{staging_owner()}-", dir=target.parent))
        os.chmod(path, 0o777 & ~current_umask())
        return cls(target, path, record, recorded or record_files())

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> "OutputStage":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.path.exists():  # not committed: an error or an interrupt
            self.discard()

    def commit(self, files: Iterable[str], keep: Iterable[str] = ()) -> Path:
        """Move the staged `files` (relative names; the record among them) into the target.

        `keep`: files of the earlier output that the new record lists again unchanged (an update in
        place, e.g. adding a precision to an engine directory): left where they are.
        """
        files = list(files)
        names = [safe_relpath(f) for f in files]
        if None in names or self.record not in names:
            raise ValueError(f"bad staged file list {files!r} (the record {self.record} must be in it)")
        with folder_lock(self.target.parent):
            if not os.path.lexists(self.target):
                os.rename(self.path, self.target)
            else:
                self._merge(names, set(keep))
                self.discard()
        _fsync_dir(self.target.parent)
        return self.target

    def _merge(self, names: list[str], keep: set[str] = frozenset()) -> None:
        """Replace an earlier output in place: only its recorded files are touched (see module doc).

        Order keeps every monkey-trt file on disk covered by the record on disk at each step:
        old-only files go first, then the new record, then the new files.
        """
        out = self.target
        check_target(out, self.record, self.recorded, names)
        old = previous_files(out, self.record, self.recorded)
        for n in sorted(old - set(names) - keep):
            (out / n).unlink(missing_ok=True)
            _remove_empty_parents(out, n)
        for n in [self.record] + [n for n in names if n != self.record]:
            make_dirs((out / n).parent)
            os.replace(self.path / n, out / n)


def _remove_empty_parents(root: Path, name: str) -> None:
    for parent in PurePosixPath(name).parents[:-1]:
        try:
            (root / parent).rmdir()
        except OSError:
            return


def previous_files(out: Path, record: str, recorded: RecordReader) -> set[str]:
    """The files an earlier output in `out` recorded that are still its own regular files."""
    if not _is_own_file(out, record):
        return set()
    names = recorded(out / record)
    return {n for n in names | {record} if _is_own_file(out, n)} if names else set()


def check_target(target: Path, record: str, recorded: RecordReader, names: Iterable[str] = ()) -> None:
    """Refuse, before any work where possible, what a commit cannot do: the target is a file, no
    folder can be made there, or one of `names` would overwrite a file monkey-trt did not write."""
    target = Path(target)
    if os.path.lexists(target) and not target.is_dir():
        raise MonkeyError(f"{target} exists and is not a folder")
    if target.is_dir():
        old = previous_files(target, record, recorded)
        for n in names:
            if os.path.lexists(target / n) and n not in old:
                raise MonkeyError(f"{target} holds {n}, which monkey-trt did not write: move it away or choose another folder")
            for parent in PurePosixPath(n).parents[:-1]:
                p = target / parent
                if os.path.lexists(p) and (p.is_symlink() or not p.is_dir()):
                    raise MonkeyError(f"{target} holds {parent}, which is not a folder monkey-trt can write into")
        return
    anc = target.absolute().parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise MonkeyError(f"cannot create {target}: {anc} is not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise MonkeyError(f"cannot write in {anc}: permission denied")


def staged_files(folder: Path) -> list[str]:
    """Every regular file under `folder`, as sorted relative POSIX names."""
    folder = Path(folder)
    return sorted(str(p.relative_to(folder).as_posix()) for p in folder.rglob("*") if p.is_file() and not p.is_symlink())

