"""Progress of an eval run with an ETA: a rich bar on a terminal (commands.progress.Bar: transient, so an error
line comes alone); elsewhere (logs, CI) one plain line on stdout every LINE_EVERY_S seconds and at the end."""

from __future__ import annotations

import time

from rich.console import Console

from monkey_trt.commands.progress import Bar
from monkey_trt.eval.protocol import Progress as ProgressBase

LINE_EVERY_S = 10.0


def eta_text(done: int, total: int, elapsed_s: float) -> str:
    """'ETA 3m05s' from the mean time per image so far ('' before the first one)."""
    if done <= 0 or total <= done:
        return "" if done <= 0 else "ETA 0s"
    left = elapsed_s / done * (total - done)
    m, s = divmod(int(round(left)), 60)
    h, m = divmod(m, 60)
    return f"ETA {h}h{m:02d}m" if h else f"ETA {m}m{s:02d}s" if m else f"ETA {s}s"


class EtaProgress(ProgressBase):
    def __init__(self, console: Console):
        self.console, self.bar = console, None
        self.total = self.done = 0
        self.t0 = self.last_line = 0.0

    def _line(self, text: str) -> None:
        Bar.line(f"eval: {text}", suffix="")

    def start(self, total: int, rescore: int) -> None:
        self.total, self.t0 = total, time.perf_counter()
        what = f"{total} images to generate" + (f", {rescore} from an interrupted run to score" if rescore else "")
        if self.console.is_terminal:
            self.bar = Bar(self.console, f"eval: {what}", total=max(total, 1), eta=True)
        else:
            self._line(what)
        self.last_line = time.perf_counter()

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.update(description=f"eval: {text}")
        else:
            self._line(text)

    def advance(self, unit, generated) -> None:
        self.done += 1
        if self.done == 1:  # the first image carries the model loading: time the rest
            self.t0 = time.perf_counter() - (generated.seconds if generated is not None else 0.0)
        what = f"{unit.precision} {unit.method.name}: {unit.subject.id}, seed {unit.seed}"
        if self.bar is not None:
            self.bar.update(advance=1, description=f"eval {what}")
            return
        now = time.perf_counter()
        if now - self.last_line >= LINE_EVERY_S or self.done == self.total:
            self.last_line = now
            per = (now - self.t0) / self.done
            self._line(f"{self.done}/{self.total} images ({what}), {per:.2f} s/image, {eta_text(self.done, self.total, now - self.t0)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
