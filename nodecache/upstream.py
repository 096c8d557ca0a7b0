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

A try is a small `Try` object, not a coroutine or a Future (`Upstream.send`):
the forwarder can keep an early try open while it sends another (hedging, see
forwarder.py), and the reply is handed to the try's owner by a direct call
from the callback that read it: no Future, no extra pass of the event loop,
which cost a few microseconds of every miss. Failures found while sending go
to the owner on the next pass (`call_soon`), so a send never calls back into
its caller. UDP replies are read by a reader callback on the try's own
socket. `Upstream.start` wraps a try in a Future for the awaiting callers
(health and loop probes).

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
from typing import Any, Final, Protocol

from nodecache import wire
from nodecache.config import Address
from nodecache.counters import Histogram, Latencies, counted_rcode
from nodecache.errors import UpstreamError
from nodecache.framing import FramedConnection

log: Final = logging.getLogger(__name__)

# Per upstream: up to PIPELINE_DEPTH queries share a connection before another
# opens, up to MAX_TCP_CONNECTIONS (then the least busy one goes deeper). The
# queries of one loop pass go out in one write, so a deeper pipeline costs both
# ends fewer system calls: against NSD, 32 deep gave a quarter more misses/s than
# 4 deep on 16 connections, with no loss (docs/performance.md). A reply a server
# sits on costs a retransmission timer: the retry takes another connection.
MAX_TCP_CONNECTIONS: Final = 16
PIPELINE_DEPTH: Final = 32
MAX_MESSAGE: Final = 65535
# UDP socket pool, per upstream (see the module notes). A socket serves one query at a time, at most
# UDP_SOCKET_USES of them within UDP_SOCKET_SECONDS; up to UDP_IDLE_MAX wait idle for the next query.
UDP_SOCKET_USES: Final = 64
UDP_SOCKET_SECONDS: Final = 5.0
UDP_IDLE_MAX: Final = 128
UDP_SOCKETS_MAX = 2048  # open at once (busy and idle): a zone's max_concurrent (1000) times two open tries, and some
ID_BLOCK: Final = 4096  # bytes of CSPRNG output read at once for query IDs: 2048 IDs per getrandom call
HEALTH_QUERY: Final = b"\x00" + b"\x00\x02\x00\x01"  # ". IN NS", as CoreDNS probes
# Linux only. A server that writes replies without TCP_NODELAY (NSD does; CoreDNS, in Go, does not)
# holds each reply back until the one before it is ACKed, and Linux delays that ACK by up to 40 ms
# when the connection looks interactive. So a read that leaves replies owed ACKs at once:
# five pipelined queries to NSD 4.6 took 44 ms in 39 of 40 rounds without it, 0.7 ms with it.
TCP_QUICKACK: Final[int] = getattr(socket, "TCP_QUICKACK", 0)  # 0: this system has none

# Retransmission timer (RFC 6298 2.1-2.3): before the first answer a try is
# retried after INITIAL_RTO; after it, after SRTT + 4 RTTVAR (at least 2 SRTT), never sooner
# than MIN_RTO (a cluster DNS answers in well under a millisecond, but a node
# resolver that recurses needs tens) and never later than the zone's try timeout.
INITIAL_RTO: Final = 1.0
MIN_RTO: Final = 0.1

_ids: Final[list[int]] = []


def random_id() -> int:
    """A 16-bit query ID from the OS CSPRNG (RFC 5452 9.2), read in blocks rather than one syscall per ID."""
    if not _ids:
        _ids.extend(array("H", os.urandom(ID_BLOCK)))
    return _ids.pop()


Check = Callable[[bytes], wire.ReplyScan]
Build = Callable[[int], bytes]
Answer = tuple[bytes, wire.ReplyScan]


class Owner(Protocol):
    """Who a try reports to: exactly one of these is called, once, unless the try was cancelled first."""

    def answered(self, t: Try, msg: bytes, scan: wire.ReplyScan) -> None: ...

    def failed(self, t: Try, exc: UpstreamError) -> None: ...


