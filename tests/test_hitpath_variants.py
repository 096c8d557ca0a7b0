"""Every hand-written variant of the hit path answers with the same bytes.

The listeners answer in more than one copy, written for speed (listeners.py):
UDP's datagram_received and its observed branch (_observed, taken when the
sampling countdown fires and, through _logged, for every query with the
query log on), the batched UDP reader (UdpListener.readable: recvmmsg,
its own replay of remembered replies, sendmmsg; UdpBatchTransport), TCP's
plain branch and _one_observed. The same queries (hits, misses, errors,
truncation, replays) go through
each of them, with sampling forced on or off and the query log on or off,
and the replies must be the same bytes, TTLs aside (they count down with
the clock), within each transport.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from nodecache import wire
from nodecache.listeners import TcpConnection, UdpBatchTransport, UdpListener, make_socket
from nodecache.logs import QUERY_LOGGER, QueryLog
from nodecache.server import Server
from tests.conftest import ask_udp, make_config, running
from tests.dnsmsg import query, with_header
from tests.support.fakeupstream import Behaviour, FakeUpstream

D = "default.svc.cluster.local."
TC_NAME = f"web.{D}"  # the upstream truncates it over UDP: the agent asks again over TCP
SERVFAIL_NAME = f"broken.{D}"  # the upstream fails it
NOTIMP_OPCODE = 2 << 3  # STATUS, with RD clear: the agent implements QUERY only

# (label, query); each is sent ASKED times in a row, so a cacheable answer is a miss, then a hit on the
# full path (scan, lookup, render), then a replay of that hit's reply (cache.ReplyMemo).
ASKED = 3
QUERIES: list[tuple[str, bytes]] = [
    ("a", query(f"kubernetes.{D}", "A", qid=1, edns=1232)),
    ("aaaa", query(f"kubernetes.{D}", "AAAA", qid=2)),
    ("nxdomain", query(f"nothere.{D}", "A", qid=3, edns=1232)),
    ("nodata", query(f"kubernetes.{D}", "TXT", qid=4, edns=1232, do=True)),
    ("cname", query(f"alias.{D}", "A", qid=5, edns=1232)),
    ("over 512, no EDNS", query(f"medium.{D}", "A", qid=6)),
    ("over 1232", query(f"big.{D}", "A", qid=7, edns=1232)),
    ("upstream TC", query(TC_NAME, "A", qid=8, edns=1232)),
    ("servfail", query(SERVFAIL_NAME, "A", qid=9, edns=1232)),
    ("formerr: two questions", with_header(query(f"kubernetes.{D}", qid=10), counts=(2, 0, 0, 0))),
    ("formerr: no question", with_header(query(f"kubernetes.{D}", qid=11), counts=(0, 0, 0, 0))[:12]),
    ("AXFR: NOTIMP over UDP, REFUSED over TCP", query("cluster.local.", "AXFR", qid=12)),
    ("notimp: opcode", with_header(query(f"kubernetes.{D}", qid=13), flags1=NOTIMP_OPCODE)),
    ("bad EDNS version", query(f"kubernetes.{D}", "A", qid=14, edns=1232, version=1)),
]


@dataclass(frozen=True)
class Variant:
    proto: str  # "udp", "udpbatch" (UdpBatchTransport) or "tcp"
    sampled: bool  # the sampling countdown fires on every query
    logged: bool  # the query log is on (every answer offered to it)

    def __str__(self) -> str:
        return f"{self.proto}{'-sampled' if self.sampled else ''}{'-logged' if self.logged else ''}"


VARIANTS = [Variant(p, s, g) for p in ("udp", "udpbatch", "tcp") for s in (False, True) for g in (False, True)]
BATCH = 64
batched: list[UdpBatchTransport] = []  # the batched listeners made, to check they read every query


def zero_ttls(msg: bytes) -> bytes:
    """`msg` with every record's TTL set to 0, the OPT record's flags kept; a malformed reply as is."""
    if len(msg) < wire.HEADER_LEN:
        return msg
    out = bytearray(msg)
    qd, an, ns, ar = struct.unpack_from("!HHHH", msg, 4)
    try:
        i = wire.HEADER_LEN
        for _ in range(qd):
            i = wire.skip_name(msg, i) + 4
        for _ in range(an + ns + ar):
            start = wire.skip_name(msg, i)
            if struct.unpack_from("!H", msg, start)[0] != wire.TYPE_OPT:
                out[start + 4 : start + 8] = bytes(4)
            i = wire.record_end(msg, i)
    except (wire.Malformed, IndexError, struct.error):
        return msg
    return bytes(out)


@asynccontextmanager
async def listener(srv: Server, variant: Variant) -> AsyncIterator[int]:
    """A listener of the agent's own classes on its resolver, set up as `variant` says; yields its port.

    The listeners choose their branch when made (UDP: per socket; TCP: per
    connection), so the switches are set before it is made and stay set.
    """
    loop = asyncio.get_running_loop()
    closer: Any
    if variant.proto == "udp":
        closer, _ = await loop.create_datagram_endpoint(lambda: UdpListener(srv.resolver), local_addr=("127.0.0.1", 0))
        port = closer.get_extra_info("sockname")[1]
    elif variant.proto == "udpbatch":
        sock = make_socket("127.0.0.1", 0, socket.SOCK_DGRAM)
        closer = UdpBatchTransport(loop, sock, UdpListener(srv.resolver), BATCH)
        batched.append(closer)
        port = sock.getsockname()[1]
    else:
        closer = await loop.create_server(
            lambda: TcpConnection(srv.resolver, srv.config.tcp_idle_timeout, srv.tcp), "127.0.0.1", 0
        )
        port = closer.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        closer.close()


async def exchange_tcp(port: int, queries: list[bytes]) -> list[bytes]:
    """One connection; each query waits for its reply before the next is sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = []
    try:
        for q in queries:
            writer.write(struct.pack("!H", len(q)) + q)
            size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 5))[0]
            replies.append(await asyncio.wait_for(reader.readexactly(size), 5))
    finally:
        writer.close()
    return replies


