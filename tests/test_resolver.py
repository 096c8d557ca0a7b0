"""The query pipeline end to end, in process, against a programmable upstream.

Queries are built with dnslib and sent over real sockets to an agent served
by the test's event loop; answers are parsed back with dnslib.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from nodecache.config import CachePolicy, ForwardPolicy
from tests.conftest import ask_tcp, ask_udp, make_config, running, with_zone
from tests.support.fakeupstream import Behaviour, FakeUpstream

SVC = "kubernetes.default.svc.cluster.local"
WEB = "web.default.svc.cluster.local"


def query(name: str, qtype: str = "A", qid: int = 4242, edns: int | None = 1232, do: bool = False) -> bytes:
    q = DNSRecord.question(name, qtype)
    q.header.id = qid
    if edns is not None:
        q.add_ar(EDNS0(udp_len=edns, flags="do" if do else ""))
    return bytes(q.pack())


def cluster_config(up: FakeUpstream, **forward: object):
    return make_config([f"127.0.0.1:{up.port}"], [f"127.0.0.1:{up.port}"], **forward)


async def test_repeated_lookup_is_answered_from_cache(upstream: FakeUpstream) -> None:
    async with running(cluster_config(upstream)) as srv:
        port = srv.bound[0][1]
        first = DNSRecord.parse(await ask_udp(port, query(SVC, qid=1)))
        second = DNSRecord.parse(await ask_udp(port, query(SVC, qid=2)))
    assert [str(r.rdata) for r in first.rr] == ["192.0.2.1"]
    assert [str(r.rdata) for r in second.rr] == ["192.0.2.1"]
    assert (first.header.id, second.header.id) == (1, 2)
    assert upstream.count(SVC) == 1


async def test_reply_echoes_client_question_case(upstream: FakeUpstream) -> None:
    async with running(cluster_config(upstream)) as srv:
        port = srv.bound[0][1]
        await ask_udp(port, query(SVC))
        raw = await ask_udp(port, query("KuBeRnEtEs.DeFault.svc.CLUSTER.local"))
    assert b"\x0aKuBeRnEtEs\x07DeFault" in raw[:40]
    assert upstream.count(SVC) == 1  # same key whatever the case


async def test_identical_concurrent_misses_are_coalesced(upstream: FakeUpstream) -> None:
    upstream.set_behaviour(WEB, Behaviour.delay(0.4))
    async with running(cluster_config(upstream)) as srv:
        port = srv.bound[0][1]
        replies = await asyncio.gather(*(ask_udp(port, query(WEB, qid=100 + i)) for i in range(20)))
        stats = srv.resolver.zones[0].stats
    parsed = [DNSRecord.parse(r) for r in replies]
    assert sorted(p.header.id for p in parsed) == list(range(100, 120))
    assert all(p.header.rcode == RCODE.NOERROR and p.rr for p in parsed)
    assert upstream.count(WEB) == 1
    assert stats.coalesced == 19


async def test_upstream_queries_use_random_ids_and_source_ports(upstream: FakeUpstream) -> None:
    """RFC 5452: random IDs; ports from a pool of sockets, each carrying a bounded number of queries."""
    from collections import Counter

    from nodecache.upstream import UDP_SOCKET_USES

    count = 3 * UDP_SOCKET_USES
    async with running(cluster_config(upstream)) as srv:
        port = srv.bound[0][1]
        for i in range(0, count, 24):
            await asyncio.gather(*(ask_udp(port, query(f"n{j}.example.test", qid=7)) for j in range(i, i + 24)))
    seen = [r for r in upstream.received() if r.transport == "udp" and r.qname.endswith("example.test.")]
    # Every name asked; a reply slower than the retransmission timer (a loaded machine) may add a retry.
    assert {r.qname for r in seen} == {f"n{j}.example.test." for j in range(count)}
    assert len({r.id for r in seen}) >= count * 0.9  # 16 random bits: a few collisions at most
    per_port = Counter(r.src_port for r in seen)
    assert max(per_port.values()) <= UDP_SOCKET_USES
    assert len(per_port) >= 3


@pytest.mark.parametrize("bad", ["wrong_id", "wrong_question", "garbage", "short"])
async def test_unmatched_upstream_reply_is_dropped_and_the_query_retried(upstream: FakeUpstream, bad: str) -> None:
    name = "spoof.example.test"
    upstream.set_behaviour(name, getattr(Behaviour, bad)(), times=1)
    async with running(cluster_config(upstream)) as srv:
        reply = DNSRecord.parse(await ask_udp(srv.bound[0][1], query(name)))
    # The forged first reply was ignored; the retry got the real (REFUSED: out of zone) answer.
    assert reply.header.rcode == RCODE.REFUSED
    assert upstream.count(name) == 2


async def test_truncated_udp_reply_is_retried_over_tcp(upstream: FakeUpstream) -> None:
    # Without the cluster zone, cluster names take the node-resolver path: UDP first.
    cfg = cluster_config(upstream)
    cfg = replace(cfg, zones=tuple(z for z in cfg.zones if z.name != "cluster.local."))
    big = "big.default.svc.cluster.local"
    upstream.set_behaviour(big, Behaviour.truncate_udp())
    async with running(cfg) as srv:
        port = srv.bound[0][1]
        replies = await ask_tcp(port, [query(big)])
        again = await ask_tcp(port, [query(big, qid=9)])
    full = DNSRecord.parse(replies[0])
    assert not full.header.tc and len(full.rr) >= 60
    assert len(DNSRecord.parse(again[0]).rr) == len(full.rr)
    assert upstream.count(big, "udp") == 1 and upstream.count(big, "tcp") == 1


async def test_cluster_zone_goes_over_tcp_and_other_names_over_udp(upstream: FakeUpstream) -> None:
    async with running(cluster_config(upstream)) as srv:
        port = srv.bound[0][1]
        await ask_udp(port, query(SVC))
        await ask_udp(port, query("1.2.0.192.in-addr.arpa", "PTR"))
        await ask_udp(port, query("outside.example.test"))
    assert upstream.count(SVC, "tcp") == 1 and upstream.count(SVC, "udp") == 0
    assert upstream.count("1.2.0.192.in-addr.arpa", "tcp") == 1
    assert upstream.count("outside.example.test", "udp") == 1


async def test_longest_suffix_picks_the_zone() -> None:
    with FakeUpstream() as cluster, FakeUpstream() as stub:
        cfg = cluster_config(cluster)
        stub_zone = replace(cfg.zones[0], name="corp.cluster.local.", forward=ForwardPolicy(
            upstreams=make_config([f"127.0.0.1:{stub.port}"]).zones[0].forward.upstreams, try_timeout=0.5, timeout=1.5))
        cfg = replace(cfg, zones=(stub_zone, *cfg.zones))
        async with running(cfg) as srv:
            port = srv.bound[0][1]
            await ask_udp(port, query("db.corp.cluster.local"))
            await ask_udp(port, query(SVC))
        assert stub.count("db.corp.cluster.local") == 1 and cluster.count("db.corp.cluster.local") == 0
        assert cluster.count(SVC) == 1 and stub.count(SVC) == 0


@pytest.mark.parametrize(
    "behaviour, cached",
    [
        (Behaviour.servfail(), True),  # briefly, a few seconds at most
        (Behaviour.refused(), False),
        (Behaviour.formerr(), False),
        (Behaviour.nxdomain_no_soa(), False),
        (Behaviour.nodata_no_soa(), False),
        (Behaviour.ttl(0x80000000), False),  # top bit set: TTL 0, not cacheable
        (Behaviour.ttl(0), False),
        (Behaviour.normal(), True),
    ],
    ids=["servfail", "refused", "formerr", "nxdomain-no-soa", "nodata-no-soa", "ttl-top-bit", "ttl-0", "normal"],
)
async def test_what_is_cached(upstream: FakeUpstream, behaviour: Behaviour, cached: bool) -> None:
    upstream.set_behaviour(WEB, behaviour)
    async with running(cluster_config(upstream)) as srv:
        port = srv.bound[0][1]
        first = DNSRecord.parse(await ask_udp(port, query(WEB, qid=1)))
        second = DNSRecord.parse(await ask_udp(port, query(WEB, qid=2)))
    assert first.header.rcode == second.header.rcode
    per_query = 2 if behaviour == Behaviour.formerr() else 1  # FORMERR: asked again without EDNS (RFC 6891 7)
    assert upstream.count(WEB) == (1 if cached else 2) * per_query


async def test_ttl_with_top_bit_is_served_as_zero(upstream: FakeUpstream) -> None:
    upstream.set_behaviour(WEB, Behaviour.ttl(0x80000001))
    async with running(cluster_config(upstream)) as srv:
        reply = DNSRecord.parse(await ask_udp(srv.bound[0][1], query(WEB)))
    assert reply.rr and all(r.ttl == 0 for r in reply.rr)


async def test_negative_answer_is_cached_with_soa(upstream: FakeUpstream) -> None:
    name = "missing.default.svc.cluster.local"
    async with running(cluster_config(upstream)) as srv:
        port = srv.bound[0][1]
        first = DNSRecord.parse(await ask_udp(port, query(name)))
        second = DNSRecord.parse(await ask_udp(port, query(name, qid=5)))
    assert first.header.rcode == second.header.rcode == RCODE.NXDOMAIN
    assert second.auth and second.auth[0].rtype == QTYPE.SOA
    assert second.auth[0].ttl <= 5  # min(SOA TTL, MINIMUM), capped by the denial cap
    assert upstream.count(name) == 1


async def test_do_and_cd_bits_are_part_of_the_key(upstream: FakeUpstream) -> None:
    async with running(cluster_config(upstream)) as srv:
        port = srv.bound[0][1]
        await ask_udp(port, query(SVC, do=False))
        await ask_udp(port, query(SVC, do=True))
        q = DNSRecord.parse(query(SVC))
        q.header.cd = 1
        await ask_udp(port, bytes(q.pack()))
        await ask_udp(port, query(SVC, do=True, qid=77))
    assert upstream.count(SVC) == 3


async def test_all_upstreams_failing_gives_servfail(upstream: FakeUpstream) -> None:
    upstream.set_behaviour(None, Behaviour.drop())
    async with running(cluster_config(upstream, try_timeout=0.3, timeout=0.9)) as srv:
        reply = DNSRecord.parse(await ask_udp(srv.bound[0][1], query(SVC)))
    assert reply.header.rcode == RCODE.SERVFAIL
    assert 2 <= upstream.count(SVC) <= 4  # per-try timeout inside the overall one


async def test_failover_to_a_healthy_upstream_and_dead_one_marked_down(upstream: FakeUpstream) -> None:
    with FakeUpstream() as dead:
        dead.set_behaviour(None, Behaviour.drop())
        cfg = make_config([f"127.0.0.1:{dead.port}", f"127.0.0.1:{upstream.port}"], policy="sequential",
                          try_timeout=0.3, timeout=2.0, max_fails=2)
        async with running(cfg) as srv:
            port = srv.bound[0][1]
            for i in range(3):
                reply = DNSRecord.parse(await ask_udp(port, query(f"s{i}.default.svc.cluster.local")))
                assert reply.header.rcode == RCODE.NXDOMAIN
            fwd = srv.resolver.zones[0].forwarder
            assert fwd.upstreams[0].down and not fwd.upstreams[1].down
            # Once down, the dead server is tried last: the next miss goes straight to the live one.
            before = dead.count()
            await ask_udp(port, query("s9.default.svc.cluster.local"))
            assert dead.count(None) - before <= 1  # at most one health probe slipped in
            # Healed: the probe (". NS") brings it back.
            dead.clear_behaviours()
            for _ in range(50):
                if not fwd.upstreams[0].down:
                    break
                await asyncio.sleep(0.1)
            assert not fwd.upstreams[0].down
            assert any(r.qname == "." and r.qtype == "NS" for r in dead.received())


async def test_max_concurrent_rejects_with_refused(upstream: FakeUpstream) -> None:
    upstream.set_behaviour(None, Behaviour.delay(0.5))
    async with running(cluster_config(upstream, max_concurrent=2)) as srv:
        port = srv.bound[0][1]
        replies = await asyncio.gather(*(ask_udp(port, query(f"c{i}.default.svc.cluster.local")) for i in range(5)))
    rcodes = sorted(DNSRecord.parse(r).header.rcode for r in replies)
    assert rcodes.count(RCODE.REFUSED) == 3
    assert srv.resolver.zones[0].forwarder.rejected == 3


async def test_capacity_is_bounded_and_evictions_counted(upstream: FakeUpstream) -> None:
    cfg = with_zone(cluster_config(upstream), "cluster.local.", cache=CachePolicy(success_capacity=3))
    async with running(cfg) as srv:
        port = srv.bound[0][1]
        for i in range(5):
            await ask_udp(port, query(f"p{i}.wild.cluster.local"))
        cache = srv.resolver.zones[0].cache
        assert len(cache.success) == 3
        assert cache.evictions == 2
        # The oldest went first: asking for it again reaches the upstream.
        await ask_udp(port, query("p0.wild.cluster.local"))
    assert upstream.count("p0.wild.cluster.local") == 2


@pytest.mark.parametrize(
    "packet, expect",
    [
        (b"\x12\x34\x01", None),  # shorter than a header: dropped
        (b"\x12\x34\x81\x80" + b"\x00" * 8, None),  # a response: dropped
        (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05abc", RCODE.FORMERR),  # cut question
        (b"\x12\x34\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00", RCODE.FORMERR),  # two questions claimed
        (b"\x12\x34\x21\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x06\x00\x01", RCODE.NOTIMP),  # NOTIFY
    ],
    ids=["short", "response", "cut-question", "qdcount-2", "opcode-notify"],
)
async def test_malformed_input_is_answered_or_dropped_and_counted(
    upstream: FakeUpstream, packet: bytes, expect: int | None
) -> None:
    async with running(cluster_config(upstream)) as srv:
        port = srv.bound[0][1]
        reply = await ask_udp(port, packet, timeout=0.5)
        still = DNSRecord.parse(await ask_udp(port, query(SVC)))
        counted = srv.resolver.dropped + srv.resolver.malformed
    if expect is None:
        assert reply is None
    else:
        assert reply is not None and reply[:2] == b"\x12\x34"
        assert DNSRecord.parse(reply).header.rcode == expect
    assert still.rr  # the agent keeps serving
    assert counted == 1


async def test_tcp_to_the_cluster_dns_is_persistent_and_pipelined(upstream: FakeUpstream) -> None:
    upstream.set_behaviour(None, Behaviour.delay(0.2))
    async with running(cluster_config(upstream)) as srv:
        port = srv.bound[0][1]
        # Ten misses at once share the pool; ten more later reuse it.
        await asyncio.gather(*(ask_udp(port, query(f"t{i}.wild.cluster.local")) for i in range(10)))
        await asyncio.gather(*(ask_udp(port, query(f"u{i}.wild.cluster.local")) for i in range(10)))
    assert upstream.count(None, "tcp") == 20
    assert 1 <= upstream.tcp_connections <= 4


async def test_ipv4_and_ipv6_listeners_in_one_process(upstream: FakeUpstream) -> None:
    cfg = replace(cluster_config(upstream), listen=("127.0.0.1", "::1"))
    async with running(cfg) as srv:
        (v4, p4), (v6, p6) = srv.bound
        six = DNSRecord.parse(await ask_udp(p6, query(SVC, qid=6), host="::1"))
        four = DNSRecord.parse(await ask_udp(p4, query(SVC, qid=4)))
    assert (v4, v6) == ("127.0.0.1", "::1")
    assert six.header.id == 6 and four.header.id == 4
    assert [str(r.rdata) for r in six.rr] == [str(r.rdata) for r in four.rr] == ["192.0.2.1"]


async def test_pipelined_tcp_answers_are_sent_as_each_is_ready(upstream: FakeUpstream) -> None:
    slow = "slow.wild.cluster.local"
    upstream.set_behaviour(slow, Behaviour.delay(0.5))
    async with running(cluster_config(upstream)) as srv:
        port = srv.bound[0][1]
        await ask_udp(port, query(SVC))  # now cached
        replies = await ask_tcp(port, [query(slow, qid=1), query(SVC, qid=2)])
    assert [DNSRecord.parse(r).header.id for r in replies] == [2, 1]  # the hit did not wait for the miss
