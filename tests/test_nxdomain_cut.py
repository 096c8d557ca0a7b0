"""RFC 8020: a cached NXDOMAIN answers every type of its name and every name below it.

End to end, in process, against the programmable upstream (see test_resolver).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from dnslib import CLASS, CNAME, QTYPE, RCODE, RR, SOA, DNSRecord

from nodecache.cache import ZoneCache
from nodecache.config import CachePolicy
from nodecache.names import name_to_wire
from nodecache.server import Server
from tests.conftest import ask_udp, make_config, running
from tests.support.fakeupstream import Behaviour, FakeUpstream
from tests.test_resolver import cluster_config, query

GONE = "x.svc.cluster.local"
NEGATIVE_TTL = 5  # the sample zone's SOA MINIMUM


async def ask(port: int, name: str, qtype: str = "A", qid: int = 4242, do: bool = False) -> DNSRecord:
    return DNSRecord.parse(await ask_udp(port, query(name, qtype, qid=qid, do=do)))


def shift_clock(srv: Server, seconds: float) -> None:
    """Move the agent's clock (resolver and caches) forward, as if `seconds` had passed."""
    clock: Callable[[], float] = lambda: time.monotonic() + seconds  # noqa: E731
    srv.resolver.clock = clock
    for z in srv.resolver.zones:
        z.cache.clock = clock


def nxdomain_reply(soa_zone: str, answer: list[RR] | None = None) -> Callable[[DNSRecord], bytes]:
    """A custom upstream reply: NXDOMAIN with `soa_zone`'s SOA, and `answer` records if given."""

    def reply(q: DNSRecord) -> bytes:
        r = q.reply()
        r.header.rcode = RCODE.NXDOMAIN
        for rr in answer or []:
            r.add_answer(rr)
        tail = "" if soa_zone == "." else soa_zone
        soa = SOA(f"ns.dns.{tail}", f"hostmaster.{tail}", (1, 7200, 1800, 86400, NEGATIVE_TTL))
        r.add_auth(RR(soa_zone, QTYPE.SOA, CLASS.IN, NEGATIVE_TTL, soa))
        return bytes(r.pack())

    return reply


async def test_cached_nxdomain_answers_other_types_and_names_below(upstream: FakeUpstream) -> None:
    async with running(cluster_config(upstream)) as srv:
        port = srv.bound[0][1]
        first = await ask(port, GONE)
        other_type = await ask(port, GONE, "AAAA", qid=7)
        below = await ask(port, "a.b." + GONE, "SRV", qid=8)
        stats = srv.resolver.zones[0].stats
    assert first.header.rcode == RCODE.NXDOMAIN
    for reply, name, qtype in ((other_type, GONE, QTYPE.AAAA), (below, "a.b." + GONE, QTYPE.SRV)):
        assert reply.header.rcode == RCODE.NXDOMAIN
        assert str(reply.q.qname) == name + "." and reply.q.qtype == qtype
        assert reply.auth and reply.auth[0].rtype == QTYPE.SOA
        assert str(reply.auth[0].rname) == "cluster.local."  # names survive a question of another length
        assert str(reply.auth[0].rdata.mname) == "ns.dns.cluster.local."
        assert reply.auth[0].ttl <= NEGATIVE_TTL
    assert (other_type.header.id, below.header.id) == (7, 8)
    assert upstream.count() == 1
    assert stats.nxdomain_cut == 2


async def test_cut_ends_with_the_negative_lifetime(upstream: FakeUpstream) -> None:
    async with running(cluster_config(upstream)) as srv:
        port = srv.bound[0][1]
        await ask(port, GONE)
        shift_clock(srv, NEGATIVE_TTL - 2)
        during = await ask(port, "a." + GONE, qid=2)
        shift_clock(srv, NEGATIVE_TTL + 1)
        after = await ask(port, "b." + GONE, qid=3)
    assert during.header.rcode == after.header.rcode == RCODE.NXDOMAIN
    assert during.auth[0].ttl <= 2  # counts down with the cached entry
    assert upstream.count("a." + GONE) == 0
    assert upstream.count("b." + GONE) == 1


async def test_nodata_does_not_cut(upstream: FakeUpstream) -> None:
    name = "default.svc.cluster.local"  # exists (empty non-terminal): NODATA
    async with running(cluster_config(upstream)) as srv:
        port = srv.bound[0][1]
        first = await ask(port, name, "TXT")
        await ask(port, name, "AAAA")
        await ask(port, "nope." + name, "A")
    assert first.header.rcode == RCODE.NOERROR and not first.rr
    assert upstream.count(name) == 2
    assert upstream.count("nope." + name) == 1


