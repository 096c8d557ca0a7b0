"""Giving freed heap back to the kernel once a burst of misses is over (glibc's malloc_trim).

A burst of misses (a cache filling, a flood of unique names) allocates many
short-lived objects: query and reply bytes, scans, callbacks. CPython frees
them, but glibc keeps the freed memory in its heap, where it stays resident
(and charged to the pod's memory cgroup) until malloc asks for it again. A
full cache does not need it. `malloc_trim(0)` returns the free pages of every
arena with madvise, leaving the live objects where they are.

When: on the once-a-second tick (periodic.py), after a second with at most
QUIET_MISSES misses that follows at least BURST_MISSES misses since the last
trim, and no more often than every MIN_TRIM_INTERVAL seconds. (Not after
startup: an idle agent's trim returned under 0.1 MiB.) A trim
walks the heap and stalls the loop while it does (about 10 ms over 80,000 live
chunks, 37 ms when it also returned 120 MiB, in a synthetic test): that is why
it waits for the burst to end and is rate-limited.

Where the C library has no malloc_trim (musl, another libc), nothing is
trimmed and `available` says so; the agent works the same, with more resident
memory after bursts.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from typing import Any, Final

BURST_MISSES: Final = 1000  # misses since the last trim that make one worthwhile (about 1 MiB of transients)
QUIET_MISSES: Final = 100  # misses in the last second at or below which a burst counts as over
MIN_TRIM_INTERVAL: Final = 10.0  # seconds between trims at least: a trim stalls the loop for milliseconds


def malloc_trim() -> Callable[[int], int] | None:
    """The C library's malloc_trim, or None where there is none (musl)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


class HeapTrimmer:
    """Decides, once a second, whether a burst of misses is over and the heap can be trimmed."""

    def __init__(
        self,
        trim: Callable[[int], int] | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`trim`: the C library's malloc_trim (`malloc_trim()`), or None where there is none."""
        self._trim = trim
        self._clock = clock
        self._last_misses = 0
        self._pending = 0  # misses since the last trim
        self._trimmed_at: float | None = None
        self.trims = 0  # trims done (`nodecache stats`, nodecache_heap_trims_total)
        self.trim_seconds = 0.0  # the time they took, summed: the event loop stalls while a trim runs

    @property
    def available(self) -> bool:
        """Whether this C library can trim (glibc can, musl cannot)."""
        return self._trim is not None

    def counts(self) -> dict[str, Any]:
        """What `nodecache stats` and the metrics show: trims so far, their time, whether this libc can trim."""
        return {"trims": self.trims, "seconds": round(self.trim_seconds, 6), "available": self.available}

    def tick(self, misses: int) -> bool:
        """Called each second with the misses so far; trims when a burst is over. True if it trimmed."""
        new, self._last_misses = misses - self._last_misses, misses
        self._pending += new
        if self._trim is None or new > QUIET_MISSES or self._pending < BURST_MISSES:
            return False
        now = self._clock()
        if self._trimmed_at is not None and now - self._trimmed_at < MIN_TRIM_INTERVAL:
            return False
        self._trim(0)
        self._trimmed_at = self._clock()
        self.trim_seconds += self._trimmed_at - now
        self.trims += 1
        self._pending = 0
        return True
