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
    TimeRemainingColumn,
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


class Bar:
    """A transient rich progress bar on a terminal (cleared when closed, so an error line comes alone); off a
    terminal nothing is drawn and the caller prints lines (`line`). `eta`: elapsed and remaining-time columns."""

    def __init__(self, console: Console, title: str, total: int | None = None, eta: bool = False) -> None:
        self.on_terminal = console.is_terminal
        self._bar, self._task = None, None
        if self.on_terminal:
            columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
            if eta:
                columns += [TextColumn("ETA"), TimeRemainingColumn()]
            self._bar = Progress(*columns, console=console, transient=True)
            self._bar.start()
            self._task = self._bar.add_task(title, total=total)

    def update(self, **fields) -> None:
        """rich's task fields (description, advance, completed, total); nothing off a terminal."""
        if self._bar is not None:
            self._bar.update(self._task, **fields)

    @staticmethod
    def line(text: str, suffix: str = " ...") -> None:
        sys.stdout.write(f"{text}{suffix}\n")
        sys.stdout.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


@contextlib.contextmanager
def steps(console: Console, title: str) -> Iterator[Step]:
    """A transient progress bar (cleared on success and on error, so an error line comes alone);
    yields step(what, done, total). Off a terminal: one line per distinct `what`."""
    if not console.is_terminal:
        with status(console, title) as update:
            yield lambda what, done, total: update(f"{title}: {what} ({done + 1}/{total})")
        return
    bar = Bar(console, title)
    try:
        yield lambda what, done, total: bar.update(description=f"{title}: {what}", completed=done, total=total)
    finally:
        bar.close()


def _line(text: str) -> None:
    Bar.line(text)
