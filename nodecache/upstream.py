"""One upstream server: UDP exchanges, persistent pipelined TCP, and health.

Spoofing resistance (RFC 5452): every UDP query goes out on a fresh socket,
so the kernel picks a random ephemeral source port, with a fresh ID from the
OS CSPRNG. The socket is connected, so the kernel itself drops datagrams from
any other address; a datagram with the wrong ID or question is ignored and we
keep waiting for the real answer until the try times out.

TCP to the cluster DNS is persistent: queries are pipelined on a pool of
connections (a few queries deep each, see PIPELINE_DEPTH), idle connections
close after `expire` seconds.

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
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from nodecache import wire
from nodecache.config import Address
from nodecache.counters import Histogram, Latencies, counted_rcode
from nodecache.errors import UpstreamError
from nodecache.framing import FramedConnection

log = logging.getLogger(__name__)

# Per upstream: up to PIPELINE_DEPTH queries share a connection before another
# opens, up to MAX_TCP_CONNECTIONS. Deep pipelines on few connections stall
# some servers (NSD held single replies back for seconds at depth ~25), and
# CoreDNS answers one connection's queries in order, so width beats depth.
MAX_TCP_CONNECTIONS = 16
PIPELINE_DEPTH = 4
MAX_MESSAGE = 65535
HEALTH_QUERY = b"\x00" + b"\x00\x02\x00\x01"  # ". IN NS", as CoreDNS probes

# Retransmission timer (RFC 6298 2.1-2.3): before the first answer a try is
# retried after INITIAL_RTO; after it, after SRTT + 4 RTTVAR (at least 2 SRTT), never sooner
# than MIN_RTO (a cluster DNS answers in well under a millisecond, but a node
# resolver that recurses needs tens) and never later than the zone's try timeout.
INITIAL_RTO = 1.0
MIN_RTO = 0.1

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
    `data_received`, with no reader task to schedule. Idle for `expire`
    seconds with nothing in flight, it closes.
    """

    def __init__(self, expire: float) -> None:
        super().__init__(expire)
        self.pending: dict[int, tuple[asyncio.Future[Answer], Check]] = {}
        self.closed = False

    def busy(self) -> bool:
        return bool(self.pending)  # queries are waiting; their own timeouts apply

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
        qid = secrets.randbits(16)
        while qid in self.pending:
            qid = secrets.randbits(16)
        fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.pending[qid] = (fut, check)
        fut.add_done_callback(lambda _f: self._forget(qid, _f))
        self.write_message(build(qid))
        self._arm()
        return fut

    def _forget(self, qid: int, fut: asyncio.Future[Answer]) -> None:
        """A try ended (answered, failed or given up): its ID may be reused."""
        waiting = self.pending.get(qid)
        if waiting is not None and waiting[0] is fut:
            del self.pending[qid]

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
        qid = secrets.randbits(16)
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect((self.address.host, self.address.port))
            sock.send(build(qid))
        except OSError as exc:
            sock.close()
            fut.set_exception(UpstreamError(f"{self.address}: {exc.strerror or exc}"))
            return fut
        fd = sock.fileno()

        def readable() -> None:
            while not fut.done():
                try:
                    msg = sock.recv(MAX_MESSAGE)
                except BlockingIOError:
                    return
                except OSError as exc:  # ICMP port unreachable arrives as ECONNREFUSED
                    why = "refused (nothing listens there)" if exc.errno == errno.ECONNREFUSED else exc.strerror
                    fut.set_exception(UpstreamError(f"{self.address}: {why}"))
                    return
                if wire.reply_id(msg) != qid:
                    continue
                try:
                    fut.set_result((msg, check(msg)))
                except wire.Malformed:
                    continue  # not our answer: keep waiting for the real one

        def cleanup(_f: asyncio.Future[Answer]) -> None:
            loop.remove_reader(fd)
            sock.close()

        loop.add_reader(fd, readable)
        fut.add_done_callback(cleanup)
        return fut

    def _open_connection(self, avoid: Any) -> _TcpConnection | None:
        """The least busy open connection not in `avoid`; None when a new one should open."""
        self._conns = [c for c in self._conns if not c.closed]
        usable = [c for c in self._conns if avoid is None or c not in avoid]
        best = min(usable, key=lambda c: len(c.pending), default=None)
        if best is not None and (len(best.pending) < PIPELINE_DEPTH or len(self._conns) >= MAX_TCP_CONNECTIONS):
            return best
        if best is None and len(self._conns) >= MAX_TCP_CONNECTIONS:
            return min(self._conns, key=lambda c: len(c.pending))
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
        if self._probe is not None:
            self._probe.cancel()
