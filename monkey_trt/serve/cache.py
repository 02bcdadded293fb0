"""LRU caches for the two encoders: one subject, many prompts skips the image encoder.

`install_encoder_caches(pipe)` memoises `pipe.encode_subject` and `pipe.encode_prompt` on the
pipeline object itself (instance attributes shadow the methods), so the method code calls the cached
versions without knowing. Keys are content hashes: the subject's decoded RGB pixels + the engine's
preprocessing; the prompt text. Values are returned as copies, so a caller can never alter an
entry; a hit returns exactly what a miss computed, so outputs with and without the cache are equal.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from PIL import Image


class LRUCache:
    """A bounded, thread-safe mapping with hit/miss counters (`capacity` 0 = off)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get_or_compute(self, key: str, compute: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
        value = compute()  # outside the lock: one inference thread per engine, no stampede to fear
        if self.capacity > 0:
            with self._lock:
                self._items[key] = value
                self._items.move_to_end(key)
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)


def subject_key(image: Image.Image, preprocess: Any) -> str:
    """sha256 over the decoded pixels (mode, size, bytes) and the preprocessing that will be applied."""
    h = hashlib.sha256()
    h.update(f"{image.mode}|{image.size}|{preprocess!r}|".encode())
    h.update(image.tobytes())
    return h.hexdigest()


class EncoderCaches:
    """The subject (IP tokens) and prompt (text embeddings) caches of one pipeline."""

    def __init__(self, subject_capacity: int, prompt_capacity: int):
        self.subject = LRUCache(subject_capacity)
        self.prompt = LRUCache(prompt_capacity)

    def counters(self) -> dict[str, tuple[int, int]]:
        """cache name -> (hits, misses)."""
        return {"subject": (self.subject.hits, self.subject.misses), "prompt": (self.prompt.hits, self.prompt.misses)}


def install_encoder_caches(pipe, subject_capacity: int = 64, prompt_capacity: int = 256) -> EncoderCaches:
    """Memoise `pipe.encode_subject` / `pipe.encode_prompt` in place; returns the caches (counters)."""
    caches = EncoderCaches(subject_capacity, prompt_capacity)
    encode_subject, encode_prompt = pipe.encode_subject, pipe.encode_prompt  # the bound originals
    preprocess = getattr(getattr(pipe, "manifest", None), "preprocess", None)

    def cached_subject(subject: Image.Image):
        return caches.subject.get_or_compute(subject_key(subject, preprocess), lambda: encode_subject(subject)).copy()

    def cached_prompt(prompt: str):
        text, truncated = caches.prompt.get_or_compute(prompt, lambda: encode_prompt(prompt))
        return text.copy(), truncated

    pipe.encode_subject, pipe.encode_prompt = cached_subject, cached_prompt
    return caches
