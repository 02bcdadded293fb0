"""A streamed request's progress: what its job reports on the inference thread, as events for its client.

Events (name, data), in order:
    queued  {"position"}                       jobs waiting ahead of this one (0: it runs next); again on each change
    stage   {"stage", "label", "progress"}     a stage starts (decode_upload, the method's stages, encode_png)
    step    {"stage", "step", "steps", "progress"}   after each UNet call of a pass
`progress` is the fraction of the work done, in [0, 1], rising. The answer (`result` or `error`) is sent by
`serve.stream`. Framework-free: the inference thread hands each event to the event loop (`call_soon_threadsafe`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

STAGE_LABELS = {
    "decode_upload": "reading the subject image",
    "encode_prompt": "encoding the prompt",
    "encode_subject": "encoding the subject",
    "batched_passes": "passes 1 and 2, batched",
    "mask_pass": "pass 1: finding the subject's region",
    "mask": "extracting the mask",
    "final_pass": "pass 2: masked IP-Adapter",
    "decode": "decoding the image",
    "decode_mask_pass": "decoding pass 1",
    "baseline_pass": "plain IP-Adapter baseline",
    "decode_baseline": "decoding the baseline",
    "encode_png": "encoding the PNGs",
}


class Watcher:
    """One streamed request's listener. `queued`/`started`/`stage`/`step` are called by the service and the
    method loop; `next_events` (on the event loop) waits for what they reported."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.ticket: int | None = None  # the job's place in line (InferenceWorker.ahead)
        self._events: deque[tuple[str, dict[str, Any]]] = deque()
        self._ready = asyncio.Event()
        self._index, self._total = 0, 1  # the method's current stage and its stage count

    # -- reported by the service and the method loop ---------------------------------------------
    def queued(self, ticket: int) -> None:
        """On the event loop: the job is in line."""
        self.ticket = ticket

    def started(self) -> None:
        """On the inference thread: the job starts (it decodes the upload first)."""
        self._emit("stage", {"stage": "decode_upload", "label": STAGE_LABELS["decode_upload"], "progress": 0.0})

    def stage(self, stage: str, index: int, total: int) -> None:
        """`run_monkey`'s progress(stage, index, total): a stage starts."""
        self._index, self._total = index, total
        self._emit("stage", {"stage": stage, "label": STAGE_LABELS.get(stage, stage.replace("_", " ")),
                             "progress": self._fraction(index)})

    def step(self, stage: str, done: int, steps: int) -> None:
        """`run_monkey`'s steps(stage, done, total): a UNet call of the current stage is done."""
        self._emit("step", {"stage": stage, "step": done, "steps": steps,
                            "progress": self._fraction(self._index + done / max(steps, 1))})

    def encoding(self) -> None:
        """On the event loop: the images are encoded as PNG (the last stage)."""
        self._push(("stage", {"stage": "encode_png", "label": STAGE_LABELS["encode_png"], "progress": self._fraction(self._total)}))

    def _fraction(self, done_stages: float) -> float:
        return round(min(1.0, done_stages / (self._total + 1)), 4)  # + 1: encode_png after the method's stages

    # -- the event loop's side ----------------------------------------------------------------------
    def _emit(self, name: str, data: dict[str, Any]) -> None:
        try:
            self.loop.call_soon_threadsafe(self._push, (name, data))
        except RuntimeError:  # the loop is closed: nobody listens any more
            pass

    def _push(self, event: tuple[str, dict[str, Any]]) -> None:
        self._events.append(event)
        self._ready.set()

    def wake(self) -> None:
        """On the event loop: stop a `next_events` wait (the job is done)."""
        self._ready.set()

    async def next_events(self, timeout_s: float | None) -> list[tuple[str, dict[str, Any]]]:
        """The events reported since the last call; waits up to `timeout_s` for one (or a `wake`)."""
        if not self._events:
            try:
                await asyncio.wait_for(self._ready.wait(), timeout_s)
            except asyncio.TimeoutError:
                pass
        self._ready.clear()
        out = list(self._events)
        self._events.clear()
        return out
