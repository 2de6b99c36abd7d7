"""Handing freed heap memory back to the operating system.

The embedder's activations change size with every batch (sentence lengths vary), and glibc
keeps the freed chunks in its heaps instead of returning them, so a router's RSS creeps up
for as long as it runs. Calling ``malloc_trim(0)`` every few seconds returns them: over
20,000 SST-2 sentences in batches of 32 the embedder's RSS rose 752 → 818 MB without it and
stayed between 597 and 697 MB with it; one call takes about 4 ms (scripts/bench_service.py
``--rss-queries`` measures the whole service).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable

DEFAULT_TRIM_EVERY_S = 5.0


def _malloc_trim() -> Callable[[], bool] | None:
    """glibc's malloc_trim(0), or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: bool(fn(0))


class HeapTrimmer:
    """Trims the heap at most once every ``every_s`` seconds (``due`` is cheap; ``trim``
    takes milliseconds, so the router runs it off the event loop)."""

    def __init__(
        self, every_s: float = DEFAULT_TRIM_EVERY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.every_s, self._clock = every_s, clock
        self._trim = _malloc_trim()
        self._last = clock()
        self.trims = 0

    @property
    def available(self) -> bool:
        return self._trim is not None

    def due(self) -> bool:
        return self._trim is not None and self._clock() - self._last >= self.every_s

    def trim(self) -> bool:
        """Trim now; True when memory was given back."""
        self._last = self._clock()
        if self._trim is None:
            return False
        self.trims += 1
        return self._trim()
