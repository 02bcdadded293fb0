"""One lock per pipeline: every public method of a pipeline is safe from any thread (issue 25, class 4).

A pipeline's runners own device buffers, IO bindings and per-request state (the size, the mask layer),
so calls from several threads run one at a time; the lock is re-entrant (a generation calls the
pipeline's own encoders, UNet and decoder). For parallel generations open one pipeline per thread.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


def locked(method: F) -> F:
    """`method` run under `self._lock` (a threading.RLock the class creates in __init__)."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return run  # type: ignore[return-value]