class Try:
    """One query sent to one server; the transport that reads its reply calls its owner directly.

    `started` and `tcp` are the sender's bookkeeping (the forwarder's retry
    timers); `conn`/`qid` or `udp` say where the query waits, so `cancel`
    can free its TCP pipeline slot or close its UDP socket.
    """

    __slots__ = ("owner", "up", "build", "check", "tcp", "started", "done", "conn", "qid", "udp")

    def __init__(self, owner: Owner, up: Upstream, build: Build, check: Check, tcp: bool, started: float) -> None:
        self.owner = owner
        self.up = up
        self.build = build
        self.check = check
        self.tcp = tcp
        self.started = started
        self.done = False  # answered, failed or cancelled: nothing more is reported
        self.conn: _TcpConnection | None = None
        self.qid = -1
        self.udp: _UdpSocket | None = None

    def answer(self, msg: bytes, scan: wire.ReplyScan) -> None:
        if not self.done:
            self.done = True
            self.owner.answered(self, msg, scan)

    def fail(self, exc: UpstreamError) -> None:
        if not self.done:
            self.done = True
            self.owner.failed(self, exc)

    def fail_soon(self, exc: UpstreamError) -> None:
        """Fail on the next pass of the event loop: whoever noticed may be in the middle of something.

        With no loop running (closed at the very end), there is no next pass: it fails now.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return self.fail(exc)
        loop.call_soon(self.fail, exc)

    def cancel(self) -> None:
        """Give up: nothing is reported; a UDP socket closes, a TCP pipeline slot frees (a late reply is ignored)."""
        if self.done:
            return
        self.done = True
        conn = self.conn
        if conn is not None:
            if conn.pending.get(self.qid) is self:
                del conn.pending[self.qid]
        elif self.udp is not None:
            self.udp.close()


class _Awaited:
    """A try's owner that completes a Future: `Upstream.start`, for the callers that await one try."""

    __slots__ = ("fut",)

    def __init__(self, fut: asyncio.Future[Answer]) -> None:
        self.fut = fut

    def answered(self, t: Try, msg: bytes, scan: wire.ReplyScan) -> None:
        if not self.fut.done():
            self.fut.set_result((msg, scan))

    def failed(self, t: Try, exc: UpstreamError) -> None:
        if not self.fut.done():
            self.fut.set_exception(exc)


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

    A Protocol rather than streams: replies are handed to their tries straight
    from `data_received`, with no reader task to schedule. Queries sent in one
    pass of the event loop are written together (one send, not one each).
    Idle for `expire` seconds with nothing in flight, it closes; the idle
    clock is checked when its timer fires, not re-armed per query, so it
    closes between one and two `expire`s after its last query.
    """

    def __init__(self, expire: float, gone: Callable[[_TcpConnection], None]) -> None:
        super().__init__(expire)
        self.pending: dict[int, Try] = {}
        self.closed = False
        self.used = False  # a query went out since the idle timer last fired
        self._out: list[bytes] = []  # framed queries not written yet (see `_flush`)
        self._gone = gone  # tells the upstream this connection closed (it leaves the pool)
        self._ack_now: Callable[[int, int, int], None] | None = None  # the socket's setsockopt (TCP_QUICKACK)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if TCP_QUICKACK and sock is not None:
            self._ack_now = sock.setsockopt

    def busy(self) -> bool:
        used, self.used = self.used, False
        return used or bool(self.pending)  # queries are waiting; their own timeouts apply

    def idle_close(self) -> None:
        self.close()

    def data_received(self, data: bytes) -> None:
        pending = self.pending
        for msg in self.frames(data):
            t = pending.pop(wire.reply_id(msg), None)
            if t is None:
                continue  # a try given up on, or an ID we never sent
            try:
                scan = t.check(msg)
            except wire.Malformed as exc:
                t.fail(UpstreamError(f"unusable reply over TCP: {exc}"))
                continue
            t.answer(msg, scan)
        if self.pending and self._ack_now is not None and not self.closed:
            # Replies are still owed, and the server may be holding them until this read is
            # ACKed: ACK it now, not after the delayed-ACK timer. With none owed, nothing waits.
            try:
                self._ack_now(socket.IPPROTO_TCP, TCP_QUICKACK, 1)
            except OSError:
                self._ack_now = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def send(self, t: Try) -> None:
        """Send `t`'s query on this connection; its reply comes back through `data_received`."""
        pending = self.pending
        qid = random_id()
        while qid in pending:
            qid = random_id()
        pending[qid] = t
        t.conn, t.qid = self, qid
        msg = t.build(qid)
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(len(msg).to_bytes(2, "big") + msg)
        self.used = True

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._gone(self)
        pending, self.pending = self.pending, {}
        for t in pending.values():
            t.fail_soon(UpstreamError("upstream closed the TCP connection"))
        self._disarm()
        if self.transport is not None:
            self.transport.close()


