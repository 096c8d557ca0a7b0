"""Protocol corner cases end to end (issue 9, item 5): an in-process agent, real sockets, a
programmable upstream, dnslib on both sides.

Upstream replies the RFCs allow but the agent used to reject (OPT not last, errors without a
question), negative answers behind a CNAME, queries it must refuse or answer FORMERR, a query
racing a reload, and truncation with whole records.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import replace

from dnslib import CNAME, EDNS0, QTYPE, RCODE, RR, SOA, A, DNSBuffer, DNSHeader, DNSRecord

from nodecache import stats
from nodecache.config import CachePolicy
from nodecache.resolver import Resolver
from tests.conftest import ask_tcp, ask_udp, make_config, running, with_zone
from tests.support.fakeupstream import Behaviour, FakeUpstream
from tests.support.http import scrape, value
from tests.support.net import free_port

SVC = "kubernetes.default.svc.cluster.local"
ZONE = "cluster.local"
BIG = "big.default.svc.cluster.local"  # 100 A records in the sample zone


def query(name: str, qtype: str | int = "A", qid: int = 4242, edns: int | None = 1232) -> bytes:
    q = DNSRecord.question(name, qtype if isinstance(qtype, str) else QTYPE[qtype])
    q.header.id = qid
    if edns is not None:
        q.add_ar(EDNS0(udp_len=edns))
    return bytes(q.pack())


def config(up: FakeUpstream, **forward: object):
    return make_config([f"127.0.0.1:{up.port}"], [f"127.0.0.1:{up.port}"], **forward)


def has_opt(q: DNSRecord) -> bool:
    return any(rr.rtype == QTYPE.OPT for rr in q.ar)


def questionless(q: DNSRecord, rcode: int) -> bytes:
    """An error reply with the query's ID and no question at all (QDCOUNT 0)."""
    return struct.pack("!HBBHHHH", q.header.id, 0x80 | q.header.rd, 0x80 | rcode, 0, 0, 0, 0)


def soa_rr(ttl: int, minimum: int) -> RR:
    return RR(ZONE, QTYPE.SOA, ttl=ttl, rdata=SOA("ns.dns.cluster.local", "hostmaster.cluster.local",
                                                  (1, 7200, 1800, 86400, minimum)))  # fmt: skip


# -- upstream replies --------------------------------------------------------------------------


async def test_upstream_opt_before_other_additional_records_is_accepted(upstream: FakeUpstream) -> None:
    """RFC 6891 6.1.1: the OPT may be anywhere in the additional section; the answer is used at once."""

    def opt_first(q: DNSRecord) -> bytes:
        r = q.reply()
        r.add_answer(RR(SVC, QTYPE.A, ttl=30, rdata=A("192.0.2.1")))
        r.add_ar(EDNS0(udp_len=1232))
        r.add_ar(RR("ns.dns.cluster.local", QTYPE.A, ttl=30, rdata=A("192.0.2.10")))
        return bytes(r.pack())

    upstream.set_behaviour(SVC, Behaviour.custom(opt_first))
    async with running(config(upstream)) as srv:
        rec = DNSRecord.parse(await ask_udp(srv.bound[0][1], query(SVC)))
        zone = srv.resolver.zones[0]
    assert rec.header.rcode == RCODE.NOERROR and [str(r.rdata) for r in rec.rr] == ["192.0.2.1"]
    assert [str(r.rname) for r in rec.ar if r.rtype == QTYPE.A] == ["ns.dns.cluster.local."]
    assert sum(1 for r in rec.ar if r.rtype == QTYPE.OPT) == 1
    assert upstream.count(SVC) == 1  # no try waited out, no retry
    assert zone.stats.rcodes == {0: 1} and all(u.failures == 0 for u in zone.forwarder.upstreams)


