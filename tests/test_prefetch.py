"""nodecache.prefetch: popular answers are refreshed before they expire (CoreDNS's `cache { prefetch }`).

A Resolver on a fake clock in front of the programmable upstream: the clock decides
when an entry is due, the upstream's log shows the refresh, and the cache shows it land.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from dnslib import DNSRecord

from nodecache import resolver as resolver_module
from nodecache import wire
from nodecache.cache import VIA_UDP4, ZoneCache
from nodecache.config import CachePolicy
from nodecache.prefetch import armed, threshold
from nodecache.resolver import Resolver
from tests.conftest import make_config, with_zone
from tests.support.fakeupstream import Behaviour, FakeUpstream

CLUSTER = "cluster.local."
SVC = "kubernetes.default.svc.cluster.local"
TTL = 4  # answers live 4 s: with 50%, prefetched once at most 2 whole seconds are left
T0 = 1000.0
LAND_TIMEOUT = 5.0


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def policy(amount: int = 3, duration: float = 60.0, percentage: int = 50) -> CachePolicy:
    return CachePolicy(success_max_ttl=TTL, denial_max_ttl=TTL, prefetch_amount=amount,
                       prefetch_duration=duration, prefetch_percentage=percentage)  # fmt: skip


def make_resolver(up: FakeUpstream, clock: Clock, cache: CachePolicy) -> Resolver:
    cfg = make_config([f"127.0.0.1:{up.port}"], try_timeout=0.5, timeout=1.0)
    return Resolver(with_zone(cfg, CLUSTER, cache=cache), clock)


def query(qid: int = 1) -> bytes:
    q = DNSRecord.question(SVC, "A")
    q.header.id = qid
    return bytes(q.pack())


async def miss(res: Resolver, data: bytes) -> bytes:
    """Ask through the miss path and wait for the answer."""
    q = res.answer(data, VIA_UDP4)
    assert isinstance(q, wire.Query), "expected a miss"
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    res.submit(data, q, VIA_UDP4, lambda _token, reply, _outcome: got.set_result(reply), None)
    return await asyncio.wait_for(got, LAND_TIMEOUT)


def hit(res: Resolver, qid: int = 2) -> DNSRecord:
    """Ask and expect a cache hit, answered at once."""
    reply = res.answer(query(qid), VIA_UDP4)
    assert isinstance(reply, bytes), "expected a cache hit"
    return DNSRecord.parse(reply)


def zone_cache(res: Resolver) -> ZoneCache:
    return next(z for z in res.zones if z.name == CLUSTER).cache


async def until(predicate: object, what: str) -> None:
    """Wait (bounded) until `predicate()` holds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + LAND_TIMEOUT
    while not predicate():  # type: ignore[operator]
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_an_entry_asked_often_is_refreshed_before_it_expires(upstream: FakeUpstream) -> None:
    clock = Clock()
    res = make_resolver(upstream, clock, policy(amount=3))
    try:
        await miss(res, query())
        hook = res.zones[0].cache.asked  # the cluster zone's ask counter
        assert armed(zone_cache(res)) and hook is not None and hook is zone_cache(res).asked
        for qid in range(2, 4):
            hit(res, qid)  # two asks, too early anyway
        clock.now = T0 + 2.5  # 1 whole second left of 4: within 50%
        before = hit(res, 5)  # the third ask: due, the refresh starts; this client still gets a hit
        assert before.rr[0].ttl == 2
        await until(lambda: upstream.count(SVC) == 2, "the refresh to reach the upstream")
        await until(lambda: zone_cache(res).success.peek(next(iter(zone_cache(res).success.keys()))).stored == clock.now,
                    "the refreshed answer to land")  # fmt: skip
        after = hit(res, 6)
        zone = res.zones[0]
        assert after.rr[0].ttl == TTL  # the TTL went back up
        assert (zone.stats.prefetches, zone.stats.misses) == (1, 1)  # clients only ever saw the one miss
        assert res.prefetching == 0
    finally:
        res.close()


async def test_an_entry_asked_fewer_than_amount_times_is_not_refreshed(upstream: FakeUpstream) -> None:
    clock = Clock()
    res = make_resolver(upstream, clock, policy(amount=3))
    try:
        await miss(res, query())
        clock.now = T0 + 3.5  # due by time, but only two asks so far
        hit(res, 2)
        hit(res, 3)
        assert res.zones[0].stats.prefetches == 0 and not res._inflight
        assert upstream.count(SVC) == 1
    finally:
        res.close()