class _UdpSocket:
    """A connected UDP socket of an upstream's pool: one query at a time, a few in its life (RFC 5452).

    Its reader stays registered while it lives, so a datagram arriving while
    it is idle is read and dropped.
    """

    __slots__ = ("sock", "fd", "owner", "loop", "uses", "expires", "qid", "t")

    def __init__(self, owner: Upstream, sock: socket.socket, loop: asyncio.AbstractEventLoop, expires: float) -> None:
        self.sock = sock
        self.loop = loop
        self.fd = sock.fileno()
        self.owner = owner
        self.uses = 0
        self.expires = expires
        self.qid = -1
        self.t: Try | None = None  # the try waiting on this socket

    def readable(self) -> None:
        while True:
            try:
                msg = self.sock.recv(MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError as exc:  # ICMP port unreachable arrives as ECONNREFUSED
                why = "refused (nothing listens there)" if exc.errno == errno.ECONNREFUSED else exc.strerror
                t = self.t
                self.close()  # an erring socket is not reused
                if t is not None:
                    t.fail(UpstreamError(f"{self.owner.address}: {why}"))
                return
            t = self.t
            if t is None or wire.reply_id(msg) != self.qid:
                self.owner.mismatched += 1
                continue  # not for the query in flight: keep waiting for the real answer
            try:
                scan = t.check(msg)
            except wire.Malformed:
                self.owner.mismatched += 1
                continue
            self.release()
            t.answer(msg, scan)
            return  # one query at a time: nothing more is awaited (a stray datagram left is read next time)

    def release(self) -> None:
        """The query was answered: back to the pool if this socket has uses left, else closed."""
        self.t = None
        owner = self.owner
        if self.uses >= UDP_SOCKET_USES or len(owner.udp_idle) >= UDP_IDLE_MAX or time.monotonic() >= self.expires:
            self.close()
        else:
            owner.udp_idle.append(self)

    def close(self) -> None:
        self.t = None
        owner = self.owner
        if owner.udp_sockets.get(self.fd) is not self:
            return  # closed already (its descriptor number may belong to a newer socket by now)
        del owner.udp_sockets[self.fd]
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
        self._turn = 0  # the connection offered next (see `_open_connection`)
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
        """`send` one try, as a Future holding the checked reply or an UpstreamError (for awaiting callers).

        Cancelling the future abandons the try (its socket closes, its TCP slot frees).
        """
        fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        t = Try(_Awaited(fut), self, build, check, tcp, time.monotonic())
        err = self.send(t, avoid)
        if err is not None:
            t.done = True
            fut.set_exception(err)
        else:
            fut.add_done_callback(lambda f: t.cancel())  # a no-op once the try reported
        return fut

    def send(self, t: Try, avoid: Any = None) -> UpstreamError | None:
        """Send one try; its owner hears of the reply or the failure later, never from within this call.

        Returns the error instead when nothing could go out (no socket, a send
        that failed): then the owner hears nothing. `avoid`, a set, keeps this
        try off the TCP connections already used for the same query, and gets
        this try's connection added.
        """
        if t.tcp:
            conn = self._open_connection(avoid)
            if conn is None:
                self._connect_then_send(t, avoid)
                return None
            if avoid is not None:
                avoid.add(conn)
            conn.send(t)
            return None
        us = self.udp_idle.pop() if self.udp_idle else None
        if us is None:
            try:
                us = self._udp_socket()
            except OSError as exc:
                return UpstreamError(f"{self.address}: {exc.strerror or exc}")
            if us is None:
                self.udp_exhausted += 1
                return UpstreamError(f"{self.address}: {UDP_SOCKETS_MAX} UDP sockets already open")
        us.uses += 1
        us.qid = qid = random_id()
        us.t, t.udp = t, us
        try:
            us.sock.send(t.build(qid))
        except OSError as exc:
            us.close()
            t.udp = None
            return UpstreamError(f"{self.address}: {exc.strerror or exc}")
        return None

    def _udp_socket(self) -> _UdpSocket | None:
        """A new connected socket for the pool (the kernel picks a random port); None at UDP_SOCKETS_MAX."""
        if len(self.udp_sockets) >= UDP_SOCKETS_MAX:
            return None
        loop = asyncio.get_running_loop()
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
        """An open connection not in `avoid` with room in its pipeline, else the least busy one;
        None when a new one should open (every open one is PIPELINE_DEPTH deep, and there is room).

        The connections are offered in turn first, which spreads queries as evenly as
        looking for the least busy one, without looking at all of them for every query.
        """
        conns = self._conns
        if conns:
            self._turn = turn = (self._turn + 1) % len(conns)
            c = conns[turn]
            if len(c.pending) < PIPELINE_DEPTH and (avoid is None or c not in avoid):
                return c
        best: _TcpConnection | None = None
        depth = MAX_MESSAGE
        for c in conns:
            n = len(c.pending)
            if n < depth and (avoid is None or c not in avoid):
                best, depth = c, n
        if best is not None and (depth < PIPELINE_DEPTH or len(conns) >= MAX_TCP_CONNECTIONS):
            return best
        if best is None and len(conns) >= MAX_TCP_CONNECTIONS:
            return min(conns, key=lambda c: len(c.pending))
        return None

    def _connect_then_send(self, t: Try, avoid: Any) -> None:
        """Open a connection (a Task: rare, a connection serves many queries), then send `t` on it."""

        def connected(task: asyncio.Task[_TcpConnection]) -> None:
            if t.done:  # given up on meanwhile; the connection stays in the pool for others
                if not task.cancelled():
                    task.exception()  # retrieved: a failed connect is not "never retrieved"
                return
            if task.cancelled():
                return t.fail(UpstreamError(f"{self.address}: connecting was cancelled"))
            exc = task.exception()
            if exc is not None:
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                return t.fail(UpstreamError(f"{self.address}: {why}"))
            conn = task.result()
            if avoid is not None:
                avoid.add(conn)
            conn.send(t)

        asyncio.get_running_loop().create_task(self._connection()).add_done_callback(connected)

    def _forget(self, conn: _TcpConnection) -> None:
        """A connection closed: it leaves the pool."""
        if conn in self._conns:
            self._conns.remove(conn)

    async def _connection(self) -> _TcpConnection:
        """A new connection (one connect at a time per server; concurrent callers share it)."""
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        self._connecting = asyncio.get_running_loop().create_future()
        try:
            _, conn = await asyncio.get_running_loop().create_connection(
                lambda: _TcpConnection(self.expire, self._forget), self.address.host, self.address.port
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
        for conn in list(self._conns):
            conn.close()  # each leaves the pool (`_forget`)
        for us in list(self.udp_sockets.values()):
            us.close()
        self.udp_idle.clear()
        if self._probe is not None:
            self._probe.cancel()
