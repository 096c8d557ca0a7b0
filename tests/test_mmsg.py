"""mmsg.Batch: many datagrams per recvmmsg, replies per sendmmsg from where their bytes are, each to its own peer.

Every test runs once per kind of call this build has (mmsg.Calls): cffi's where the build
made its extension, and ctypes' always, the fallback.
"""

from __future__ import annotations

import importlib.util
import select
import socket
from collections.abc import Callable, Iterator

import pytest

from nodecache import mmsg

pytestmark = pytest.mark.skipif(mmsg.available() is not None, reason=f"no batch calls here: {mmsg.available()}")

SLOT = 64  # receive slot size in these tests


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


KINDS = [calls for calls in (mmsg.ffi_calls(), mmsg.ctypes_calls()) if calls is not None]
BatchOf = Callable[[socket.socket, int], mmsg.Batch]


@pytest.fixture(params=KINDS, ids=[calls.name for calls in KINDS])
def new_batch(request: pytest.FixtureRequest) -> BatchOf:
    """Makes a Batch of `size` slots of SLOT bytes that calls the kernel through this kind of call."""
    return lambda sock, size: mmsg.Batch(sock, size, SLOT, request.param)


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


def receive(batch: mmsg.Batch) -> list[bytes]:
    """One read: the datagrams it got (b"" for one too large for its slot)."""
    return [batch.datagram(i, length) for i, length in enumerate(batch.read())]


def receive_all(batch: mmsg.Batch, expected: int) -> list[bytes]:
    """Batches until `expected` datagrams were read (bounded: each wait is at most 2 s)."""
    got: list[bytes] = []
    while len(got) < expected:
        wait_readable(batch.sock)
        got += receive(batch)
    return got


def send(batch: mmsg.Batch, replies: list[bytes | None]) -> None:
    """replies[i] (None: none now) to the peer of query i, in one flush."""
    out = 0
    for i, r in enumerate(replies):
        if r is not None:
            batch.put(out, i, r)
            out += 1
    batch.flush(out)


def asked(server: socket.socket, new_batch: BatchOf, *payloads: bytes) -> tuple[socket.socket, mmsg.Batch, list[bytes]]:
    """One client sends `payloads`; a batch reader of 8 slots reads them: (client, batch, what it read)."""
    (c,) = clients(server, 1)
    for data in payloads:
        c.sendto(data, server.getsockname())
    batch = new_batch(server, 8)
    return c, batch, receive_all(batch, len(payloads))


def test_this_build_calls_through_cffi_where_it_made_the_extension() -> None:
    """The compiled build's listener uses the cffi calls, the sources (NODECACHE_PURE_PYTHON=1) ctypes'."""
    from nodecache import PURE_PYTHON, build
    from tests.support import compiled

    assert mmsg.CALLS is not None
    if PURE_PYTHON or build() == "python":
        assert mmsg.CALLS.name == "ctypes"
    elif importlib.util.find_spec("cffi") is None:
        pytest.skip("cffi is not installed here, so the build made no extension for these calls")
    else:
        assert compiled.extension(compiled.REPO / "nodecache" / "_mmsgffi.py"), "no cffi extension: `make venv` says why"
        assert mmsg.CALLS.name == "cffi"


def test_nothing_waiting_reads_nothing(server: socket.socket, new_batch: BatchOf) -> None:
    batch = new_batch(server, 8)
    assert batch.read() == () and (batch.received, batch.errors) == (0, 0)
    batch.flush(0)  # nothing queued: no call, no error
    assert batch.sent == 0


def test_each_reply_goes_to_the_peer_of_its_query_even_with_gaps(server: socket.socket, new_batch: BatchOf) -> None:
    peers = clients(server, 20)
    try:
        for i, c in enumerate(peers):
            c.sendto(f"q{i}".encode(), server.getsockname())
        batch = new_batch(server, 8)
        got: list[bytes] = []
        while len(got) < len(peers):
            wait_readable(server)
            read = receive(batch)
            assert 0 < len(read) <= 8
            replies: list[bytes | None] = []
            for j, data in enumerate(read):
                i = int(data[1:])
                assert batch.peer(j)[:2] == peers[i].getsockname()[:2]
                # Some queries get no reply now: later replies move down over their slots.
                replies.append(b"r" + data if i % 3 else None)
            send(batch, replies)
            got += read
        assert sorted(got) == sorted(f"q{i}".encode() for i in range(20))
        for i, c in enumerate(peers):
            if i % 3:
                assert c.recvfrom(100) == (f"rq{i}".encode(), server.getsockname())
        assert batch.sent == sum(1 for i in range(20) if i % 3) and batch.batches >= 3
    finally:
        for c in peers:
            c.close()


