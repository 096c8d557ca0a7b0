"""The reply memo (cache.ReplyMemo): a repeated query is answered by its bytes, never with a reply its cache no longer backs.

In process: a Resolver with a fake clock, entries stored as a miss would
store them, and `Resolver.answer` called as the listeners call it. Every
replayed reply must equal what the plain path (scan, lookup, render) gives.
"""

from __future__ import annotations

from dataclasses import replace

from dnslib import AAAA, RR, A, DNSRecord

from nodecache import wire
from nodecache.cache import REPLY_MEMO_MAX_REPLY, VIA_TCP4, VIA_UDP4, Kind
from nodecache.metrics import AgentCollector
from nodecache.resolver import Resolver
from nodecache.stats import render, report
from tests.conftest import make_config
from tests.dnsmsg import query, reply, soa
from tests.test_cache import FakeClock, make_clock

SVC = "kubernetes.default.svc.cluster.local."


def resolver(clock: FakeClock, **config: object) -> Resolver:
    return Resolver(replace(make_config(["127.0.0.1:53"]), **config), clock=clock.now)


def store(r: Resolver, name: str, msg: bytes, qtype: str = "A") -> None:
    """Cache `msg` as the upstream's answer to (name, qtype), as a miss would."""
    q = wire.scan_query(query(name, qtype))
    zone = r.zone_for(q.lname)
    assert zone is not None
    zone.cache.store(q.key, wire.scan_reply(msg, q.lname, q.key[-5:-1]), False, 1232)


def address(name: str, ip: str, ttl: int = 30) -> bytes:
    return reply(name, "A", answers=[RR(name, rtype=1, rdata=A(ip), ttl=ttl)])


def rdata(msg: bytes | object) -> list[str]:
    assert isinstance(msg, bytes), f"a miss ({msg!r}), not a reply"
    return [str(rr.rdata) for rr in DNSRecord.parse(msg).rr]


def ttls(msg: bytes | object) -> list[int]:
    assert isinstance(msg, bytes)
    return [rr.ttl for rr in DNSRecord.parse(msg).rr]


def test_a_repeated_query_is_replayed_with_its_own_id_and_case() -> None:
    clock = make_clock()
    r = resolver(clock)
    store(r, SVC, address(SVC, "192.0.2.1"))
    first = r.answer(query(SVC, qid=1, edns=1232), VIA_UDP4)
    assert len(r.replies) == 1
    cased = query(SVC.upper(), qid=2, edns=1232)
    r.answer(cased, VIA_UDP4)  # other question bytes: its own replay
    again = r.answer(query(SVC, qid=3, edns=1232), VIA_UDP4)
    replayed_cased = r.answer(query(SVC.upper(), qid=4, edns=1232), VIA_UDP4)
    assert len(r.replies) == 2
    assert isinstance(first, bytes) and isinstance(again, bytes) and isinstance(replayed_cased, bytes)
    assert again == b"\x00\x03" + first[2:]
    assert replayed_cased[:2] == b"\x00\x04"
    assert replayed_cased[12:32] == b"\x0aKUBERNETES\x07DEFAULT\x03"  # the client's case, byte for byte
    # Counted as hits, as the plain path counts them.
    assert r.zone_for(wire.scan_query(cased).lname).cache.hits == 4  # type: ignore[union-attr]


def test_the_ttls_still_count_down_and_an_expired_entry_is_not_replayed() -> None:
    clock = make_clock()
    r = resolver(clock)
    store(r, SVC, address(SVC, "192.0.2.1", ttl=30))
    q = query(SVC, edns=1232)
    assert ttls(r.answer(q, VIA_UDP4)) == [30]
    clock.advance(0.5)
    assert ttls(r.answer(q, VIA_UDP4)) == [30]
    clock.advance(0.6)
    assert ttls(r.answer(q, VIA_UDP4)) == [29]
    clock.advance(28.4)  # 29.5 s after it was stored
    assert ttls(r.answer(q, VIA_UDP4)) == [1]
    clock.advance(0.6)  # past its 30 s
    assert isinstance(r.answer(q, VIA_UDP4), wire.Query)  # a miss: expired


def test_a_replaced_or_flushed_entry_is_never_replayed() -> None:
    clock = make_clock()
    r = resolver(clock)
    q = query(SVC, edns=1232)
    store(r, SVC, address(SVC, "192.0.2.1"))
    assert rdata(r.answer(q, VIA_UDP4)) == ["192.0.2.1"]
    store(r, SVC, address(SVC, "192.0.2.2"))  # a refresh replaces it
    assert rdata(r.answer(q, VIA_UDP4)) == ["192.0.2.2"]
    assert r.replies.invalidated == 1
    r.flush(name=SVC)
    assert isinstance(r.answer(q, VIA_UDP4), wire.Query)
    assert r.replies.invalidated == 2


def test_a_denial_replaced_by_an_answer_is_not_replayed() -> None:
    clock = make_clock()
    r = resolver(clock)
    name = "new.default.svc.cluster.local."
    store(r, name, reply(name, "A", rcode=3, authority=[soa("cluster.local.", 30, 30)]))
    q = query(name, edns=1232)
    assert DNSRecord.parse(r.answer(q, VIA_UDP4)).header.rcode == 3  # type: ignore[arg-type]
    store(r, name, address(name, "192.0.2.9"))
    assert rdata(r.answer(q, VIA_UDP4)) == ["192.0.2.9"]