async def test_formerr_without_question_is_retried_without_edns(upstream: FakeUpstream) -> None:
    """RFC 6891 7: an upstream that answers FORMERR to EDNS gets the query again without OPT."""
    seen: list[bool] = []

    def no_edns_server(q: DNSRecord) -> bytes:
        seen.append(has_opt(q))
        if has_opt(q):
            return questionless(q, RCODE.FORMERR)
        r = q.reply()
        r.add_answer(RR(SVC, QTYPE.A, ttl=30, rdata=A("192.0.2.1")))
        return bytes(r.pack())

    upstream.set_behaviour(SVC, Behaviour.custom(no_edns_server))
    async with running(config(upstream)) as srv:
        rec = DNSRecord.parse(await ask_udp(srv.bound[0][1], query(SVC)))
        again = DNSRecord.parse(await ask_udp(srv.bound[0][1], query(SVC, qid=7)))
    assert seen == [True, False]
    assert [str(r.rdata) for r in rec.rr] == ["192.0.2.1"] and has_opt(rec)  # the client still gets its OPT
    assert [str(r.rdata) for r in again.rr] == ["192.0.2.1"]  # cached


async def test_formerr_with_and_without_edns_reaches_the_client(upstream: FakeUpstream) -> None:
    """A server that says FORMERR either way: one retry, then its FORMERR, not cached."""
    seen: list[bool] = []

    def always_formerr(q: DNSRecord) -> bytes:
        seen.append(has_opt(q))
        return questionless(q, RCODE.FORMERR)

    upstream.set_behaviour(SVC, Behaviour.custom(always_formerr))
    async with running(config(upstream)) as srv:
        first = DNSRecord.parse(await ask_udp(srv.bound[0][1], query(SVC)))
        second = DNSRecord.parse(await ask_udp(srv.bound[0][1], query(SVC)))
    assert first.header.rcode == second.header.rcode == RCODE.FORMERR
    assert seen == [True, False, True, False]


async def test_servfail_without_question_is_a_servfail_at_once(upstream: FakeUpstream) -> None:
    """A question-less SERVFAIL is the answer: no try waited out, no failure counted on the upstream."""
    upstream.set_behaviour(SVC, Behaviour.custom(lambda q: questionless(q, RCODE.SERVFAIL)))
    async with running(config(upstream, try_timeout=1.0, timeout=3.0)) as srv:
        rec = DNSRecord.parse(await ask_udp(srv.bound[0][1], query(SVC)))
        zone = srv.resolver.zones[0]
    assert rec.header.rcode == RCODE.SERVFAIL
    assert upstream.count(SVC) == 1
    assert zone.stats.rcodes == {RCODE.SERVFAIL: 1} and all(u.failures == 0 for u in zone.forwarder.upstreams)


async def test_notimp_without_question_is_passed_on_and_not_cached(upstream: FakeUpstream) -> None:
    upstream.set_behaviour(SVC, Behaviour.custom(lambda q: questionless(q, RCODE.NOTIMP)))
    async with running(config(upstream)) as srv:
        replies = [DNSRecord.parse(await ask_udp(srv.bound[0][1], query(SVC, qid=i))) for i in (1, 2)]
    assert [r.header.rcode for r in replies] == [RCODE.NOTIMP] * 2
    assert [r.header.id for r in replies] == [1, 2] and upstream.count(SVC) == 2


async def test_cname_to_nodata_is_a_denial_with_the_soa_ttl(upstream: FakeUpstream) -> None:
    """RFC 2308 5: CNAME then NODATA lives min(SOA TTL, MINIMUM), in the denial cache, capped as a denial."""

    def chain(q: DNSRecord) -> bytes:
        r = q.reply()
        r.add_answer(RR(str(q.q.qname), QTYPE.CNAME, ttl=300, rdata=CNAME("web.default.svc.cluster.local")))
        r.add_auth(soa_rr(300, 3))
        return bytes(r.pack())

    name = "alias.default.svc.cluster.local"
    upstream.set_behaviour(name, Behaviour.custom(chain))
    cfg = with_zone(config(upstream), "cluster.local", cache=CachePolicy(30, 30, 0, 9984, 5))
    async with running(cfg) as srv:
        rec = DNSRecord.parse(await ask_udp(srv.bound[0][1], query(name, "MX")))
        zone = srv.resolver.zones[0]
        entries = [e for _k, e in zone.cache.entries()]
    assert [e.kind.value for e in entries] == ["denial"] and len(zone.cache.denial) == 1
    assert entries[0].expires - entries[0].stored == 3
    assert [r.ttl for r in rec.rr + rec.auth] == [3, 3]  # served TTLs never outlast the entry


# -- client queries ------------------------------------------------------------------------------