async def test_nxdomain_with_a_cname_chain_does_not_cut(upstream: FakeUpstream) -> None:
    name = "alias.svc.cluster.local"
    chain = [RR(name, QTYPE.CNAME, CLASS.IN, 30, CNAME("gone.svc.cluster.local"))]
    upstream.set_behaviour(name, Behaviour.custom(nxdomain_reply("cluster.local", chain)))
    async with running(cluster_config(upstream)) as srv:
        port = srv.bound[0][1]
        first = await ask(port, name)
        await ask(port, name, "AAAA")
        await ask(port, "a." + name)
    assert first.header.rcode == RCODE.NXDOMAIN and first.rr
    assert upstream.count(name) == 2
    assert upstream.count("a." + name) == 1


async def test_nxdomain_in_one_zone_never_answers_for_another() -> None:
    with FakeUpstream() as cluster, FakeUpstream() as node:
        node.set_behaviour("local", Behaviour.custom(nxdomain_reply(".")))
        async with running(make_config([f"127.0.0.1:{cluster.port}"], [f"127.0.0.1:{node.port}"])) as srv:
            port = srv.bound[0][1]
            top = await ask(port, "local")
            below = await ask(port, "web.default.svc.cluster.local")
        assert top.header.rcode == RCODE.NXDOMAIN
        assert below.header.rcode == RCODE.NOERROR and below.rr
        assert cluster.count("web.default.svc.cluster.local") == 1


def test_the_apex_is_never_cut() -> None:
    now = [100.0]
    cache = ZoneCache(CachePolicy(30, 30, 0, 9984, 5), lambda: now[0])
    apex = name_to_wire("cluster.local.")
    child = name_to_wire("x.cluster.local.")
    flag = b"\x00"
    q = DNSRecord.question("cluster.local", "A")
    r = DNSRecord.parse(nxdomain_reply("cluster.local")(q))
    from nodecache import wire

    scan = wire.scan_reply(bytes(r.pack()), apex, b"\x00\x01\x00\x01")
    cache.store(apex + b"\x00\x01\x00\x01" + flag, scan, False, 1232)
    assert cache.nxdomain_above(apex + b"\x00\x1c\x00\x01" + flag, len(apex)) is None
    assert cache.nxdomain_above(child + b"\x00\x01\x00\x01" + flag, len(apex)) is None
    # Above a shorter apex the same entry does cut: the check above is the apex rule, not a miss.
    assert cache.nxdomain_above(child + b"\x00\x01\x00\x01" + flag, 1) is not None


async def test_flush_removes_the_cut(upstream: FakeUpstream) -> None:
    async with running(cluster_config(upstream)) as srv:
        port = srv.bound[0][1]
        await ask(port, GONE)
        zone = srv.resolver.zones[0]
        removed = zone.cache.flush(lambda key: key.startswith(name_to_wire(GONE + ".")))
        await ask(port, GONE, "AAAA", qid=2)
    assert removed == 1
    assert upstream.count(GONE) == 2


async def test_do_bit_mismatch_does_not_cut(upstream: FakeUpstream) -> None:
    async with running(cluster_config(upstream)) as srv:
        port = srv.bound[0][1]
        await ask(port, GONE, do=False)
        await ask(port, GONE, "AAAA", do=True)
        await ask(port, "a." + GONE, do=True)
        await ask(port, "b." + GONE, do=False)
    assert upstream.count(GONE) == 2
    assert upstream.count("a." + GONE) == 0  # cut by the DO=1 NXDOMAIN for the AAAA query
    assert upstream.count("b." + GONE) == 0


def _store_nxdomain(cache: ZoneCache, name: str) -> bytes:
    from nodecache import wire

    lname = name_to_wire(name)
    r = DNSRecord.parse(nxdomain_reply("cluster.local")(DNSRecord.question(name, "A")))
    key = lname + b"\x00\x01\x00\x01\x00"
    cache.store(key, wire.scan_reply(bytes(r.pack()), lname, b"\x00\x01\x00\x01"), False, 1232)
    return key


def test_the_index_forgets_evicted_and_purged_entries() -> None:
    now = [100.0]
    cache = ZoneCache(CachePolicy(30, 30, 0, 4, 5), lambda: now[0])  # room for 4 denials
    keys = [_store_nxdomain(cache, f"n{i}.svc.cluster.local.") for i in range(10)]
    index = cache.denial.cut_index
    assert index is not None and len(index) == len(cache.denial) == 4
    assert cache.nxdomain_above(keys[-1][:-5] + b"\x00\x1c\x00\x01\x00", 15) is not None
    assert cache.nxdomain_above(keys[0][:-5] + b"\x00\x1c\x00\x01\x00", 15) is None  # evicted
    now[0] += 10**7  # past any serve-stale window
    assert cache.purge() == 4
    assert not index