def test_an_evicted_entry_is_not_replayed_and_the_hot_one_stays() -> None:
    clock = make_clock()
    r = resolver(clock)
    cache = r.zones[0].cache
    cache.success.maxsize = 2
    names = [f"n{i}.default.svc.cluster.local." for i in range(3)]
    store(r, names[0], address(names[0], "192.0.2.10"))
    store(r, names[1], address(names[1], "192.0.2.11"))
    q0, q1 = query(names[0], edns=1232), query(names[1], edns=1232)
    for _ in range(3):  # n1 was used first, then n0 is asked again and again (replayed)
        r.answer(q1, VIA_UDP4)
        r.answer(q0, VIA_UDP4)
    store(r, names[2], address(names[2], "192.0.2.12"))  # evicts the least recently used: n1
    assert cache.success.evictions == 1
    assert isinstance(r.answer(q1, VIA_UDP4), wire.Query)
    assert rdata(r.answer(q0, VIA_UDP4)) == ["192.0.2.10"]
    r.answer(q0, VIA_UDP4)  # replayed: no recency update ...
    store(r, names[1], address(names[1], "192.0.2.11"))  # ... but the first hit after the last eviction made one
    assert rdata(r.answer(q0, VIA_UDP4)) == ["192.0.2.10"]  # n2 went, not the hot n0
    assert isinstance(r.answer(query(names[2], edns=1232), VIA_UDP4), wire.Query)


def test_each_size_limit_and_transport_gets_its_own_reply() -> None:
    clock = make_clock()
    r = resolver(clock, max_udp_payload=1232)
    name = "big.default.svc.cluster.local."
    many = [RR(name, rtype=28, rdata=AAAA(f"2001:db8::{i}"), ttl=30) for i in range(60)]  # ~2.4 KB
    store(r, name, reply(name, "AAAA", answers=many), "AAAA")
    small, large = query(name, "AAAA", edns=None), query(name, "AAAA", edns=4096)
    for _ in range(2):
        cut = DNSRecord.parse(r.answer(small, VIA_UDP4))  # type: ignore[arg-type]
        capped = r.answer(large, VIA_UDP4)
        whole = r.answer(large, VIA_TCP4)
        assert cut.header.tc == 1 and len(cut.rr) < 60
        assert isinstance(capped, bytes) and len(capped) <= 1232 and DNSRecord.parse(capped).header.tc == 1
        assert isinstance(whole, bytes) and len(DNSRecord.parse(whole).rr) == 60
    assert len(capped) > REPLY_MEMO_MAX_REPLY  # too long to remember: only the reply cut to 512 bytes is
    assert len(r.replies) == 1


def test_the_memo_is_bounded_and_counted_in_stats_and_metrics() -> None:
    clock = make_clock()
    r = resolver(clock)
    r.replies.limit = 3
    for i in range(5):
        name = f"m{i}.default.svc.cluster.local."
        store(r, name, address(name, "192.0.2.20"))
        r.answer(query(name, edns=1232), VIA_UDP4)
    assert len(r.replies) == 2 and r.replies.overflowed == 1  # full at 3: started over, then two more
    r.flush()
    rep = report(r, started=0.0, listen=[("127.0.0.1", 53)], ready=True, not_ready=None)
    assert rep["cache"]["reply_memo"] == {"queries": 0, "limit_per_transport": 3, "invalidated": 1, "overflowed": 1}
    assert "forgotten 1 times as entries left, 1 times full" in render(rep)
    families = {m.name: m for m in AgentCollector(r, lambda: "127.0.0.1:53").collect()}
    assert families["nodecache_reply_memo_queries"].samples[0].value == 0
    resets = {s.labels["reason"]: s.value for s in families["nodecache_reply_memo_resets"].samples}
    assert resets == {"invalidated": 1, "full": 1}


def test_a_reload_forgets_every_reply() -> None:
    clock = make_clock()
    r = resolver(clock)
    store(r, SVC, address(SVC, "192.0.2.1"))
    r.answer(query(SVC, edns=1232), VIA_UDP4)
    r.reconfigure(make_config(["127.0.0.1:54"]))
    assert len(r.replies) == 0
    assert r.zones[0].cache.memo is r.replies  # the new zones are watched too


def test_a_prefetching_zone_is_not_replayed() -> None:
    clock = make_clock()
    config = make_config(["127.0.0.1:53"])
    zones = tuple(replace(z, cache=replace(z.cache, prefetch_amount=2)) for z in config.zones)
    r = Resolver(replace(config, zones=zones), clock=clock.now)
    store(r, SVC, address(SVC, "192.0.2.1"))
    for _ in range(3):
        assert rdata(r.answer(query(SVC, edns=1232), VIA_UDP4)) == ["192.0.2.1"]
    assert len(r.replies) == 0  # every hit went through the prefetching lookup
    assert Kind.SUCCESS is next(iter(r.zones[0].cache.entries()))[1].kind
