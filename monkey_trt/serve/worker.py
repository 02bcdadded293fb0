"""One inference at a time per engine, a bounded queue in front of it, a deadline per request.

The engine's sessions are not shared between concurrent calls: every job runs on one dedicated
thread. `submit` refuses (QueueFull -> 429 + Retry-After) when `max_queue` jobs already wait behind
the running one. A job whose deadline passes while it waits is dropped before it starts; one that is
already running cannot be interrupted mid-step, so its client gets 504 and the slot frees when the
running step ends (the result is discarded).
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


class InferenceWorker:
    """A single inference thread with a bounded queue (`max_queue` waiting + 1 running)."""

    def __init__(self, max_queue: int, name: str = "monkey-infer"):
        self.max_queue = max_queue
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._pending = 0  # queued + running
        self._ema_s = 1.0  # moving average of a job's run time, for Retry-After
        self._closed = False

    @property
    def depth(self) -> int:
        """Jobs accepted and not finished (queued + running)."""
        return self._pending

    def _admit(self) -> None:
        with self._lock:
            if self._closed:
                raise QueueFull(1)
            if self._pending >= self.max_queue + 1:
                raise QueueFull(max(1, math.ceil(self._pending * self._ema_s)))
            self._pending += 1

    def submit_sync(self, fn: Callable[[], Any], deadline: float | None = None) -> Future:
        """Queue `fn` (QueueFull if there is no room); the future raises DeadlineExceeded if it started too late."""
        self._admit()

        def job():
            try:
                if deadline is not None and time.monotonic() > deadline:
                    raise DeadlineExceeded()
                t0 = time.perf_counter()
                out = fn()
                self._ema_s = 0.8 * self._ema_s + 0.2 * (time.perf_counter() - t0)
                return out
            finally:
                with self._lock:
                    self._pending -= 1

        try:
            fut = self._pool.submit(job)
        except RuntimeError:  # shut down meanwhile
            with self._lock:
                self._pending -= 1
            raise QueueFull(1) from None
        fut.add_done_callback(self._release_if_cancelled)
        return fut

    def _release_if_cancelled(self, fut: Future) -> None:
        if fut.cancelled():  # never ran: `job`'s finally did not release the slot
            with self._lock:
                self._pending -= 1

    async def run(self, fn: Callable[[], Any], timeout_s: float | None) -> Any:
        """Run `fn` on the inference thread; DeadlineExceeded after `timeout_s` (queue wait included)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        fut = self.submit_sync(fn, deadline)
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
