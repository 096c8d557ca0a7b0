"""The listening UDP sockets: batched reads (recvmmsg/sendmmsg), the transport fallback, kernel buffers."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from nodecache import mmsg, wire
from nodecache.listeners import UDP_BATCH_DATAGRAM, UdpBatchTransport, make_socket
from tests.conftest import ask_udp, make_config, running
from tests.dnsmsg import query
from tests.support.fakeupstream import FakeUpstream
from tests.test_hitpath_variants import zero_ttls

D = "default.svc.cluster.local."
NAMES = [f"kubernetes.{D}", f"web.{D}", f"nothere.{D}", "kube-dns.kube-system.svc.cluster.local."]
PEERS = 40  # client sockets, each its own peer
ROUNDS = 5  # queries each peer sends at once, before reading any reply

needs_mmsg = pytest.mark.skipif(mmsg.available() is not None, reason=f"no batch calls here: {mmsg.available()}")


def usual(p: int, r: int) -> str:
    """The name peer p asks in round r."""
    return NAMES[(p + r) % len(NAMES)]


async def burst(port: int, host: str = "127.0.0.1", ask: Callable[[int, int], str] = usual) -> dict[tuple[int, int], bytes]:
    """Every peer sends ROUNDS queries (ask(peer, round)) without waiting, then reads its replies; {(peer, ID): reply}."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks = []
    try:
        for p in range(PEERS):
            s = socket.socket(family, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.bind((host, 0))
            socks.append(s)
            for r in range(ROUNDS):
                s.sendto(query(ask(p, r), "A", qid=p * ROUNDS + r), (host, port))
        loop = asyncio.get_running_loop()
        got: dict[tuple[int, int], bytes] = {}
        for p, s in enumerate(socks):
            for _ in range(ROUNDS):
                reply = await asyncio.wait_for(loop.sock_recv(s, 2048), 5)
                got[(p, wire.reply_id(reply))] = reply
        return got
    finally:
        for s in socks:
            s.close()


@needs_mmsg
async def test_a_burst_from_many_peers_is_answered_in_batches_each_reply_to_its_asker(upstream: FakeUpstream) -> None:
    async with running(make_config([f"127.0.0.1:{upstream.port}"])) as srv:
        transport = srv._listeners["127.0.0.1"][0]
        assert isinstance(transport, UdpBatchTransport)  # batching is the default
        port = srv.bound[0][1]
        await burst(port)  # the first: misses, coalesced; the second: hits
        alone: list[bytes] = []  # replies sent one by one, with a system call each
        transport.sendto = lambda reply, addr: alone.append(reply)  # type: ignore[method-assign]
        got = await burst(port)
        # The agent is quiet, so every hit takes the sampled branch; its reply goes out with the batch.
        assert alone == [] and transport.batch.sent == 2 * PEERS * ROUNDS
        assert sorted(got) == sorted((p, p * ROUNDS + r) for p in range(PEERS) for r in range(ROUNDS))
        for (p, qid), reply in got.items():
            asked = NAMES[(p + qid - p * ROUNDS) % len(NAMES)]  # qid is p * ROUNDS + r
            question = query(asked, "A", qid=qid)[12 : wire.scan_query(query(asked)).qend]
            assert reply[12 : 12 + len(question)] == question  # its own question
        batch = transport.batch
        assert batch.received == 2 * PEERS * ROUNDS and batch.batches < batch.received  # several per read
        assert (batch.truncated, batch.send_dropped, batch.send_failed) == (0, 0, 0)


@needs_mmsg
async def test_replayed_hits_go_out_from_the_batch_as_the_resolver_would_answer_each_to_its_asker(
    upstream: FakeUpstream,
) -> None:
    """The reader's replay branch (cache.ReplyMemo, no call to Resolver.answer), with misses in the same batches."""
    async with running(make_config([f"127.0.0.1:{upstream.port}"])) as srv:
        transport = srv._listeners["127.0.0.1"][0]
        assert isinstance(transport, UdpBatchTransport)
        listener, port = transport.protocol, srv.bound[0][1]
        listener.countdown = 1 << 30  # no sampling: the branches taken under load
        await burst(port)  # misses
        hits = await burst(port)  # hits on the full path, remembered
        answered: list[bytes] = []
        answer = listener.answer

        def counted(data: bytes, via: int) -> Any:
            answered.append(data)
            return answer(data, via)

        listener.answer = counted  # type: ignore[method-assign]
        # Round 2 of every peer: a miss between replays, so later replies move down a send slot.
        replays = await burst(port, ask=lambda p, r: f"new{p}.{D}" if r == 2 else usual(p, r))
        assert sorted(wire.scan_query(d).lname for d in answered) == sorted(
            wire.scan_query(query(f"new{p}.{D}")).lname for p in range(PEERS)
        )  # every other query was replayed by the reader itself
        for (p, qid), reply in replays.items():
            if qid % ROUNDS != 2:
                assert zero_ttls(reply) == zero_ttls(hits[(p, qid)])  # its own ID and question, the same records
        batch = transport.batch
        assert (batch.truncated, batch.send_dropped, batch.send_failed) == (0, 0, 0)
        answered.clear()
        srv.resolver.flush()  # every entry gone: the memo forgets their replies, and so does the reader
        assert await ask_udp(port, query(NAMES[0], "A", qid=1)) is not None
        assert len(answered) == 1


@pytest.mark.parametrize("size", [0, 1])
async def test_udp_batch_0_or_1_serves_through_the_loops_datagram_transport(upstream: FakeUpstream, size: int) -> None:
    async with running(replace(make_config([f"127.0.0.1:{upstream.port}"]), udp_batch=size)) as srv:
        transport = srv._listeners["127.0.0.1"][0]
        assert not isinstance(transport, UdpBatchTransport)
        got = await burst(srv.bound[0][1])
        assert len(got) == PEERS * ROUNDS


async def test_without_recvmmsg_the_agent_logs_and_falls_back(
    upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(mmsg, "available", lambda: "this C library has no recvmmsg/sendmmsg")
    caplog.set_level(logging.WARNING)
    async with running(make_config([f"127.0.0.1:{upstream.port}"])) as srv:
        assert not isinstance(srv._listeners["127.0.0.1"][0], UdpBatchTransport)
        assert len(await burst(srv.bound[0][1])) == PEERS * ROUNDS
    warned = [r.getMessage() for r in caplog.records if "one at a time" in r.getMessage()]
    assert warned == ["UDP queries are read one at a time (--udp-batch 64 is not possible: "
                      "this C library has no recvmmsg/sendmmsg)"]  # fmt: skip


@needs_mmsg
async def test_ipv6_listener_is_batched_too(upstream: FakeUpstream) -> None:
    try:
        make_socket("::1", 0, socket.SOCK_DGRAM).close()
    except Exception:
        pytest.skip("no IPv6 loopback (::1) here")
    async with running(replace(make_config([f"127.0.0.1:{upstream.port}"]), listen=("::1",))) as srv:
        assert isinstance(srv._listeners["::1"][0], UdpBatchTransport)
        assert len(await burst(srv.bound[0][1], "::1")) == PEERS * ROUNDS


def test_socket_buffers_are_set_as_asked() -> None:
    with make_socket("127.0.0.1", 0, socket.SOCK_DGRAM, rcvbuf=256 << 10, sndbuf=128 << 10) as s:
        # Below any kernel's cap: exactly as asked (the kernel reports twice it).
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * (256 << 10)
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * (128 << 10)


def test_a_buffer_above_the_cap_without_cap_net_admin_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rmem_max = int(open("/proc/sys/net/core/rmem_max").read())
    real = socket.socket.setsockopt

    def no_force(self: socket.socket, level: int, option: int, value: int) -> None:
        if option in (getattr(socket, "SO_RCVBUFFORCE", 33), getattr(socket, "SO_SNDBUFFORCE", 32)):
            raise PermissionError(1, "Operation not permitted")  # as without CAP_NET_ADMIN
        real(self, level, option, value)

    monkeypatch.setattr(socket.socket, "setsockopt", no_force)
    caplog.set_level(logging.WARNING)
    with make_socket("127.0.0.1", 0, socket.SOCK_DGRAM, rcvbuf=rmem_max + (1 << 20)) as s:
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * rmem_max
    assert any("net.core.rmem_max" in r.getMessage() for r in caplog.records)


@needs_mmsg
async def test_a_query_too_large_for_a_batch_slot_is_dropped_and_counted(upstream: FakeUpstream) -> None:
    async with running(make_config([f"127.0.0.1:{upstream.port}"])) as srv:
        port = srv.bound[0][1]
        padded = query(NAMES[0], "A", qid=7) + bytes(UDP_BATCH_DATAGRAM)  # trailing bytes past the slot
        assert await ask_udp(port, padded, timeout=0.5) is None  # read by recvmmsg, cut by the slot: dropped
        assert await ask_udp(port, query(NAMES[0], "A", qid=8)) is not None
        assert await ask_udp(port, padded, timeout=0.5) is None  # every time
        assert await ask_udp(port, query(NAMES[0], "A", qid=9)) is not None
        (udp,) = srv.listeners.udp_stats()
        assert (udp.truncated, udp.batched, srv.resolver.dropped) == (2, True, 2)


@needs_mmsg
async def test_datagrams_shorter_than_an_id_do_not_stop_the_batch_they_came_in(
    upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """0-, 1- and 2-byte datagrams read in one recvmmsg with real queries: dropped and counted, the rest answered.

    The reader looks every datagram up in the reply memo by the bytes after its ID first, and for these
    there are none: the slice ends before it starts, which compiled code must not choke on either.
    """
    async with running(make_config([f"127.0.0.1:{upstream.port}"])) as srv:
        transport = srv._listeners["127.0.0.1"][0]
        assert isinstance(transport, UdpBatchTransport)
        transport.protocol.countdown = 1 << 30  # no sampling: the reader's own replay branch
        port = srv.bound[0][1]
        assert await ask_udp(port, query(NAMES[0], "A", qid=1)) is not None  # a miss, then cached
        assert await ask_udp(port, query(NAMES[0], "A", qid=2)) is not None  # a hit, now in the reply memo
        dropped, batches = srv.resolver.dropped, transport.batch.batches
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            for junk in (b"", b"\x00", b"\x12\x34"):
                s.sendto(junk, ("127.0.0.1", port))
                s.sendto(query(NAMES[0], "A", qid=3), ("127.0.0.1", port))
            loop = asyncio.get_running_loop()
            replies = [await asyncio.wait_for(loop.sock_recv(s, 2048), 5) for _ in range(3)]
        assert [wire.reply_id(r) for r in replies] == [3, 3, 3]
        assert srv.resolver.dropped == dropped + 3
        assert transport.batch.batches > batches
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