async def exchange_udp(port: int, queries: list[bytes]) -> list[bytes]:
    replies = []
    for q in queries:
        r = await ask_udp(port, q)
        assert r is not None, f"no UDP answer to query ID {wire.reply_id(q)}"
        replies.append(r)
    return replies


async def one_round(
    srv: Server, variant: Variant, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> tuple[list[bytes], int, int]:
    """Every query ASKED times through one variant, from an empty cache; (replies, samples taken, lines logged)."""
    resolver = srv.resolver
    resolver.flush()
    # Sampling forced on (an interval of 1: every query) or off (an interval no round comes near, from a
    # seeded generator). Set through the instance's state: a compiled Activity's methods cannot be replaced.
    activity = resolver.activity
    monkeypatch.setattr(activity, "interval", 1 if variant.sampled else 1 << 30)
    monkeypatch.setattr(activity, "_since_tick", 0)  # a round's samples stay under SAMPLES_PER_SECOND: no doubling
    monkeypatch.setattr(activity, "_rng", random.Random(0))
    monkeypatch.setattr(resolver, "query_log", QueryLog(1.0) if variant.logged else None)
    sampled_before = resolver.activity.sampled
    caplog.clear()
    queries = [q for _, q in QUERIES for _ in range(ASKED)]
    async with listener(srv, variant) as port:
        if variant.proto != "tcp":
            replies = await exchange_udp(port, queries)
        else:
            replies = await exchange_tcp(port, queries)
    if variant.proto == "udpbatch":  # every query came through the batch reader's recvmmsg
        batch = batched[-1].batch
        assert batch.received == len(queries) and 1 <= batch.batches <= len(queries)
    logged = sum(1 for r in caplog.records if r.name == QUERY_LOGGER)
    return replies, resolver.activity.sampled - sampled_before, logged


async def test_every_hit_path_variant_answers_with_the_same_bytes(
    upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.set_behaviour(TC_NAME, Behaviour.truncate_udp())
    upstream.set_behaviour(SERVFAIL_NAME, Behaviour.servfail())
    caplog.set_level(logging.INFO, logger=QUERY_LOGGER)
    sent = ASKED * len(QUERIES)
    replies: dict[Variant, list[bytes]] = {}
    async with running(make_config([f"127.0.0.1:{upstream.port}"])) as srv:
        srv.periodic.stop_tick()  # the once-a-second tick would set the sampling interval from the rate
        for variant in VARIANTS:
            got, samples, lines = await one_round(srv, variant, monkeypatch, caplog)
            replies[variant] = [zero_ttls(r) for r in got]
            # Each variant really took its branch: sampled ones fed the top-N tables, logged ones the log.
            assert samples == (sent if variant.sampled else 0), variant
            assert lines == (sent if variant.logged else 0), variant

    for proto in ("udp", "tcp"):
        plain = replies[Variant(proto, False, False)]
        for variant in VARIANTS:
            if variant.proto.removesuffix("batch") != proto:  # batched UDP answers as the datagram transport does
                continue
            for i, (label, q) in enumerate(q for q in QUERIES for _ in range(ASKED)):
                assert wire.reply_id(replies[variant][i]) == wire.reply_id(q), (variant, label)
                assert replies[variant][i] == plain[i], f"{variant} differs from {proto} on {label} (query {i})"

    # The traffic covered what it claims: hits, misses upstream, each error, truncation on UDP only.
    udp, tcp = replies[VARIANTS[0]], replies[Variant("tcp", False, False)]
    rcodes = {label: udp[ASKED * i][3] & 0x0F for i, (label, _) in enumerate(QUERIES)}
    assert rcodes["a"] == wire.NOERROR and rcodes["nxdomain"] == wire.NXDOMAIN
    assert rcodes["servfail"] == wire.SERVFAIL
    assert rcodes["formerr: two questions"] == rcodes["formerr: no question"] == wire.FORMERR
    assert rcodes["notimp: opcode"] == wire.NOTIMP
    labels = [label for label, _ in QUERIES]
    axfr = ASKED * labels.index("AXFR: NOTIMP over UDP, REFUSED over TCP")
    assert (udp[axfr][3] & 0x0F, tcp[axfr][3] & 0x0F) == (wire.NOTIMP, wire.REFUSED)
    for label in ("over 512, no EDNS", "over 1232"):
        i = ASKED * labels.index(label)
        assert all(udp[i + k][2] & wire.TC for k in range(ASKED)), label  # miss, hit and replay all truncated
        assert not tcp[i][2] & wire.TC and len(tcp[i]) > len(udp[i]), label
    i = ASKED * labels.index("upstream TC")
    assert not udp[i][2] & wire.TC and struct.unpack_from("!H", udp[i], 6)[0] > 0  # fetched again over TCP
    assert upstream.count(TC_NAME, "tcp") >= 1
