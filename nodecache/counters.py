"""Counters the hot path can afford: plain ints, lists and dicts, no locks, no library.

Everything here is updated on the event loop thread and read on it too (the
metrics collector, the stats report), so nothing needs a lock. Exporting to
Prometheus happens at scrape time (metrics.py); recording is an int add.

- `Histogram`: fixed buckets (CoreDNS's), for durations measured on misses.
- `Latencies`: the most recent round trips of one upstream, for p50/p99.
- `TopCounter`: approximate top-N from sampled queries (names, clients).
- `Activity`: the sampling state the listeners share, the per-second query
  rate over the last minute, and the sampled cost of a cache hit.
- `counted_type` / `counted_rcode`: the keys of every per-type and per-rcode
  table, so a client that invents types cannot grow them.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Hashable
from typing import Final

# CoreDNS's plugin.TimeBuckets: 0.25 ms doubling up to ~8 s, so dashboards'
# histogram_quantile() queries read our histograms the same way.
TIME_BUCKETS: Final[tuple[float, ...]] = tuple(0.00025 * 2**i for i in range(16))

LATENCY_SAMPLES: Final = 1024  # recent round trips kept per upstream for p50/p99
TOP_TRACKED: Final = 1000  # distinct names (or clients) counted before the smaller half is dropped
SAMPLES_PER_SECOND: Final = 1000  # queries sampled per second at most, whatever the load
DECAY_INTERVAL: Final = 60.0  # top-N counts halve this often, so the list follows recent traffic
RATE_WINDOW: Final = 60.0  # "queries per second over the last minute"

# Query types counted under their own number: the ones CoreDNS's metrics name
# (plugin/metrics/vars/monitor.go) plus CAA. Any other of the 65,536 types a
# client may send is counted as OTHER_TYPE, so every table keyed by type
# (cache tallies, requests by type) holds at most len(COUNTED_TYPES) + 1 keys.
COUNTED_TYPES: Final = frozenset((1, 2, 5, 6, 12, 15, 16, 28, 33, 43, 46, 47, 48, 50, 64, 65, 251, 252, 255, 257))
OTHER_TYPE: Final = 0  # reserved (RFC 6895 3.1): no real query asks for it
# Rcodes counted under their own number: 0-23 covers every one assigned for
# messages (RFC 6895 2.3, extended ones included); the other 4,072 an upstream
# reply with an OPT record can carry are counted as OTHER_RCODE.
COUNTED_RCODES: Final = frozenset(range(24))
OTHER_RCODE: Final = -1  # not an rcode; shown as "other"


def counted_type(qtype: int) -> int:
    """The key `qtype` is counted under: itself if in COUNTED_TYPES, else OTHER_TYPE."""
    return qtype if qtype in COUNTED_TYPES else OTHER_TYPE


def counted_rcode(rcode: int) -> int:
    """The key `rcode` is counted under: itself if in COUNTED_RCODES, else OTHER_RCODE."""
    return rcode if rcode in COUNTED_RCODES else OTHER_RCODE


class Histogram:
    """Counts per bucket (upper bounds inclusive, as Prometheus's `le`), plus sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = TIME_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), ending with +Inf."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts):
            running += n
            out.append((bound, running))
        return out


class Latencies:
    """The last LATENCY_SAMPLES round trips; quantiles by nearest rank."""

    __slots__ = ("recent",)

    def __init__(self, size: int = LATENCY_SAMPLES) -> None:
        self.recent: deque[float] = deque(maxlen=size)

    def add(self, seconds: float) -> None:
        self.recent.append(seconds)

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0 < q <= 1) of what is kept, or None when empty."""
        if not self.recent:
            return None
        ordered = sorted(self.recent)
        rank = min(max(1, math.ceil(q * len(ordered))), len(ordered))
        return ordered[rank - 1]


class TopCounter:
    """Approximate heavy hitters over sampled events.

    Each sampled event adds its weight (the sampling interval, so counts
    estimate real query numbers). The table holds at most `limit` keys: when
    a new key would exceed it, the smaller half is dropped (a Misra-Gries
    style bound: a key that is really frequent keeps coming back, a rare one
    goes). `decay` halves every count, so old traffic fades out.
    """

    def __init__(self, limit: int = TOP_TRACKED) -> None:
        self.limit = limit
        self.counts: dict[Hashable, int] = {}

    def add(self, key: Hashable, weight: int = 1) -> None:
        counts = self.counts
        if key not in counts and len(counts) >= self.limit:
            keep = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)[: self.limit // 2]
            self.counts = counts = dict(keep)
        counts[key] = counts.get(key, 0) + weight

    def decay(self) -> None:
        self.counts = {k: v // 2 for k, v in self.counts.items() if v > 1}

    def top(self, n: int) -> list[tuple[Hashable, int]]:
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[:n]

    def clear(self) -> None:
        self.counts.clear()


class Activity:
    """What the listeners sample, and the query rate, kept off the hit path.

    A listener counts down `countdown()` queries and then calls `sample`, so
    at most about SAMPLES_PER_SECOND queries per second take the sampled
    branch: every query when the agent is quiet, one in `interval` under
    load. `tick` sets the interval from the last second's rate; a burst
    within a second doubles it each time another SAMPLES_PER_SECOND samples
    were taken, so a sudden load is sampled sparsely within milliseconds.
    The gaps are random (mean `interval`), so a workload that repeats a
    fixed sequence of names cannot alias with the sampling.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.interval = 1
        self.names = TopCounter()
        self.clients = TopCounter()
        self.sampled = 0
        self._since_tick = 0
        self.hit_seconds = 0.0  # summed over sampled hits since the last tick
        self.hit_samples = 0
        self.hit_mean = 0.0  # mean duration of a sampled hit, as of the last tick
        self._history: deque[tuple[float, int]] = deque()
        self._decayed = clock()
        self._rng = random.Random()

    def countdown(self) -> int:
        """Queries until the next sample: random, with mean `interval`."""
        i = self.interval
        return 1 if i <= 1 else self._rng.randint(1, 2 * i - 1)

    def sample(self, lname: bytes | None, client: str | None) -> None:
        """Count one sampled query for the top-N tables, weighted by the interval."""
        self.sampled += 1
        self._since_tick += 1
        if self._since_tick >= SAMPLES_PER_SECOND:
            self.interval *= 2
            self._since_tick = 0
        if lname is not None:
            self.names.add(lname, self.interval)
        if client is not None:
            self.clients.add(client, self.interval)

    def hit_took(self, seconds: float) -> None:
        self.hit_seconds += seconds
        self.hit_samples += 1

    def tick(self, total_queries: int) -> None:
        """Once a second: the rate history, the sampling interval, the decay."""
        now = self.clock()
        history = self._history
        history.append((now, total_queries))
        while len(history) > 2 and now - history[1][0] >= RATE_WINDOW:
            history.popleft()
        if len(history) >= 2:
            (t0, n0), (t1, n1) = history[-2], history[-1]
            rate = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
            self.interval = max(1, int(rate // SAMPLES_PER_SECOND))
        self._since_tick = 0
        if self.hit_samples:
            self.hit_mean = self.hit_seconds / self.hit_samples
            self.hit_seconds, self.hit_samples = 0.0, 0
        if now - self._decayed >= DECAY_INTERVAL:
            self.names.decay()
            self.clients.decay()
            self._decayed = now

    def rate(self) -> float:
        """Queries per second over (about) the last minute; 0 before two ticks."""
        history = self._history
        if len(history) < 2:
            return 0.0
        (t0, n0), (t1, n1) = history[0], history[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
