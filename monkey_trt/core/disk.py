"""A full disk is a user error, said in one line naming the disk, never a library's parse error.

Some writers report a full disk only indirectly: ONNX's shape inference (C++) writes a truncated model
without an error, and the quantizer then fails to parse it ("Wire format was corrupt"). So work that
writes big files checks its room before it starts (`check_room`), and a failure while the disk is
(nearly) full is reported as the full disk it is (`full_disk_is_an_error`). Stdlib only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from monkey_trt.core.errors import MonkeyError

MiB = 1 << 20
LOW_WATER = 64 * MiB  # a failure with less than this free on the disk is taken for a full disk
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def free_bytes(folder: str | os.PathLike) -> int:
    """Bytes this user may still write on the disk holding `folder` (its nearest existing parent)."""
    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def _mib(n: int) -> str:
    return f"{n / MiB:,.0f} MiB"


def check_room(folder: str | os.PathLike, need: int, what: str, shown: str | os.PathLike | None = None) -> None:
    """Refuse, before any work, when the disk holding `folder` has less than `need` bytes free for `what`;
    `shown`: the user's path on that disk named in the message (default `folder`)."""
    free = free_bytes(folder)
    if free < need:
        raise MonkeyError(f"not enough room on the disk holding {shown or folder}: {what} needs at least {_mib(need)}, "
                          f"{_mib(free)} free: free some space there and run again")


@contextlib.contextmanager
def full_disk_is_an_error(folder: str | os.PathLike, what: str, shown: str | os.PathLike | None = None) -> Iterator[None]:
    """Turn a failure of `what` into one line naming the disk when the disk holding `folder` is full: an
    OSError saying so, or any error while less than LOW_WATER is free (checked before the caller's temp
    files are removed). Other errors pass unchanged. `shown`: as for check_room."""
    try:
        yield
    except (MonkeyError, KeyboardInterrupt):
        raise
    except Exception as e:
        full = isinstance(e, OSError) and e.errno in FULL_ERRNOS
        try:
            free = free_bytes(folder)
        except OSError:
            free = None
        if not full and (free is None or free >= LOW_WATER):
            raise
        raise MonkeyError(f"the disk holding {shown or folder} filled up while {what} ({_mib(free or 0)} free): "
                          f"free some space there and run again (nothing was written)") from None
