"""LRU caches for the two encoders: one subject, many prompts skips the image encoder.

`with_encoder_caches(pipe)` wraps the backend's networks: a `CachedNetworks` answers `encode_subject` (one entry per
image: several subjects and a background are several entries) and
`encode_prompt` from the caches and hands everything else to the pipeline, which it never changes; MONKEY
runs on the wrapper (`MonkeyPipeline.run_with`), so the method code calls the cached encoders without knowing. Keys are content hashes: the subject's decoded RGB pixels + the engine's
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


class CachedNetworks:
    """A pipeline's networks with memoised encoders: a wrapper, the pipeline itself is left as it is.

    Calling it runs MONKEY on the wrapper (the pipeline's checks and lock, `run_with`); every other attribute
    (manifest, info(), close(), the UNet, the decoder) is the pipeline's."""

    def __init__(self, pipe, caches: EncoderCaches):
        self.pipe, self.caches = pipe, caches
        self._preprocess = getattr(getattr(pipe, "manifest", None), "preprocess", None)

    def encode_subject(self, subject: Image.Image):
        key = subject_key(subject, self._preprocess)
        return self.caches.subject.get_or_compute(key, lambda: self.pipe.encode_subject(subject)).copy()

    def encode_prompt(self, prompt: str):
        text, truncated = self.caches.prompt.get_or_compute(prompt, lambda: self.pipe.encode_prompt(prompt))
        return text.copy(), truncated

    def __call__(self, request, subject, background: Image.Image | None = None, **kwargs):
        """MONKEY with cached encoders: `subject` one image or a list (each image is its own cache entry, the
        background too: runtime.method encodes one image per `encode_subject` call)."""
        if background is not None:
            kwargs["background"] = background
        run_with = getattr(self.pipe, "run_with", None)
        if run_with is None:  # a pipeline that runs only its own networks: uncached
            return self.pipe(request, subject, **kwargs)
        return run_with(self, request, subject, **kwargs)

    def __getattr__(self, name: str):  # only for what this wrapper does not define
        if name in ("pipe", "caches", "_preprocess"):
            raise AttributeError(name)
        return getattr(self.pipe, name)


def with_encoder_caches(pipe, subject_capacity: int = 64, prompt_capacity: int = 256) -> CachedNetworks:
    """`pipe`'s networks behind LRU caches of its two encoders (`.caches`: the counters)."""
    return CachedNetworks(pipe, EncoderCaches(subject_capacity, prompt_capacity))