async def test_zone_transfers_are_refused_never_forwarded(upstream: FakeUpstream) -> None:
    """AXFR and IXFR: NOTIMP over UDP, REFUSED over TCP, nothing sent upstream, counted."""
    mport = free_port()
    async with running(replace(config(upstream), metrics_address=f"127.0.0.1:{mport}")) as srv:
        port = srv.bound[0][1]
        udp = [DNSRecord.parse(await ask_udp(port, query(ZONE, t))) for t in ("AXFR", "IXFR")]
        tcp = [DNSRecord.parse(m) for m in await ask_tcp(port, [query(ZONE, "AXFR", qid=1, edns=None)])]
        report = stats.report(srv.resolver, started=0.0, listen=[], ready=True, not_ready=None)
        metrics = await asyncio.to_thread(scrape, "127.0.0.1", mport)
        r = srv.resolver
    assert [x.header.rcode for x in udp] == [RCODE.NOTIMP] * 2 and all(has_opt(x) for x in udp)
    assert [(x.header.rcode, x.header.id) for x in tcp] == [(RCODE.REFUSED, 1)] and not has_opt(tcp[0])
    assert len(upstream.log) == 0
    assert r.transfers == 3 and r.malformed == 0 and report["queries"]["zone_transfer_refused"] == 3
    assert "3 zone transfers" in stats.render(report)
    assert value(metrics, "nodecache_rejected_queries_total", reason="zone_transfer") == 3
    assert value(metrics, "nodecache_rejected_queries_total", reason="malformed") == 0
    assert all(len(z.cache.success) + len(z.cache.denial) == 0 for z in r.zones)


async def test_malformed_queries_get_formerr_and_are_counted(upstream: FakeUpstream) -> None:
    good = query(SVC)
    opt_in_answer = good[:6] + b"\x00\x01\x00\x00\x00\x00" + good[12:]
    async with running(config(upstream)) as srv:
        port = srv.bound[0][1]
        bad = [opt_in_answer, good + b"\x00", good[:-2] + b"\x00\x10", query(SVC, 41)]
        replies = [DNSHeader.parse(DNSBuffer(await ask_udp(port, b))) for b in bad]
        malformed = srv.resolver.malformed
    assert [h.rcode for h in replies] == [RCODE.FORMERR] * 4
    assert [h.id for h in replies] == [4242] * 4
    assert malformed == 4 and len(upstream.log) == 0


async def test_query_racing_a_reload_that_removed_its_zone_is_refused(upstream: FakeUpstream) -> None:
    """`answer` let the query through to a zone; a reload dropped the zone before `resolve` ran."""
    first = config(upstream)
    resolver = Resolver(first)
    try:
        data = query("www.example.org")
        q = resolver.answer(data, 0)
        assert not isinstance(q, bytes) and q is not None  # a miss for zone "."
        resolver.reconfigure(replace(first, zones=tuple(z for z in first.zones if z.name != ".")))
        answered: list[tuple[bytes, str]] = []
        resolver.submit(data, q, 0, lambda _token, reply, outcome: answered.append((reply, outcome)), None)
    finally:
        resolver.close()
    [(reply, outcome)] = answered  # at once: nothing to wait for
    rec = DNSRecord.parse(reply)
    assert (rec.header.rcode, rec.header.id, outcome) == (RCODE.REFUSED, 4242, "refused")
    assert str(rec.q.qname) == "www.example.org." and has_opt(rec)
    assert resolver.refused == 1 and len(upstream.log) == 0


# -- truncation ------------------------------------------------------------------------------------


async def test_large_answer_over_udp_carries_whole_records_with_tc(upstream: FakeUpstream) -> None:
    """RFC 2181 9: as many whole records as fit, TC set; over TCP the whole answer."""
    async with running(config(upstream)) as srv:
        port = srv.bound[0][1]
        full = DNSRecord.parse((await ask_tcp(port, [query(BIG, edns=None)]))[0])
        replies = {size: await ask_udp(port, query(BIG, edns=size)) for size in (None, 600, 1232)}
    want = [str(r.rdata) for r in full.rr]
    assert full.header.tc == 0 and len(want) == 100
    for size, raw in replies.items():
        rec = DNSRecord.parse(raw)
        assert len(raw) <= (size or 512) and rec.header.tc == 1
        assert 20 < len(rec.rr) < 100 and [str(r.rdata) for r in rec.rr] == want[: len(rec.rr)]
        assert has_opt(rec) == (size is not None)
