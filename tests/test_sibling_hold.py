"""A miss held behind an in-flight A or AAAA query for its name (RFC 8020), as getaddrinfo's pair arrives.

End to end, in process, against the programmable upstream: the first query of the pair is slowed
down so the second arrives while it is upstream; what each client gets and what the upstream
receives are checked.
"""

from __future__ import annotations

import asyncio
import dataclasses

from dnslib import QTYPE, RCODE, DNSRecord

from tests.conftest import ask_udp, running
from tests.support.fakeupstream import Behaviour, FakeUpstream
from tests.test_nxdomain_cut import ask, shift_clock
from tests.test_resolver import cluster_config, query

GONE = "nope.default.svc.cluster.local"  # NXDOMAIN in the sample zone
V4_ONLY = "kube-dns.kube-system.svc.cluster.local"  # A only: AAAA is NODATA
DUAL = "web.default.svc.cluster.local"  # A and AAAA
SLOW = 0.3  # the first query's upstream delay: the second arrives while it is in flight


async def pair(upstream: FakeUpstream, port: int, name: str, first: str = "A", second: str = "AAAA",
               do_second: bool = False) -> tuple[DNSRecord, DNSRecord]:
    """`first` goes upstream (slowed); once the upstream has it, `second` is asked; both replies."""
    upstream.set_behaviour(name, Behaviour.delay(SLOW), times=1)
    before = upstream.count(name)
    one = asyncio.ensure_future(ask(port, name, first, qid=1))
    assert await asyncio.to_thread(upstream.wait_for_count, before + 1, name) == before + 1
    two = await ask(port, name, second, qid=2, do=do_second)
    return await one, two


async def test_the_second_of_a_pair_is_answered_from_the_firsts_nxdomain(upstream: FakeUpstream) -> None:
    async with running(cluster_config(upstream)) as srv:
        a, aaaa = await pair(upstream, srv.bound[0][1], GONE)
        stats = srv.resolver.zones[0].stats
    assert a.header.rcode == aaaa.header.rcode == RCODE.NXDOMAIN
    assert aaaa.q.qtype == QTYPE.AAAA and str(aaaa.q.qname) == GONE + "." and aaaa.header.id == 2
    assert aaaa.auth and aaaa.auth[0].rtype == QTYPE.SOA  # the negative answer keeps its SOA (RFC 2308)
    assert [r.qtype for r in upstream.received(GONE)] == ["A"]
    assert (stats.sibling_waits, stats.nxdomain_waited) == (1, 1)


async def test_aaaa_first_holds_the_a_too(upstream: FakeUpstream) -> None:
    async with running(cluster_config(upstream)) as srv:
        aaaa, a = await pair(upstream, srv.bound[0][1], GONE, first="AAAA", second="A")
    assert a.header.rcode == aaaa.header.rcode == RCODE.NXDOMAIN and a.q.qtype == QTYPE.A
    assert [r.qtype for r in upstream.received(GONE)] == ["AAAA"]


async def test_a_name_that_exists_is_never_answered_nxdomain(upstream: FakeUpstream) -> None:
    async with running(cluster_config(upstream)) as srv:
        port = srv.bound[0][1]
        _, nodata = await pair(upstream, port, V4_ONLY)
        _, dual = await pair(upstream, port, DUAL)
        stats = srv.resolver.zones[0].stats
    assert nodata.header.rcode == RCODE.NOERROR and not nodata.rr  # its own NODATA, asked once the A landed
    assert dual.header.rcode == RCODE.NOERROR and [r.rtype for r in dual.rr] == [QTYPE.AAAA]
    assert [r.qtype for r in upstream.received(V4_ONLY)] == [r.qtype for r in upstream.received(DUAL)] == ["A", "AAAA"]
    assert (stats.sibling_waits, stats.nxdomain_waited) == (2, 0)


async def test_a_held_query_is_still_answered_by_the_deadline(upstream: FakeUpstream) -> None:
    config = dataclasses.replace(cluster_config(upstream), answer_deadline=0.3)
    async with running(config) as srv:
        port = srv.bound[0][1]
        upstream.set_behaviour(GONE, Behaviour.delay(1.0), times=1)
        first = asyncio.ensure_future(ask_udp(port, query(GONE, "A", qid=1), timeout=3.0))
        assert await asyncio.to_thread(upstream.wait_for_count, 1, GONE) == 1
        loop = asyncio.get_running_loop()
        sent = loop.time()
        held = DNSRecord.parse(await ask_udp(port, query(GONE, "AAAA", qid=2), timeout=3.0))
        waited = loop.time() - sent
        await first
        await asyncio.to_thread(upstream.wait_for_count, 2, GONE, None, 0.5)  # nothing more should come
        stats = srv.resolver.zones[0].stats
    assert held.header.rcode == RCODE.SERVFAIL and waited < 0.9  # at its own deadline, not the A's answer
    assert stats.deadline >= 1
    assert "AAAA" not in [r.qtype for r in upstream.received(GONE)]  # the A's NXDOMAIN covers it (A may be retried)


async def test_another_do_bit_is_not_held(upstream: FakeUpstream) -> None:
    async with running(cluster_config(upstream)) as srv:
        _, aaaa = await pair(upstream, srv.bound[0][1], GONE, do_second=True)
        stats = srv.resolver.zones[0].stats
    assert aaaa.header.rcode == RCODE.NXDOMAIN
    assert sorted(r.qtype for r in upstream.received(GONE)) == ["A", "AAAA"]
    assert stats.sibling_waits == 0


async def test_a_name_with_an_answer_in_the_cache_is_not_held_again(upstream: FakeUpstream) -> None:
    async with running(cluster_config(upstream)) as srv:
        port = srv.bound[0][1]
        await pair(upstream, port, V4_ONLY)  # held: nothing known about the name yet
        shift_clock(srv, 31)  # both answers expired (kept for serve-stale): the name existed
        a, aaaa = await pair(upstream, port, V4_ONLY)
        stats = srv.resolver.zones[0].stats
    assert a.rr and aaaa.header.rcode == RCODE.NOERROR and not aaaa.rr
    assert stats.sibling_waits == 1  # the second pair went upstream together, without the extra round trip
    assert [r.qtype for r in upstream.received(V4_ONLY)] == ["A", "AAAA", "A", "AAAA"]