async def test_asks_a_duration_or_more_apart_start_the_count_again(upstream: FakeUpstream) -> None:
    """CoreDNS's frequency: AMOUNT asks with no gap of DURATION between them."""
    clock = Clock()
    res = make_resolver(upstream, clock, replace(policy(amount=2, duration=1.0), success_max_ttl=30))
    try:
        await miss(res, query())
        hit(res, 2)
        clock.now += 1.0  # a gap of DURATION: the count starts again at 1
        hit(res, 3)
        clock.now = T0 + 27.5  # due by time; this ask is the second, but again after a gap
        hit(res, 4)
        assert res.zones[0].stats.prefetches == 0
        hit(res, 5)  # second ask within DURATION: due
        assert res.zones[0].stats.prefetches == 1
    finally:
        res.close()


async def test_a_hung_upstream_during_a_prefetch_does_not_disturb_hits(upstream: FakeUpstream) -> None:
    clock = Clock()
    res = make_resolver(upstream, clock, policy(amount=1))
    try:
        await miss(res, query())
        key = next(iter(zone_cache(res).success.keys()))
        entry = zone_cache(res).success.peek(key)
        upstream.set_behaviour(SVC, Behaviour.drop())
        clock.now = T0 + 2.5
        hit(res, 2)  # starts the prefetch, which the upstream never answers
        await until(lambda: upstream.count(SVC) >= 2, "the prefetch to reach the upstream")
        for qid in range(3, 50):
            assert hit(res, qid).rr[0].ttl == 2  # still answered from the cache, at once
        assert res._inflight  # the refresh is still waiting on the upstream
        await until(lambda: not res._inflight, "the refresh to give up")
        assert zone_cache(res).success.peek(key) is entry  # the failed refresh left the entry alone
        assert res.zones[0].stats.misses == 1 and res.prefetching == 0
        assert hit(res, 60).rr[0].ttl == 2  # AMOUNT (1) more asks: tried again
        assert res.zones[0].stats.prefetches == 2
    finally:
        res.close()


async def test_prefetches_beyond_the_cap_are_refused_and_counted(
    upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resolver_module, "DEFAULT_MAX_PREFETCHING", 0)
    clock = Clock()
    res = make_resolver(upstream, clock, policy(amount=1))
    try:
        await miss(res, query())
        clock.now = T0 + 2.5
        hit(res, 2)
        zone = res.zones[0]
        assert (zone.stats.prefetches, zone.stats.prefetches_refused) == (0, 1)
        assert not res._inflight and upstream.count(SVC) == 1
    finally:
        res.close()


async def test_a_prefetch_coalesces_with_a_refresh_already_in_flight(upstream: FakeUpstream) -> None:
    """A key already asked upstream is not asked twice: the prefetch leaves it to that flight."""
    clock = Clock()
    res = make_resolver(upstream, clock, policy(amount=1))
    try:
        await miss(res, query())
        upstream.set_behaviour(SVC, Behaviour.delay(0.5))
        clock.now = T0 + 2.5
        hit(res, 2)
        hit(res, 3)
        assert res.zones[0].stats.prefetches == 1 and len(res._inflight) == 1
    finally:
        res.close()


def test_zones_without_prefetch_keep_the_plain_lookup(upstream: FakeUpstream) -> None:
    """Off, a lookup calls nothing more: the zone's cache has no `asked` hook."""
    res = make_resolver(upstream, Clock(), CachePolicy())
    try:
        for zone in res.zones:
            assert not armed(zone.cache)
            assert zone.cache.asked is None
    finally:
        res.close()


def test_a_reload_arms_new_zones_and_keeps_armed_ones(upstream: FakeUpstream) -> None:
    clock = Clock()
    res = make_resolver(upstream, clock, CachePolicy())
    try:
        config = with_zone(res.config, CLUSTER, cache=policy())
        res.reconfigure(config)
        assert armed(zone_cache(res))
        hook = zone_cache(res).asked
        res.reconfigure(config)
        assert zone_cache(res).asked is hook
    finally:
        res.close()


@pytest.mark.parametrize(("ttl", "percentage", "left"), [(30, 10, 3), (4, 50, 2), (5, 10, 1), (1, 90, 1), (100, 90, 90)])
def test_the_threshold_is_the_percentage_of_the_ttl_rounded_up(ttl: int, percentage: int, left: int) -> None:
    assert threshold(ttl, percentage) == left
