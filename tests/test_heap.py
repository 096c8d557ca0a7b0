"""HeapTrimmer: freed heap goes back to the kernel once a burst of misses is over, rate-limited."""

from __future__ import annotations

from nodecache.heap import BURST_MISSES, MIN_TRIM_INTERVAL, QUIET_MISSES, HeapTrimmer, malloc_trim


class FakeTrim:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, pad: int) -> int:
        self.calls.append(pad)
        return 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _trimmer() -> tuple[HeapTrimmer, FakeTrim, Clock]:
    trim, clock = FakeTrim(), Clock()
    return HeapTrimmer(trim, clock), trim, clock


def test_a_quiet_agent_never_trims() -> None:
    heap, trim, clock = _trimmer()
    for _ in range(60):
        clock.now += 1
        assert heap.tick(0) is False
    assert trim.calls == []


def test_no_trim_while_a_burst_goes_on_then_one_when_it_is_over() -> None:
    heap, trim, clock = _trimmer()
    misses = 0
    for _ in range(5):  # 5 s of a fill: many misses every second
        clock.now += 1
        misses += 5000
        assert heap.tick(misses) is False
    clock.now += 1
    assert heap.tick(misses + QUIET_MISSES) is True
    assert trim.calls == [0] and heap.trims == 1


def test_a_few_misses_never_trigger_a_trim() -> None:
    heap, trim, clock = _trimmer()
    misses = 0
    for _ in range(100):
        clock.now += 1
        misses += 5
        heap.tick(misses)
    assert misses < BURST_MISSES and trim.calls == []


def test_trims_are_rate_limited_and_a_deferred_one_still_happens() -> None:
    heap, trim, clock = _trimmer()
    clock.now += 1
    heap.tick(BURST_MISSES * 2)
    clock.now += 1
    assert heap.tick(BURST_MISSES * 2) is True  # the first burst is over
    clock.now += 1
    heap.tick(BURST_MISSES * 4)  # another one, right after
    clock.now += 1
    assert heap.tick(BURST_MISSES * 4) is False  # over, but too soon after the last trim
    clock.now += MIN_TRIM_INTERVAL
    assert heap.tick(BURST_MISSES * 4) is True
    assert len(trim.calls) == 2


def test_without_malloc_trim_nothing_is_trimmed() -> None:
    heap = HeapTrimmer(None, Clock())  # as on musl, where the C library has none
    assert heap.available is False
    assert heap.tick(BURST_MISSES * 10) is False and heap.tick(BURST_MISSES * 10) is False
    assert heap.trims == 0


def test_glibc_trim_is_found_and_runs() -> None:
    heap = HeapTrimmer(malloc_trim())
    assert heap.available  # this machine's libc is glibc
    heap.tick(BURST_MISSES)
    assert heap.tick(BURST_MISSES) is True
