"""Progress for long steps: rich spinners/bars on stderr when it is a terminal (transient: cleared
before any error line, which then comes alone); otherwise one plain line per step on stdout (logs,
CI, pipes), so a 90 s first run is never silent and stderr still holds only the error line."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

Step = Callable[[str, int, int], None]  # (what, steps done, steps in all)


@contextlib.contextmanager
def status(console: Console, message: str) -> Iterator[Callable[[str], None]]:
    """A spinner with `message`; yields update(text). Off a terminal: each distinct text as one line."""
    if console.is_terminal:
        with console.status(message) as s:
            yield lambda text: s.update(text)
        return
    last = [message]
    _line(message)

    def update(text: str) -> None:
        if text != last[0]:
            last[0] = text
            _line(text)

    yield update


@contextlib.contextmanager
def steps(console: Console, title: str) -> Iterator[Step]:
    """A transient progress bar (cleared on success and on error, so an error line comes alone);
    yields step(what, done, total). Off a terminal: one line per distinct `what`."""
    if not console.is_terminal:
        with status(console, title) as update:
            yield lambda what, done, total: update(f"{title}: {what} ({done + 1}/{total})")
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(title, total=None)
        yield lambda what, done, total: bar.update(task, description=f"{title}: {what}", completed=done, total=total)


def _line(text: str) -> None:
    sys.stdout.write(f"{text} ...\n")
    sys.stdout.flush()
