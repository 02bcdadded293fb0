"""How busy the machine was around a benchmark: timings on a shared machine are not comparable.

Two figures, both Linux (/proc; None elsewhere):
  load_average_before  the 1/5/15-minute load averages when bench started (the minute before it);
  others_cores         CPU time that other processes used while bench ran, in cores: the machine's busy
                       time (/proc/stat) less this process's own (os.times), over the wall time.
bench records both in its JSON (`machine.load`) and warns when the machine was busy (`busy_warning`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

BUSY_CORES = 0.25  # others using a quarter of a core or more (on average) make the timings doubtful


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat's `cpu` line."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest time is inside user)
    return total - idle, total


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class LoadWatch:
    """Started before the benchmark, `stop()`ped after it."""

    before: tuple[float, float, float] | None
    ticks: tuple[int, int] | None
    own: float
    wall: float
    others_cores: float | None = None

    @classmethod
    def start(cls) -> "LoadWatch":
        try:
            before = tuple(round(x, 2) for x in os.getloadavg())
        except OSError:
            before = None
        return cls(before, _cpu_ticks(), _own_seconds(), time.perf_counter())

    def stop(self) -> "LoadWatch":
        end, own, wall = _cpu_ticks(), _own_seconds(), time.perf_counter()
        if self.ticks is not None and end is not None and wall > self.wall:
            hz = os.sysconf("SC_CLK_TCK")
            busy_s = (end[0] - self.ticks[0]) / hz
            self.others_cores = round(max(0.0, busy_s - (own - self.own)) / (wall - self.wall), 3)
        return self

    def to_json(self) -> dict:
        return {"load_average_before": list(self.before) if self.before else None, "others_cores": self.others_cores,
                "cpu_count": os.cpu_count()}

    def busy_warning(self) -> str | None:
        """A line saying the machine was busy (so the figures may not compare), or None."""
        why = []
        if self.others_cores is not None and self.others_cores >= BUSY_CORES:
            why.append(f"other processes used {self.others_cores:.2f} of {os.cpu_count()} cores while it ran")
        if self.before is not None and self.before[0] >= BUSY_CORES + 0.5 * (os.cpu_count() or 1):
            why.append(f"the load average was {self.before[0]:.2f} when it started")
        if not why:
            return None
        return f"the machine was busy ({'; '.join(why)}): these timings may not compare with another run's"