def test_an_ipv6_peer_reads_as_the_socket_module_writes_it(server: socket.socket, new_batch: BatchOf) -> None:
    c, batch, _ = asked(server, new_batch, b"x")
    with c:
        assert batch.peer(0) == c.getsockname()  # (host, port) or (host, port, flowinfo, scope_id)


def test_empty_and_largest_datagrams_pass_larger_ones_are_dropped_and_counted(server: socket.socket, new_batch: BatchOf) -> None:
    c, batch, got = asked(server, new_batch, *(b"a" * size for size in (0, SLOT, SLOT + 1, 1, 4000)))
    with c:
        assert got == [b"", b"a" * SLOT, b"", b"a", b""]  # a dropped one reads as nothing, as an empty one does
        assert batch.truncated == 2 and batch.received == 5


def test_a_reply_goes_out_from_its_own_bytes_whatever_its_size(server: socket.socket, new_batch: BatchOf) -> None:
    c, batch, _ = asked(server, new_batch, b"q")
    with c:
        batch.put(0, 0, b"b" * 3000)  # no send buffer to outgrow: the kernel reads the reply where it is
        batch.flush(1)
        assert c.recvfrom(4000)[0] == b"b" * 3000 and batch.sent == 1


def test_a_replayed_reply_is_the_querys_own_id_and_the_rest(server: socket.socket, new_batch: BatchOf) -> None:
    """The listener's replay branch: send slot 0 points at query 0's ID where it was read, then `tail`."""
    c, batch, _ = asked(server, new_batch, b"\x12\x34query")
    tail = b"the rest of a reply"
    with c:
        mmsg.set_pair(batch.send_vector, 0, batch.ids_at, 2, id(tail) + mmsg.BYTES_AT, len(tail))
        batch.flush(1)
        assert c.recv(100) == b"\x12\x34" + tail and batch.sent == 1


def test_a_reply_the_kernel_refuses_is_counted_and_the_rest_still_go(server: socket.socket, new_batch: BatchOf) -> None:
    peers = clients(server, 3)
    try:
        for c in peers:
            c.sendto(b"q", server.getsockname())
        batch = new_batch(server, 4)
        receive_all(batch, 3)
        # The middle peer's address becomes port 0, which no datagram may be sent to.
        port_at = 2
        batch.names[mmsg._SOCKADDR + port_at : mmsg._SOCKADDR + port_at + 2] = b"\0\0"
        send(batch, [b"r0", b"r1", b"r2"])
        assert (batch.sent, batch.send_failed) == (2, 1)
        assert peers[0].recv(10) == b"r0" and peers[2].recv(10) == b"r2"
    finally:
        for c in peers:
            c.close()


def test_a_single_reply_goes_to_its_asker_and_is_counted(server: socket.socket, new_batch: BatchOf) -> None:
    c, batch, got = asked(server, new_batch, b"q")
    with c:
        assert got == [b"q"] and (batch.received, batch.batches) == (1, 1)
        send(batch, [b"r"])
        assert c.recvfrom(100) == (b"r", server.getsockname()) and batch.sent == 1


def test_an_error_the_socket_reports_is_counted_and_reading_goes_on(new_batch: BatchOf) -> None:
    """A queued error (here ICMP port unreachable on a connected socket) is neither a datagram nor "nothing
    to read": the read counts it and gives nothing; the next read finds nothing waiting, without an error."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # fmt: skip
        closed.bind(("127.0.0.1", 0))
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        sock.connect(closed.getsockname())
        closed.close()  # its port now answers with ICMP port unreachable
        sock.send(b"to nobody")
        wait_readable(sock)  # the error, queued on the socket
        batch = new_batch(sock, 4)
        assert batch.read() == () and batch.errors == 1
        assert batch.read() == () and batch.errors == 1  # the error was consumed: now just nothing waiting
