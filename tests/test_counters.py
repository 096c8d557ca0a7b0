"""The plain counters behind metrics and stats: histogram, latencies, top-N, sampling and rate."""

from __future__ import annotations

import random

from nodecache.counters import (
    DECAY_INTERVAL,
    SAMPLES_PER_SECOND,
    TIME_BUCKETS,
    Activity,
    Histogram,
    Latencies,
    TopCounter,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_histogram_bounds_are_inclusive_like_prometheus_le() -> None:
    h = Histogram()
    for v in (0.0001, TIME_BUCKETS[0], TIME_BUCKETS[0] * 1.01, 100.0):
        h.observe(v)
    cum = dict(h.cumulative())
    assert cum[TIME_BUCKETS[0]] == 2  # 0.25 ms itself counts as <= 0.25 ms
    assert cum[TIME_BUCKETS[1]] == 3
    assert cum[float("inf")] == h.count == 4
    assert abs(h.sum - (0.0001 + TIME_BUCKETS[0] * 2.01 + 100.0)) < 1e-9
    assert TIME_BUCKETS[0] == 0.00025 and len(TIME_BUCKETS) == 16  # CoreDNS's buckets


def test_latency_quantiles_by_nearest_rank_over_recent_samples() -> None:
    lat = Latencies(size=100)
    assert lat.quantile(0.5) is None
    for ms in range(1, 201):  # only the last 100 (101..200) are kept
        lat.add(ms / 1000)
    assert lat.quantile(0.5) == 0.150
    assert lat.quantile(0.99) == 0.199
    assert lat.quantile(1.0) == 0.200


def test_top_counter_keeps_heavy_hitters_within_its_bound() -> None:
    top = TopCounter(limit=50)
    rng = random.Random(1)
    for i in range(20000):
        if i % 4 == 0:
            top.add("popular")
        elif i % 10 == 1:
            top.add("second")
        else:
            top.add(f"rare-{rng.randrange(100000)}")
        assert len(top.counts) <= 50
    assert [k for k, _ in top.top(2)] == ["popular", "second"]
    assert top.top(1)[0][1] >= 4000  # weight kept, not reset by pruning


def test_top_counter_decay_halves_and_forgets() -> None:
    top = TopCounter()
    top.add("a", 10)
    top.add("b", 1)
    top.decay()
    assert top.counts == {"a": 5}


def test_activity_samples_everything_when_quiet_and_about_a_thousand_a_second_under_load() -> None:
    clock = FakeClock()
    a = Activity(clock)
    a.tick(0)
    assert a.countdown() == 1 and a.interval == 1
    clock.now += 1
    a.tick(50_000)  # 50k queries in that second
    assert a.interval == 50_000 // SAMPLES_PER_SECOND
    gaps = [a.countdown() for _ in range(2000)]
    assert min(gaps) >= 1 and max(gaps) <= 2 * a.interval - 1
    assert abs(sum(gaps) / len(gaps) - a.interval) < a.interval * 0.1  # mean interval, random gaps
    a.sample(b"\x01a\x00", "192.0.2.7")
    assert a.names.counts == {b"\x01a\x00": a.interval}  # weighted: an estimate of real queries


def test_activity_rate_is_over_the_last_minute() -> None:
    clock = FakeClock()
    a = Activity(clock)
    total = 0
    for _ in range(120):  # two minutes: 100/s, then 10/s
        clock.now += 1
        total += 100 if clock.now < 1060 else 10
        a.tick(total)
    assert 9 <= a.rate() <= 12


def test_activity_decays_top_lists_every_interval_and_keeps_hit_time_mean() -> None:
    clock = FakeClock()
    a = Activity(clock)
    a.sample(b"\x01a\x00", "c")
    a.sample(b"\x01a\x00", "c")
    a.hit_took(0.00001)
    a.hit_took(0.00003)
    clock.now += DECAY_INTERVAL
    a.tick(2)
    assert a.names.counts == {b"\x01a\x00": 1}
    assert abs(a.hit_mean - 0.00002) < 1e-12
    clock.now += 1
    a.tick(2)
    assert abs(a.hit_mean - 0.00002) < 1e-12  # no samples this second: the last mean stands


def test_a_burst_within_a_second_is_sampled_sparsely_at_once() -> None:
    a = Activity(FakeClock())
    sampled = 0
    countdown = a.countdown()
    for _ in range(100_000):  # 100k queries before the next tick
        countdown -= 1
        if not countdown:
            a.sample(None, None)
            sampled += 1
            countdown = a.countdown()
    assert a.interval >= 16
    assert sampled < 10 * SAMPLES_PER_SECOND  # not 100,000
