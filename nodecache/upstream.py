"""One upstream server: UDP exchanges, persistent pipelined TCP, and health.

Spoofing resistance (RFC 5452): UDP queries go out on a pool of connected
sockets, each on a random ephemeral port the kernel picked, each carrying one
query at a time with a fresh ID from the OS CSPRNG. A socket is reused for at
most UDP_SOCKET_USES queries and UDP_SOCKET_SECONDS, then closed and replaced
by a new one on a new port; so every query still has a random port and ID,
without paying a socket, a connect, a close and two epoll changes per query.
A socket is connected, so the kernel itself drops datagrams from any other
address; a datagram with the wrong ID or question is ignored and we keep
waiting for the real answer until the try times out. A socket that reports an
error, or whose try was given up, is closed rather than reused. At most
UDP_SOCKETS_MAX are open per server: a try beyond that fails at once and is
counted (`udp_exhausted`).

TCP to the cluster DNS is persistent: queries are pipelined on a pool of
connections (a few queries deep each, see PIPELINE_DEPTH), idle connections
close after `expire` seconds. Queries sent in one pass of the event loop go
out in one write per connection.

A try is a Future, not a coroutine (`Upstream.start`): the forwarder can keep
an early try open while it sends another (hedging, see forwarder.py), and the
common case (UDP, or TCP on an open connection) costs no Task. UDP replies are
read by a reader callback on the try's own socket.

Each server keeps a smoothed round-trip time (RFC 6298's estimator, as TCP
does), so the forwarder can retry a silent try after a few RTTs instead of a
fixed two seconds.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time
from array import array
from collections.abc import Callable
from typing import Any

from nodecache import wire
from nodecache.config import Address
from nodecache.counters import Histogram, Latencies, counted_rcode
from nodecache.errors import UpstreamError
from nodecache.framing import FramedConnection

log = logging.getLogger(__name__)

# Per upstream: up to PIPELINE_DEPTH queries share a connection before another
# opens, up to MAX_TCP_CONNECTIONS (then the least busy one goes deeper). The
# queries of one loop pass go out in one write, so a deeper pipeline costs both
# ends fewer system calls: against NSD, 32 deep gave a quarter more misses/s than
# 4 deep on 16 connections, with no loss (docs/performance.md). A reply a server
# sits on costs a retransmission timer: the retry takes another connection.
MAX_TCP_CONNECTIONS = 16
PIPELINE_DEPTH = 32
MAX_MESSAGE = 65535
# UDP socket pool, per upstream (see the module notes). A socket serves one query at a time, at most
# UDP_SOCKET_USES of them within UDP_SOCKET_SECONDS; up to UDP_IDLE_MAX wait idle for the next query.
UDP_SOCKET_USES = 64
UDP_SOCKET_SECONDS = 5.0
UDP_IDLE_MAX = 128
UDP_SOCKETS_MAX = 2048  # open at once (busy and idle): a zone's max_concurrent (1000) times two open tries, and some
ID_BLOCK = 4096  # bytes of CSPRNG output read at once for query IDs: 2048 IDs per getrandom call
HEALTH_QUERY = b"\x00" + b"\x00\x02\x00\x01"  # ". IN NS", as CoreDNS probes

# Retransmission timer (RFC 6298 2.1-2.3): before the first answer a try is
# retried after INITIAL_RTO; after it, after SRTT + 4 RTTVAR (at least 2 SRTT), never sooner
# than MIN_RTO (a cluster DNS answers in well under a millisecond, but a node
# resolver that recurses needs tens) and never later than the zone's try timeout.
INITIAL_RTO = 1.0
MIN_RTO = 0.1

_ids: list[int] = []


def random_id() -> int:
    """A 16-bit query ID from the OS CSPRNG (RFC 5452 9.2), read in blocks rather than one syscall per ID."""
    if not _ids:
        _ids.extend(array("H", os.urandom(ID_BLOCK)))
    return _ids.pop()


Check = Callable[[bytes], wire.ReplyScan]
Build = Callable[[int], bytes]
Answer = tuple[bytes, wire.ReplyScan]


class RttEstimator:
    """Smoothed round trip and its variation (RFC 6298 section 2), in seconds."""

    __slots__ = ("srtt", "rttvar")

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0

    def add(self, sample: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = sample, sample / 2
            return
        self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - sample)
        self.srtt = 0.875 * self.srtt + 0.125 * sample

    def timeout(self, cap: float) -> float:
        """How long to wait for a try before sending another."""
        if self.srtt is None:
            return min(INITIAL_RTO, cap)
        # At least twice the smoothed RTT: a server with a steady round trip has a tiny RTTVAR, and
        # SRTT + 4 RTTVAR alone would retry its ordinary answers a hair before they arrive.
        return min(max(self.srtt + 4 * self.rttvar, 2 * self.srtt, MIN_RTO), cap)


class _TcpConnection(FramedConnection):
    """One TCP connection carrying many in-flight queries, matched by ID.

    A Protocol rather than streams: replies are dispatched straight from
    `data_received`, with no reader task to schedule. Queries sent in one
    pass of the event loop are written together (one send, not one each).
    Idle for `expire` seconds with nothing in flight, it closes; the idle
    clock is checked when its timer fires, not re-armed per query, so it
    closes between one and two `expire`s after its last query.
    """

    def __init__(self, expire: float) -> None:
        super().__init__(expire)
        self.pending: dict[int, tuple[asyncio.Future[Answer], Check]] = {}
        self.closed = False
        self.used = False  # a query went out since the idle timer last fired
        self._out: list[bytes] = []  # framed queries not written yet (see `_flush`)

    def busy(self) -> bool:
        # Tries given up on (cancelled) leave their ID here until their reply comes or this check.
        for qid in [q for q, (fut, _check) in self.pending.items() if fut.done()]:
            del self.pending[qid]
        used, self.used = self.used, False
        return used or bool(self.pending)  # queries are waiting; their own timeouts apply

    def idle_close(self) -> None:
        self.close()

    def data_received(self, data: bytes) -> None:
        for msg in self.frames(data):
            waiting = self.pending.pop(wire.reply_id(msg), None)
            if waiting is None or waiting[0].done():
                continue  # a try given up on, or an ID we never sent
            fut, check = waiting
            try:
                fut.set_result((msg, check(msg)))
            except wire.Malformed as exc:
                fut.set_exception(UpstreamError(f"unusable reply over TCP: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def send(self, build: Build, check: Check) -> asyncio.Future[Answer]:
        """Send one query on this connection; the future holds its checked reply."""
        qid = random_id()
        while qid in self.pending:
            qid = random_id()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Answer] = loop.create_future()
        self.pending[qid] = (fut, check)
        msg = build(qid)
        if not self._out:
            loop.call_soon(self._flush)
        self._out.append(len(msg).to_bytes(2, "big") + msg)
        self.used = True
        return fut

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        pending, self.pending = self.pending, {}
        for fut, _check in pending.values():
            if not fut.done():
                fut.set_exception(UpstreamError("upstream closed the TCP connection"))
        self._disarm()
        if self.transport is not None:
            self.transport.close()


class _UdpSocket:
    """A connected UDP socket of an upstream's pool: one query at a time, a few in its life (RFC 5452).

    Its reader stays registered while it lives, so a datagram arriving while
    it is idle is read and dropped.
    """

    __slots__ = ("sock", "fd", "owner", "loop", "uses", "expires", "qid", "fut", "check")

    def __init__(self, owner: Upstream, sock: socket.socket, loop: asyncio.AbstractEventLoop, expires: float) -> None:
        self.sock = sock
        self.loop = loop
        self.fd = sock.fileno()
        self.owner = owner
        self.uses = 0
        self.expires = expires
        self.qid = -1
        self.fut: asyncio.Future[Answer] | None = None
        self.check: Check | None = None

    def readable(self) -> None:
        while True:
            try:
                msg = self.sock.recv(MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError as exc:  # ICMP port unreachable arrives as ECONNREFUSED
                why = "refused (nothing listens there)" if exc.errno == errno.ECONNREFUSED else exc.strerror
                fut = self.fut
                if fut is not None and not fut.done():
                    fut.set_exception(UpstreamError(f"{self.owner.address}: {why}"))  # `released` closes this socket
                return
            fut = self.fut
            if fut is None or fut.done() or wire.reply_id(msg) != self.qid:
                self.owner.mismatched += 1
                continue  # not for the query in flight: keep waiting for the real answer
            try:
                fut.set_result((msg, self.check(msg)))  # type: ignore[misc]
            except wire.Malformed:
                self.owner.mismatched += 1
                continue
            return  # one query at a time: nothing more is awaited (a stray datagram left is read next time)

    def released(self, fut: asyncio.Future[Answer]) -> None:
        """The query ended: back to the pool if it was answered and this socket has uses left, else closed."""
        self.fut = self.check = None
        owner = self.owner
        if (
            fut.cancelled()
            or fut.exception() is not None
            or self.uses >= UDP_SOCKET_USES
            or len(owner.udp_idle) >= UDP_IDLE_MAX
            or time.monotonic() >= self.expires
        ):
            self.close()
        else:
            owner.udp_idle.append(self)

    def close(self) -> None:
        owner = self.owner
        if owner.udp_sockets.pop(self.fd, None) is None:
            return
        self.loop.remove_reader(self.fd)
        self.sock.close()


class Upstream:
    """A single upstream DNS server and what we know of its health."""

    def __init__(self, address: Address, expire: float, health_check: float, max_fails: int, tcp: bool) -> None:
        self.address = address
        self.tcp = tcp  # the transport health probes use, as the forwarder does
        self.expire = expire
        self.health_check = health_check
        self.max_fails = max_fails
        self.fails = 0  # consecutive failures
        self.queries = 0  # client queries sent (counted by the forwarder)
        self.failures = 0
        self.healthcheck_failures = 0  # health probes that got no usable answer
        # Round trips of answered queries (miss path only): recent ones for
        # p50/p99, and a histogram per rcode for the proxy duration metric.
        self.latencies = Latencies()
        self.durations: dict[int, Histogram] = {}
        self.rtt = RttEstimator()
        self.retries = 0  # tries sent because an earlier one stayed silent past the retransmission timer
        self.udp_exhausted = 0  # UDP tries refused because UDP_SOCKETS_MAX sockets were open
        self.mismatched = 0  # UDP datagrams ignored: another ID, a question not ours, unreadable, or none awaited
        self.udp_sockets: dict[int, _UdpSocket] = {}  # every open socket of the pool, by file descriptor
        self.udp_idle: list[_UdpSocket] = []  # those free for the next query, most recently used last
        self._family = socket.AF_INET6 if address.family_v6 else socket.AF_INET
        self._conns: list[_TcpConnection] = []
        self._connecting: asyncio.Future[_TcpConnection] | None = None
        self._probe: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Upstream({self.address})"

    @property
    def down(self) -> bool:
        return self.fails >= self.max_fails > 0

    def succeeded(self, seconds: float, rcode: int) -> None:
        """Record an answered query and its round trip; clears the failure streak."""
        self.fails = 0
        self.latencies.add(seconds)
        rcode = counted_rcode(rcode)  # a bounded set of keys, whatever the upstream sends
        self.rtt.add(seconds)
        hist = self.durations.get(rcode)
        if hist is None:
            hist = self.durations[rcode] = Histogram()
        hist.observe(seconds)

    def failed(self) -> None:
        """Count a failure; after `max_fails` in a row, probe until it answers."""
        self.failures += 1
        self.fails += 1
        if self.down and (self._probe is None or self._probe.done()):
            log.warning("upstream %s marked down after %d consecutive failures", self.address, self.fails)
            self._probe = asyncio.get_running_loop().create_task(self._probe_until_up())

    async def query(self, build: Build, check: Check, tcp: bool, timeout: float) -> Answer:
        """One try, waited for: health probes and loop probes use it; client queries go through `start`."""
        fut = self.start(build, check, tcp)
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            raise UpstreamError(f"{self.address} did not answer within {timeout:g}s") from None
        finally:
            fut.cancel()  # no-op once done; otherwise frees the socket or the pipeline slot

    def start(self, build: Build, check: Check, tcp: bool, avoid: Any = None) -> asyncio.Future[Answer]:
        """Send one try; the future holds the checked reply, or an UpstreamError.

        Cancelling the future abandons the try (its socket closes, its TCP slot
        frees). `avoid`, a set, keeps this try off the TCP connections already
        used for the same query, and gets this try's connection added.
        """
        if tcp:
            conn = self._open_connection(avoid)
            if conn is None:
                return asyncio.ensure_future(self._tcp_new(build, check, avoid))
            if avoid is not None:
                avoid.add(conn)
            return conn.send(build, check)
        return self._udp(build, check)

    def _udp(self, build: Build, check: Check) -> asyncio.Future[Answer]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Answer] = loop.create_future()
        try:
            us = self.udp_idle.pop() if self.udp_idle else self._udp_socket(loop)
        except OSError as exc:
            fut.set_exception(UpstreamError(f"{self.address}: {exc.strerror or exc}"))
            return fut
        if us is None:
            self.udp_exhausted += 1
            fut.set_exception(UpstreamError(f"{self.address}: {UDP_SOCKETS_MAX} UDP sockets already open"))
            return fut
        us.uses += 1
        us.qid = random_id()
        us.fut, us.check = fut, check
        fut.add_done_callback(us.released)
        try:
            us.sock.send(build(us.qid))
        except OSError as exc:
            fut.set_exception(UpstreamError(f"{self.address}: {exc.strerror or exc}"))  # `released` closes it
        return fut

    def _udp_socket(self, loop: asyncio.AbstractEventLoop) -> _UdpSocket | None:
        """A new connected socket for the pool (the kernel picks a random port); None at UDP_SOCKETS_MAX."""
        if len(self.udp_sockets) >= UDP_SOCKETS_MAX:
            return None
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect((self.address.host, self.address.port))
        except OSError:
            sock.close()
            raise
        us = _UdpSocket(self, sock, loop, time.monotonic() + UDP_SOCKET_SECONDS)
        self.udp_sockets[us.fd] = us
        loop.add_reader(us.fd, us.readable)
        return us

    def _open_connection(self, avoid: Any) -> _TcpConnection | None:
        """The least busy open connection not in `avoid`; None when a new one should open."""
        best: _TcpConnection | None = None
        depth = MAX_MESSAGE
        conns = self._conns
        if any(c.closed for c in conns):
            conns = self._conns = [c for c in conns if not c.closed]
        for c in conns:
            n = len(c.pending)
            if n < depth and (avoid is None or c not in avoid):
                best, depth = c, n
        if best is not None and (depth < PIPELINE_DEPTH or len(conns) >= MAX_TCP_CONNECTIONS):
            return best
        if best is None and len(conns) >= MAX_TCP_CONNECTIONS:
            return min(conns, key=lambda c: len(c.pending))
        return None

    async def _tcp_new(self, build: Build, check: Check, avoid: Any) -> Answer:
        try:
            conn = await self._connection()
        except OSError as exc:
            raise UpstreamError(f"{self.address}: {exc.strerror or exc}") from None
        if avoid is not None:
            avoid.add(conn)
        fut = conn.send(build, check)
        try:
            return await fut
        finally:
            fut.cancel()

    async def _connection(self) -> _TcpConnection:
        """A new connection (one connect at a time per server; concurrent callers share it)."""
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        self._connecting = asyncio.get_running_loop().create_future()
        try:
            _, conn = await asyncio.get_running_loop().create_connection(
                lambda: _TcpConnection(self.expire), self.address.host, self.address.port
            )
            self._conns.append(conn)
            self._connecting.set_result(conn)
            return conn
        except BaseException as exc:
            self._connecting.set_exception(exc if isinstance(exc, Exception) else UpstreamError("cancelled"))
            self._connecting.exception()  # mark retrieved; waiters re-raise it
            raise
        finally:
            self._connecting = None

    async def _probe_until_up(self) -> None:
        """Ask `. NS` every `health_check` seconds; any valid reply means up."""
        def build(qid: int) -> bytes:
            return wire.make_query(qid, HEALTH_QUERY, False, False, wire.MIN_UDP_PAYLOAD)

        def check(msg: bytes) -> wire.ReplyScan:
            return wire.scan_reply(msg, HEALTH_QUERY[:1], HEALTH_QUERY[1:])

        while self.down:
            await asyncio.sleep(self.health_check)
            started = time.monotonic()
            try:
                await self.query(build, check, self.tcp, max(self.health_check, 1.0))
            except UpstreamError:
                self.healthcheck_failures += 1
                continue
            log.info("upstream %s is back (probe answered in %.0f ms)", self.address, (time.monotonic() - started) * 1e3)
            self.fails = 0

    def close(self) -> None:
        """Close connections and stop probing (at shutdown)."""
        for conn in self._conns:
            conn.close()
        self._conns.clear()
        for us in list(self.udp_sockets.values()):
            us.close()
        self.udp_idle.clear()
        if self._probe is not None:
            self._probe.cancel()
