"""Output folders: the one mechanism for every folder monkey-trt writes (staging, records, ownership).

Rule: monkey-trt never deletes or overwrites a file it did not write.

An output folder (a generation, an engine directory, the tiny model) is built in a staging folder
next to its target and committed under a lock:

    stage = OutputStage.open(out, record="result.json")   # .<name>.monkey-staging-<pid>@<host>-<token>/stage/
    ...write files into stage.path, the record file listing them...
    stage.commit(files)                                    # or stage.discard()

* A new (or missing) target: the staging folder is renamed into place, one atomic step.
* An existing folder: only files recorded by the previous output's record are removed or
  replaced; anything else stays. A new file whose name a user's file already holds is refused
  with one line, before anything changes.
* A recorded file whose content no longer matches the sha256 its record holds (`digests`, next to
  `files`) is a user's file now: replacing it is refused with one line, before anything changes; an
  output that would only remove it keeps it. Records of earlier releases (no `digests`) are trusted
  by name, as before.
* Staging folders (`.<name>.monkey-staging-<pid>@<host>-<token>/`) hold a marker, STAGING_MARKER,
  written at creation: who made the folder (pid, host, boot id, pid namespace, the process's start
  time, a random token that the folder's name ends with). The payload is a sub-folder (`stage/`), so
  the marker never reaches an output. A later run on the same target removes a staging folder only
  when its marker proves it ours and its process gone (another boot, a dead pid, or a pid reused by a
  process started at another time); a folder without a valid marker, or made on another host or in
  another pid namespace, is never touched, whatever its name. (What monkey-trt 0.1.0 left,
  `.out.XXXXXXXX` and `.out.old-PID`, has no marker: it is left alone.)
* Concurrent writers to one target take turns on an flock of the parent folder: the last one
  wins, both succeed.
* Folders and files get the user's umask (mkdtemp alone would make them 0700).

Lean: stdlib only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

from monkey_trt.core.atomic import current_umask, fsync_dir, sha256_file
from monkey_trt.core.errors import MonkeyError

STAGING_TAG = ".monkey-staging-"
STAGING_MARKER = "monkey-staging.json"  # inside every staging folder: who made it (see read_staging_marker)
STAGING_PAYLOAD = "stage"  # the staging folder's sub-folder that becomes (or is merged into) the output
MARKER_MAX_BYTES = 4096
LOCK_TIMEOUT_S = 120.0


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
    except (OverflowError, ValueError):  # a pid no kernel hands out
        return False
    return True


def _boot_id() -> str:
    """This kernel boot's id ("" where /proc does not say)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    """This process's pid namespace ("pid:[4026531836]"; "" where /proc does not say): containers sharing
    the host's name (`--net=host`) still have pids of their own."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _start_time(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (/proc/<pid>/stat field 22); None where unknown."""
    try:
        text = Path(f"/proc/{int(pid)}/stat").read_text()
        return int(text[text.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _siblings(target: Path) -> list[Path]:
    """Everything next to `target` (nothing if its folder cannot be listed)."""
    try:
        return list(Path(target).parent.iterdir())
    except OSError:
        return []


def make_staging(target: Path) -> Path:
    """A new staging folder for `target`, next to it, with its marker; returns its payload folder
    (`<staging>/stage`, empty, the user's umask). Remove it with `remove_staging`."""
    target = Path(target)
    mask = current_umask()
    while True:
        token = secrets.token_hex(8)
        root = target.parent / f"{staging_prefix(target)}{staging_owner()}-{token}"
        try:
            os.mkdir(root, 0o700)  # private until the marker is in
        except FileExistsError:
            continue
        break
    try:
        record = {"written_by": WRITTEN_BY, "kind": "staging", "target": target.name, "pid": os.getpid(),
                  "host": socket.gethostname(), "boot_id": _boot_id(), "pid_ns": _pid_namespace(),
                  "start": _start_time(os.getpid()),
                  "token": token, "created_unix": round(time.time(), 3)}
        fd = os.open(root / STAGING_MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666 & ~mask)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        payload = root / STAGING_PAYLOAD
        os.mkdir(payload)
        os.chmod(payload, 0o777 & ~mask)
        os.chmod(root, 0o777 & ~mask)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return payload


def read_staging_marker(folder: Path, target: Path) -> dict | None:
    """The marker of staging folder `folder` for `target` if it proves monkey-trt made the folder, else None.

    Proof: `folder` is a real folder (not a symlink) named `<staging prefix of target>...-<token>`, its
    marker a regular file (not a symlink), at most MARKER_MAX_BYTES, a JSON object written by monkey-trt
    for this target whose token the folder's name ends with, with an int pid and a host.
    """
    folder, target = Path(folder), Path(target)
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode) or not folder.name.startswith(staging_prefix(target)):
            return None
        fd = os.open(folder / STAGING_MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > MARKER_MAX_BYTES:
                return None
            rec = json.loads(f.read(MARKER_MAX_BYTES + 1).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(rec, dict) or rec.get("written_by") != WRITTEN_BY or rec.get("kind") != "staging":
        return None
    token, pid = rec.get("token"), rec.get("pid")
    if (rec.get("target") != target.name or not isinstance(token, str) or len(token) < 16 or not token.isalnum()
            or not folder.name.endswith(f"-{token}") or type(pid) is not int or pid <= 0 or not isinstance(rec.get("host"), str)):
        return None
    return rec


def _owner_gone(rec: dict) -> bool:
    """The process that wrote marker `rec` has ended, as far as this host can tell (False: alive or unknown)."""
    if rec["host"] != socket.gethostname():
        return False  # another host's (or container's) on a shared volume: its pids are not ours to judge
    boot = _boot_id()
    if boot and isinstance(rec.get("boot_id"), str) and rec["boot_id"] and rec["boot_id"] != boot:
        return True  # written before a reboot
    ns, rec_ns = _pid_namespace(), rec.get("pid_ns")
    if ns and isinstance(rec_ns, str) and rec_ns and rec_ns != ns:
        return False  # another pid namespace (a container on this kernel): its pids are not ours
    if not _pid_alive(rec["pid"]):
        return True
    start, now = rec.get("start"), _start_time(rec["pid"])
    return type(start) is int and now is not None and start != now  # the pid now names another process


def remove_staging(payload_or_root: Path) -> None:
    """Remove a staging folder (given its payload or itself): the payload first, the marker last, so an
    interrupted removal still leaves a folder that proves itself ours."""
    p = Path(payload_or_root)
    root = p.parent if p.name == STAGING_PAYLOAD and STAGING_TAG in p.parent.name else p
    try:
        children = [c for c in root.iterdir() if c.name != STAGING_MARKER]
    except OSError:
        children = []
    for c in children:
        if c.is_dir() and not c.is_symlink():
            shutil.rmtree(c, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                c.unlink()
    with contextlib.suppress(OSError):
        (root / STAGING_MARKER).unlink()
    with contextlib.suppress(OSError):
        root.rmdir()


def clean_stale_staging(target: Path) -> list[Path]:
    """Remove the staging folders for `target` that a marker proves ours and whose process is gone
    (see read_staging_marker, _owner_gone). Anything else is never touched. Returns what was removed."""
    target = Path(target)
    removed = []
    for p in sorted(_siblings(target)):
        if not p.name.startswith(staging_prefix(target)):
            continue
        rec = read_staging_marker(p, target)
        if rec is None or not _owner_gone(rec):
            continue
        remove_staging(p)
        removed.append(p)
    return removed


def make_dirs(folder: Path) -> None:
    """mkdir -p with the user's umask (what mkdir does anyway; named for clarity)."""
    Path(folder).mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def folder_lock(folder: Path, timeout_s: float = LOCK_TIMEOUT_S, waiting: Callable[[], None] | None = None):
    """An exclusive flock on `folder` itself (no lock file left behind); `waiting()` is called once if
    another process holds it."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if waiting is not None:
                    waiting()
                    waiting = None
                if time.monotonic() > deadline:
                    raise MonkeyError(f"another process has been writing in {folder} for {timeout_s:.0f} s; try again later") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


RecordReader = Callable[[Path], set[str]]


WRITTEN_BY = "monkey-trt"  # records carry {"written_by": WRITTEN_BY, "files": [...]}


def record_files(key: str = "files", digests_key: str = "digests") -> RecordReader:
    """A reader for records that list their folder's files under `key` (result.json, tiny-model.json),
    with their sha256 under `digests_key` (`read.digests(record_path)`; see recorded_digests).

    A JSON file without `"written_by": "monkey-trt"` is someone else's: it records nothing.
    """

    def load(record_path: Path) -> dict | None:
        try:
            raw = json.loads(Path(record_path).read_text())
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            return None
        return raw if isinstance(raw, dict) and _written_by_us(raw) else None

    def read(record_path: Path) -> set[str]:
        raw = load(record_path)
        names = raw.get(key) if raw is not None else None
        return {n for n in (safe_relpath(x) for x in names) if n} if isinstance(names, list) else set()

    def digests(record_path: Path) -> dict[str, str]:
        raw = load(record_path)
        found = raw.get(digests_key) if raw is not None else None
        return valid_digests(found) if isinstance(found, dict) else {}

    read.digests = digests
    return read


def valid_digests(mapping: dict) -> dict[str, str]:
    """The entries of `mapping` that are a safe relative name -> a sha256 hex digest."""
    return {n: d for n, d in mapping.items()
            if safe_relpath(n) == n and isinstance(d, str) and len(d) == 64 and all(c in "0123456789abcdef" for c in d)}


def recorded_digests(recorded: RecordReader, record_path: Path) -> dict[str, str]:
    """The sha256 per file a record holds (empty for records without them: older releases, readers without `.digests`)."""
    read = getattr(recorded, "digests", None)
    if read is None:
        return {}
    try:
        return dict(read(record_path))
    except (OSError, ValueError, TypeError, AttributeError, RecursionError):
        return {}


def file_digests(folder: Path, names: Iterable[str]) -> dict[str, str]:
    """sha256 of each of `names` under `folder` (what a record stores under `digests`)."""
    return {n: sha256_file(Path(folder) / n) for n in names}


def _written_by_us(raw: dict) -> bool:
    """Our mark, or (result.json of monkey-trt 0.1.0, before the mark) our versions block."""
    versions = raw.get("versions")
    return raw.get("written_by") == WRITTEN_BY or (isinstance(versions, dict) and "monkey_trt" in versions)


class OutputStage:
    """A staging folder for one output folder `target` (see the module docstring)."""

    def __init__(self, target: Path, path: Path, record: str, recorded: RecordReader):
        self.target, self.path, self.record, self.recorded = target, path, record, recorded  # path: the payload folder

    @classmethod
    def open(cls, target: Path, record: str, recorded: RecordReader | None = None, names: Iterable[str] = ()) -> "OutputStage":
        """Check the target (against `names`, the files this output will have, where known), create
        missing parents, clean stale staging, make the staging folder."""
        target = Path(target).absolute()
        check_target(target, record, recorded or record_files(), names)
        make_dirs(target.parent)
        clean_stale_staging(target)
        return cls(target, make_staging(target), record, recorded or record_files())

    def discard(self) -> None:
        remove_staging(self.path)

    def __enter__(self) -> "OutputStage":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.path.parent.exists():  # not committed: an error or an interrupt
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
            self.discard()  # the marker and the staging folder (the payload is gone or merged)
        fsync_dir(self.target.parent)
        return self.target

    def _merge(self, names: list[str], keep: set[str] = frozenset()) -> None:
        """Replace an earlier output in place: only its recorded files are touched (see module doc).

        Order keeps every monkey-trt file on disk covered by the record on disk at each step:
        old-only files go first, then the new record, then the new files.
        """
        out = self.target
        check_target(out, self.record, self.recorded, names)
        old = previous_files(out, self.record, self.recorded)
        changed = changed_files(out, self.record, self.recorded, old - set(names) - keep)
        for n in sorted(old - set(names) - keep - set(changed)):  # a changed file is the user's now: kept
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


def changed_files(out: Path, record: str, recorded: RecordReader, names: Iterable[str]) -> dict[str, str]:
    """Those of `names` (recorded files, present) whose content no longer matches the record's sha256, or
    cannot be read to tell: name -> why, for a one-line refusal."""
    digests = recorded_digests(recorded, Path(out) / record)
    changed = {}
    for n in names:
        if n in digests and _is_own_file(out, n):
            try:
                if sha256_file(Path(out) / n) != digests[n]:
                    changed[n] = "which monkey-trt wrote but has been changed since"
            except OSError as e:
                changed[n] = f"which monkey-trt wrote but cannot read to check it is unchanged ({e.strerror or e})"
    return changed


def check_target(target: Path, record: str, recorded: RecordReader, names: Iterable[str] = ()) -> None:
    """Refuse, before any work where possible, what a commit cannot do: the target is a file, no
    folder can be made there, or one of `names` would overwrite a file monkey-trt did not write
    (a user's file, or one monkey-trt wrote that has been changed since: its sha256 differs from the record's)."""
    target = Path(target)
    names = list(names)
    if os.path.lexists(target) and not target.is_dir():
        raise MonkeyError(f"{target} exists and is not a folder")
    if target.is_dir():
        for d in (target, target.absolute().parent):  # the files go into target, the staging folder beside it
            if not os.access(d, os.W_OK | os.X_OK):
                raise MonkeyError(f"cannot write in {d}: permission denied (or a read-only file system)")
        old = previous_files(target, record, recorded)
        for n in names:
            if os.path.lexists(target / n) and n not in old:
                raise MonkeyError(f"{target} holds {n}, which monkey-trt did not write: move it away or choose another folder")
        changed = changed_files(target, record, recorded, [n for n in names if n in old])
        if changed:
            n = min(changed)
            raise MonkeyError(f"{target} holds {n}, {changed[n]}: move it away or choose another folder")
        for n in names:
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

