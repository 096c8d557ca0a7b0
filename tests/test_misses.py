"""The miss path under upstream trouble: the answer deadline, serve-stale, fast failure, waiter caps.

An in-process agent in front of the programmable upstream; clients are real
UDP sockets and answers are parsed with dnslib. Timings are bounds with room
for a loaded machine, never exact values.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from dataclasses import replace

from dnslib import QTYPE, RCODE, DNSRecord

from nodecache import wire
from nodecache.config import STALE_REPLY_TTL, CachePolicy, Config
from nodecache.resolver import Resolver
from nodecache.server import GC_YOUNG_THRESHOLD, settle_gc
from tests.conftest import ask_udp, make_config, running, with_zone
from tests.support.fakeupstream import Behaviour, FakeUpstream

CLUSTER = "cluster.local."
SVC = "kubernetes.default.svc.cluster.local"
WEB = "web.default.svc.cluster.local"
DEADLINE = 0.5  # short, so the tests are quick; the default (1.8 s) is checked against NSD


def query(name: str, qid: int = 1, qtype: str = "A") -> bytes:
    q = DNSRecord.question(name, qtype)
    q.header.id = qid
    return bytes(q.pack())


def config(up: FakeUpstream, *, stale: int = 3600, mode: str = "verify", ttl: int = 30, **kw: object) -> Config:
    """The cluster zone on `up` with a short answer deadline; `ttl` caps cached answers."""
    cfg = make_config([f"127.0.0.1:{up.port}"], try_timeout=1.0, timeout=2.0, max_fails=2, health_check=0.2)
    zone = next(z for z in cfg.zones if z.name == CLUSTER)
    cache = CachePolicy(success_max_ttl=ttl, denial_max_ttl=ttl, stale_window=stale, stale_mode=mode)
    return replace(with_zone(cfg, CLUSTER, cache=replace(zone.cache, **vars(cache))), answer_deadline=DEADLINE, **kw)


async def timed(port: int, data: bytes, timeout: float = 4.0) -> tuple[DNSRecord, float]:
    started = time.monotonic()
    raw = await ask_udp(port, data, timeout=timeout)
    assert raw is not None, "no answer at all"
    return DNSRecord.parse(raw), time.monotonic() - started


async def test_an_uncached_name_behind_a_silent_upstream_gets_servfail_at_the_deadline(upstream: FakeUpstream) -> None:
    upstream.set_behaviour(None, Behaviour.drop())
    async with running(config(upstream)) as srv:
        reply, took = await timed(srv.bound[0][1], query(WEB))
        zone = srv.resolver.zones[0]
    assert reply.header.rcode == RCODE.SERVFAIL
    assert DEADLINE - 0.05 <= took < DEADLINE + 0.4
    assert zone.stats.deadline == 1


async def test_an_expired_answer_is_served_stale_when_the_refresh_misses_the_deadline(upstream: FakeUpstream) -> None:
    async with running(config(upstream, ttl=1)) as srv:
        port = srv.bound[0][1]
        fresh, _ = await timed(port, query(SVC, 1))
        await asyncio.sleep(1.2)  # expired now
        upstream.set_behaviour(None, Behaviour.drop())
        stale, took = await timed(port, query(SVC, 2))
        zone = srv.resolver.zones[0]
    assert [str(r.rdata) for r in stale.rr] == [str(r.rdata) for r in fresh.rr] == ["192.0.2.1"]
    assert [r.ttl for r in stale.rr] == [STALE_REPLY_TTL]
    assert took < DEADLINE + 0.4
    assert (zone.stats.stale, zone.stats.deadline) == (1, 1)


async def test_the_refresh_goes_on_after_a_stale_answer_and_lands_in_the_cache(upstream: FakeUpstream) -> None:
    async with running(config(upstream, ttl=1)) as srv:
        port = srv.bound[0][1]
        await timed(port, query(SVC, 1))
        await asyncio.sleep(1.2)
        upstream.set_behaviour(SVC, Behaviour.delay(0.8))  # slower than the deadline, within the try timeout
        stale, _ = await timed(port, query(SVC, 2))
        upstream.clear_behaviours()
        await asyncio.sleep(0.6)  # the refresh lands
        asked = upstream.count(SVC)
        fresh, took = await timed(port, query(SVC, 3))
    assert [r.ttl for r in stale.rr] == [STALE_REPLY_TTL]
    assert fresh.rr and fresh.rr[0].ttl <= 1  # the refreshed entry, counting down from the capped TTL
    assert upstream.count(SVC) == asked  # the third query was a hit
    assert took < 0.2


async def test_an_upstream_servfail_does_not_replace_a_stale_answer(upstream: FakeUpstream) -> None:
    async with running(config(upstream, ttl=1)) as srv:
        port = srv.bound[0][1]
        await timed(port, query(SVC, 1))
        await asyncio.sleep(1.2)
        upstream.set_behaviour(None, Behaviour.servfail())
        replies = [(await timed(port, query(SVC, 2 + i)))[0] for i in range(2)]
    assert [r.header.rcode for r in replies] == [RCODE.NOERROR] * 2
    assert all([x.ttl for x in r.rr] == [STALE_REPLY_TTL] for r in replies)


async def test_serve_stale_off_gives_servfail(upstream: FakeUpstream) -> None:
    async with running(config(upstream, ttl=1, stale=0)) as srv:
        port = srv.bound[0][1]
        await timed(port, query(SVC, 1))
        await asyncio.sleep(1.2)
        upstream.set_behaviour(None, Behaviour.drop())
        reply, _ = await timed(port, query(SVC, 2))
    assert reply.header.rcode == RCODE.SERVFAIL


async def test_immediate_mode_answers_stale_at_once_and_refreshes_in_the_background(upstream: FakeUpstream) -> None:
    async with running(config(upstream, ttl=1, mode="immediate")) as srv:
        port = srv.bound[0][1]
        await timed(port, query(SVC, 1))
        await asyncio.sleep(1.2)
        upstream.set_behaviour(SVC, Behaviour.delay(0.3))
        stale, took = await timed(port, query(SVC, 2))
        assert upstream.wait_for_count(2, SVC, timeout=2.0) >= 2  # the refresh went out
        await asyncio.sleep(0.5)
        asked = upstream.count(SVC)
        fresh, _ = await timed(port, query(SVC, 3))
    assert [r.ttl for r in stale.rr] == [STALE_REPLY_TTL]
    assert took < 0.2  # not held for the upstream's 0.3 s
    assert fresh.rr[0].ttl <= 1 and upstream.count(SVC) == asked


async def test_once_every_upstream_is_down_misses_fail_at_once(upstream: FakeUpstream) -> None:
    upstream.set_behaviour(None, Behaviour.drop())
    async with running(config(upstream)) as srv:
        port = srv.bound[0][1]
        first, slow = await timed(port, query(WEB))
        await asyncio.sleep(1.8)  # the tries of the first query run out: the upstream is marked down
        assert srv.resolver.zones[0].forwarder.unreachable
        later, fast = await timed(port, query("other.default.svc.cluster.local"))
        zone = srv.resolver.zones[0]
        upstream.clear_behaviours()  # the health probe brings it back
        for _ in range(50):
            if not zone.forwarder.unreachable:
                break
            await asyncio.sleep(0.05)
        back, _ = await timed(port, query(SVC, 3))
    assert first.header.rcode == later.header.rcode == RCODE.SERVFAIL
    assert slow >= DEADLINE - 0.05 and fast < 0.15
    assert zone.stats.fast_failed >= 1
    assert back.header.rcode == RCODE.NOERROR


async def test_waiters_beyond_the_per_name_cap_get_servfail_at_once(upstream: FakeUpstream) -> None:
    upstream.set_behaviour(WEB, Behaviour.delay(0.3))
    async with running(config(upstream, max_waiting_per_name=5)) as srv:
        port = srv.bound[0][1]
        started = time.monotonic()
        replies = await asyncio.gather(*(timed(port, query(WEB, 10 + i)) for i in range(20)))
        zone = srv.resolver.zones[0]
    rcodes = sorted(r.header.rcode for r, _ in replies)
    assert rcodes == [RCODE.NOERROR] * 5 + [RCODE.SERVFAIL] * 15
    assert all(took < 0.2 for r, took in replies if r.header.rcode == RCODE.SERVFAIL)
    assert zone.stats.waiters_refused == 15 and upstream.count(WEB) == 1
    assert time.monotonic() - started < 1.5


async def test_the_total_waiting_cap_spans_names(upstream: FakeUpstream) -> None:
    upstream.set_behaviour(None, Behaviour.delay(0.3))
    async with running(config(upstream, max_waiting=4)) as srv:
        port = srv.bound[0][1]
        replies = await asyncio.gather(*(timed(port, query(f"n{i}.default.svc.cluster.local", i)) for i in range(10)))
        waiting_after = srv.resolver.waiting
    assert sum(r.header.rcode == RCODE.SERVFAIL for r, _ in replies) == 6
    assert waiting_after == 0


async def test_five_thousand_waiters_on_one_name_stay_within_four_mib() -> None:
    """Unit level: the waiter state itself, measured with tracemalloc while the upstream never answers."""
    with FakeUpstream() as up:
        up.set_behaviour(None, Behaviour.drop())
        cfg = replace(config(up, max_waiting=10_000, max_waiting_per_name=10_000), answer_deadline=30.0)
        resolver = Resolver(cfg)
        answered: list[bytes] = []

        def deliver(_token: object, reply: bytes, _outcome: str) -> None:
            answered.append(reply)

        packets = [query(WEB, i) for i in range(5000)]
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i, data in enumerate(packets):
            q = resolver.answer(data, 0)
            assert isinstance(q, wire.Query)
            resolver.submit(data, q, 0, deliver, ("192.0.2.7", 40000 + i % 20000))
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        waiting = resolver.waiting
        resolver.close()
        await asyncio.sleep(0)  # the cancelled fetch answers everyone
        await asyncio.sleep(0)
    assert waiting == 5000
    assert grown < 4 * 2**20, f"{grown / 2**20:.1f} MiB for 5,000 waiters"
    assert len(answered) == 5000 and all(DNSRecord.parse(r).header.rcode == RCODE.SERVFAIL for r in answered[:10])


async def test_an_expired_denial_is_served_stale_too(upstream: FakeUpstream) -> None:
    async with running(config(upstream, ttl=1)) as srv:
        port = srv.bound[0][1]
        first, _ = await timed(port, query("missing.default.svc.cluster.local"))
        await asyncio.sleep(1.2)
        upstream.set_behaviour(None, Behaviour.drop())
        stale, took = await timed(port, query("missing.default.svc.cluster.local", 2))
    assert first.header.rcode == stale.header.rcode == RCODE.NXDOMAIN
    assert [QTYPE[r.rtype] for r in stale.auth] == ["SOA"] and took < DEADLINE + 0.4


async def test_answered_misses_leave_no_reference_cycles_for_the_garbage_collector(upstream: FakeUpstream) -> None:
    """A miss's objects are freed by reference counting as it lands: the cyclic GC, which runs
    over the whole heap, costs CPU on every miss it has to clean up after."""
    resolver = Resolver(config(upstream))
    done: list[bytes] = []
    landed = asyncio.Event()
    names = [f"n{i}.wild.cluster.local" for i in range(50)]

    def deliver(_token: object, reply: bytes, _outcome: str) -> None:
        done.append(reply)
        if len(done) == len(names):
            landed.set()

    gc.collect()
    gc.disable()
    try:
        for i, name in enumerate(names):
            data = query(name, i)
            q = resolver.answer(data, 0)
            assert isinstance(q, wire.Query)
            resolver.submit(data, q, 0, deliver, None)
        await asyncio.wait_for(landed.wait(), 5.0)
        await asyncio.sleep(0)
        garbage = gc.collect()
    finally:
        gc.enable()
        resolver.close()
    assert all(DNSRecord.parse(r).header.rcode == RCODE.NOERROR for r in done)
    assert garbage < len(names), f"{garbage} objects left in cycles by {len(names)} misses"


def test_the_agent_process_freezes_its_startup_objects_and_collects_young_objects_rarely() -> None:
    saved = gc.get_threshold()
    try:
        settle_gc()
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD > saved[0]
        assert gc.get_threshold()[1:] == saved[1:]
        assert gc.get_freeze_count() > 1000  # at least the modules' functions
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)
