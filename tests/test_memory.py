"""The heap trimmer: rate-limited, and on glibc it really gives freed memory back."""

import pytest

from workers.service.memory import HeapTrimmer


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_trims_at_most_once_per_interval() -> None:
    now = [100.0]
    trimmer = HeapTrimmer(every_s=5.0, clock=lambda: now[0])
    if not trimmer.available:
        pytest.skip("this C library has no malloc_trim")
    assert not trimmer.due()
    now[0] += 4.9
    assert not trimmer.due()
    now[0] += 0.2
    assert trimmer.due()
    trimmer.trim()
    assert not trimmer.due() and trimmer.trims == 1


def test_trim_returns_freed_heap_memory_to_the_os() -> None:
    trimmer = HeapTrimmer()
    if not trimmer.available:
        pytest.skip("this C library has no malloc_trim")
    # 60 kB blocks come from the heap (below glibc's mmap threshold); a block allocated
    # after them stops glibc from trimming the top of the heap by itself on free.
    blocks = [bytearray(60_000) for _ in range(3_000)]
    pin = bytearray(60_000)
    before = rss_mb()
    del blocks
    freed_only = rss_mb()
    trimmer.trim()
    after = rss_mb()
    assert freed_only > before - 50, "glibc already returned the memory: the test shows nothing"
    assert after < freed_only - 100, (before, freed_only, after)
    del pin
