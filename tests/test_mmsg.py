"""mmsg.Batch: many datagrams per recvmmsg, replies per sendmmsg, each to its own peer."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator

import pytest

from nodecache import mmsg

pytestmark = pytest.mark.skipif(mmsg.available() is not None, reason=f"no batch calls here: {mmsg.available()}")

SLOT = 64  # receive and reply slot size in these tests


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


FAMILIES = [
    pytest.param((socket.AF_INET, "127.0.0.1"), id="ipv4"),
    pytest.param((socket.AF_INET6, "::1"), id="ipv6",
                 marks=pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback (::1) here")),
]  # fmt: skip


@pytest.fixture(params=FAMILIES)
def server(request: pytest.FixtureRequest) -> Iterator[socket.socket]:
    family, host = request.param
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    yield sock
    sock.close()


def clients(server: socket.socket, n: int) -> list[socket.socket]:
    """`n` client sockets on the server's loopback address, each its own peer (port)."""
    out = []
    for _ in range(n):
        c = socket.socket(server.family, socket.SOCK_DGRAM)
        c.bind((server.getsockname()[0], 0))
        c.settimeout(2)
        out.append(c)
    return out


def wait_readable(sock: socket.socket) -> None:
    assert select.select([sock], [], [], 2)[0], "nothing arrived"


def receive_all(batch: mmsg.Batch, expected: int) -> list[bytes]:
    """Batches until `expected` datagrams were read (bounded: each wait is at most 2 s)."""
    got: list[bytes] = []
    while len(got) < expected:
        wait_readable(batch.sock)
        got += batch.receive()
    return got


def asked(server: socket.socket, *payloads: bytes) -> tuple[socket.socket, mmsg.Batch, list[bytes]]:
    """One client sends `payloads`; a batch reader of 8 slots reads them: (client, batch, what it read)."""
    (c,) = clients(server, 1)
    for data in payloads:
        c.sendto(data, server.getsockname())
    batch = mmsg.Batch(server, 8, SLOT, SLOT)
    return c, batch, receive_all(batch, len(payloads))


def test_nothing_waiting_reads_nothing(server: socket.socket) -> None:
    batch = mmsg.Batch(server, 8, SLOT, SLOT)
    assert batch.receive() == [] and (batch.received, batch.errors) == (0, 0)
    batch.send(0)  # nothing queued: no call, no error
    assert batch.sent == 0


def test_each_reply_goes_to_the_peer_of_its_query_even_with_gaps(server: socket.socket) -> None:
    peers = clients(server, 20)
    try:
        for i, c in enumerate(peers):
            c.sendto(f"q{i}".encode(), server.getsockname())
        batch = mmsg.Batch(server, 8, SLOT, SLOT)
        got: list[bytes] = []
        while len(got) < len(peers):
            wait_readable(server)
            read = batch.receive()
            assert 0 < len(read) <= 8
            for j, data in enumerate(read):
                i = int(data[1:])
                assert batch.peer(j)[:2] == peers[i].getsockname()[:2]
                if i % 3:  # some slots get no reply now: later replies move down over them
                    batch.replies[j] = b"r" + data
            batch.send(len(read))
            assert batch.replies == [None] * 8  # cleared for the next batch
            got += read
        assert sorted(got) == sorted(f"q{i}".encode() for i in range(20))
        for i, c in enumerate(peers):
            if i % 3:
                assert c.recvfrom(100) == (f"rq{i}".encode(), server.getsockname())
        assert batch.sent == sum(1 for i in range(20) if i % 3) and batch.batches >= 3
    finally:
        for c in peers:
            c.close()


def test_an_ipv6_peer_reads_as_the_socket_module_writes_it(server: socket.socket) -> None:
    c, batch, _ = asked(server, b"x")
    with c:
        assert batch.peer(0) == c.getsockname()  # (host, port) or (host, port, flowinfo, scope_id)


def test_empty_and_largest_datagrams_pass_larger_ones_are_dropped_and_counted(server: socket.socket) -> None:
    c, batch, got = asked(server, *(b"a" * size for size in (0, SLOT, SLOT + 1, 1, 4000)))
    with c:
        assert got == [b"", b"a" * SLOT, b"", b"a", b""]  # a dropped one reads as nothing, as an empty one does
        assert batch.truncated == 2 and batch.received == 5


def test_a_reply_larger_than_its_slot_goes_out_alone(server: socket.socket) -> None:
    c, batch, _ = asked(server, b"q")
    with c:
        batch.replies[0] = b"b" * 1000
        batch.send(1)
        assert c.recvfrom(2000)[0] == b"b" * 1000 and batch.sent == 1


def test_a_reply_the_kernel_refuses_is_counted_and_the_rest_still_go(server: socket.socket) -> None:
    peers = clients(server, 3)
    try:
        for c in peers:
            c.sendto(b"q", server.getsockname())
        batch = mmsg.Batch(server, 4, SLOT, SLOT)
        receive_all(batch, 3)
        # The middle peer's address becomes port 0, which no datagram may be sent to.
        port_at = 2
        batch._names_view[mmsg._SOCKADDR + port_at : mmsg._SOCKADDR + port_at + 2] = b"\0\0"
        batch.replies[:3] = [b"r0", b"r1", b"r2"]
        batch.send(3)
        assert (batch.sent, batch.send_failed) == (2, 1)
        assert peers[0].recv(10) == b"r0" and peers[2].recv(10) == b"r2"
    finally:
        for c in peers:
            c.close()


@pytest.mark.parametrize("reply", [b"r" * SLOT, b"b" * 1000], ids=["in its slot", "larger than its slot"])
def test_a_single_reply_goes_to_its_asker_and_is_counted(server: socket.socket, reply: bytes) -> None:
    c, batch, got = asked(server, b"q")
    with c:
        assert got == [b"q"] and (batch.received, batch.batches) == (1, 1)
        batch.send_one(reply)
        assert c.recvfrom(2000) == (reply, server.getsockname()) and batch.sent == 1


def test_a_single_reply_the_kernel_refuses_is_counted(server: socket.socket) -> None:
    c, batch, _ = asked(server, b"q")
    with c:
        port_at = 2  # the peer's address becomes port 0, which no datagram may be sent to
        batch._names_view[port_at : port_at + 2] = b"\0\0"
        batch.send_one(b"r")
        assert (batch.sent, batch.send_failed, batch.send_dropped) == (0, 1, 0)
