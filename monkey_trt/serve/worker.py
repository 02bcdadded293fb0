"""One inference at a time per engine, a bounded queue in front of it, a deadline per request.

The engine's sessions are not shared between concurrent calls: every job runs on one dedicated
thread. `admit` (or `submit` without a slot) refuses (QueueFull -> 429 + Retry-After) when
`max_queue` requests already wait behind the running one. A request is admitted before its heavy steps
(reading its body, decoding its image, inference, encoding the result) and holds its `Slot` through all
of them, so the queue bound bounds memory too, not only inference. A job whose deadline passes while it
waits is dropped before it starts; one that is already running cannot be interrupted mid-step, so its
client gets 504 and the slot frees when the running step ends (the result is discarded).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from typing import Any


class QueueFull(Exception):
    def __init__(self, retry_after_s: int):
        super().__init__(f"the queue is full; retry in {retry_after_s}s")
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Exception):
    pass


class Slot:
    """One admitted request's room in the queue. The handler holds the slot from admission to its response;
    `share()` gives the job its own hold, from submission to its end. The room frees when every hold is
    released; releasing one hold twice changes nothing."""

    def __init__(self, worker: "InferenceWorker", holds: list[int] | None = None):
        self._worker = worker
        self._holds = holds if holds is not None else [1]  # shared by the slot and its shares
        self._released = False

    def share(self) -> "Slot":
        with self._worker._lock:
            if self._holds[0] <= 0:
                raise RuntimeError("slot already released")
            self._holds[0] += 1
        return Slot(self._worker, self._holds)

    def release(self) -> None:
        with self._worker._lock:
            if self._released:
                return
            self._released = True
            self._holds[0] -= 1
            if self._holds[0] == 0:
                self._worker._pending -= 1

    def __enter__(self) -> "Slot":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class InferenceWorker:
    """A single inference thread with a bounded queue (`max_queue` waiting + 1 running)."""

    def __init__(self, max_queue: int, name: str = "monkey-infer"):
        self.max_queue = max_queue
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._pending = 0  # queued + running
        self._ema_s = 1.0  # moving average of a job's run time, for Retry-After
        self._closed = False
        self._tickets = 0  # jobs submitted so far: a job's ticket is its number
        self._waiting: dict[int, None] = {}  # tickets submitted and not started (nor dropped), in order

    @property
    def depth(self) -> int:
        """Requests admitted and not finished (reading, queued or running)."""
        return self._pending

    def admit(self) -> Slot:
        """Room for one request (QueueFull if there is none); release the slot when the request is done."""
        with self._lock:
            if self._closed:
                raise QueueFull(1)
            if self._pending >= self.max_queue + 1:
                raise QueueFull(max(1, math.ceil(self._pending * self._ema_s)))
            self._pending += 1
        return Slot(self)

    def ahead(self, ticket: int) -> int | None:
        """How many jobs wait before job `ticket` (0: it runs next); None once it has started or was dropped."""
        with self._lock:
            if ticket not in self._waiting:
                return None
            return sum(1 for t in self._waiting if t < ticket)

    def _unwait(self, ticket: int) -> None:
        with self._lock:
            self._waiting.pop(ticket, None)

    def submit_sync(self, fn: Callable[[], Any], deadline: float | None = None, slot: Slot | None = None) -> Future:
        """Queue `fn` in `slot` (admitted already) or in a new one (QueueFull if there is no room); the future
        raises DeadlineExceeded if it started too late. `future.ticket`: its place in line (`ahead`)."""
        slot = self.admit() if slot is None else slot.share()  # the job's hold: released when the job ends
        with self._lock:
            ticket = self._tickets = self._tickets + 1
            self._waiting[ticket] = None

        def job():
            self._unwait(ticket)
            try:
                if deadline is not None and time.monotonic() > deadline:
                    raise DeadlineExceeded()
                t0 = time.perf_counter()
                out = fn()
                self._ema_s = 0.8 * self._ema_s + 0.2 * (time.perf_counter() - t0)
                return out
            finally:
                slot.release()

        try:
            fut = self._pool.submit(job)
        except RuntimeError:  # shut down meanwhile
            self._unwait(ticket)
            slot.release()
            raise QueueFull(1) from None

        def dropped(f: Future) -> None:  # never ran: `job` did not release
            if f.cancelled():
                self._unwait(ticket)
                slot.release()

        fut.add_done_callback(dropped)
        fut.ticket = ticket
        return fut

    async def run(self, fn: Callable[[], Any], timeout_s: float | None, slot: Slot | None = None,
                  on_submit: Callable[[int], None] | None = None) -> Any:
        """Run `fn` on the inference thread (in `slot` if given); DeadlineExceeded after `timeout_s` (queue wait included).
        `on_submit(ticket)`: called once the job is in line (a streamed request watches its place with `ahead`)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        fut = self.submit_sync(fn, deadline, slot)
        if on_submit is not None:
            on_submit(fut.ticket)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), timeout_s)
        except asyncio.TimeoutError:
            fut.cancel()  # drops it if it is still queued; a running job finishes and is discarded
            raise DeadlineExceeded() from None
        except CancelledError:
            raise DeadlineExceeded() from None

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the inference thread now (after the accepted jobs), outside the queue bound: loading
        and closing the engine, so that every GPU call of an engine comes from the one thread."""
        return self._pool.submit(fn).result()

    def close(self, wait: bool = True, last: Callable[[], Any] | None = None) -> None:
        """Refuse new jobs; with `wait`, finish the accepted ones first, then run `last` on the thread."""
        with self._lock:
            self._closed = True
        if last is not None:
            self._pool.submit(last)
        self._pool.shutdown(wait=wait)
