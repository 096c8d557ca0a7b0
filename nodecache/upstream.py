"""One upstream server: UDP exchanges, persistent pipelined TCP, and health.

Spoofing resistance (RFC 5452): every UDP query goes out on a fresh socket,
so the kernel picks a random ephemeral source port, with a fresh ID from the
OS CSPRNG. The socket is connected, so the kernel itself drops datagrams from
any other address; a datagram with the wrong ID or question is ignored and we
keep waiting for the real answer until the try times out.

TCP to the cluster DNS is persistent: queries are pipelined on a pool of
connections (a few queries deep each, see PIPELINE_DEPTH), idle connections
close after `expire` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from collections.abc import Callable

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

Check = Callable[[bytes], wire.ReplyScan]
Build = Callable[[int], bytes]


class _TcpConnection(FramedConnection):
    """One TCP connection carrying many in-flight queries, matched by ID.

    A Protocol rather than streams: replies are dispatched straight from
    `data_received`, with no reader task to schedule. Idle for `expire`
    seconds with nothing in flight, it closes.
    """

    def __init__(self, expire: float) -> None:
        super().__init__(expire)
        self.pending: dict[int, asyncio.Future[bytes]] = {}
        self.closed = False

    def busy(self) -> bool:
        return bool(self.pending)  # queries are waiting; their own timeouts apply

    def idle_close(self) -> None:
        self.close()

    def data_received(self, data: bytes) -> None:
        for msg in self.frames(data):
            fut = self.pending.pop(wire.reply_id(msg), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def send(self, qid: int, query: bytes) -> asyncio.Future[bytes]:
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.pending[qid] = fut
        self.write_message(query)
        self._arm()
        return fut

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(UpstreamError("upstream closed the TCP connection"))
        self.pending.clear()
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

    async def query(self, build: Build, check: Check, tcp: bool, timeout: float) -> tuple[bytes, wire.ReplyScan]:
        """One try: send the query built for a fresh ID, return the checked reply."""
        try:
            async with asyncio.timeout(timeout):
                if tcp:
                    return await self._tcp(build, check)
                return await self._udp(build, check)
        except TimeoutError:
            raise UpstreamError(f"{self.address} did not answer within {timeout:g}s") from None
        except OSError as exc:
            raise UpstreamError(f"{self.address}: {exc.strerror or exc}") from None

    async def _udp(self, build: Build, check: Check) -> tuple[bytes, wire.ReplyScan]:
        loop = asyncio.get_running_loop()
        qid = secrets.randbits(16)
        with socket.socket(self._family, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect((self.address.host, self.address.port))
            await loop.sock_sendall(sock, build(qid))
            while True:  # ends by the caller's timeout
                msg = await loop.sock_recv(sock, MAX_MESSAGE)
                if wire.reply_id(msg) != qid:
                    continue
                try:
                    return msg, check(msg)
                except wire.Malformed:
                    continue  # not our answer: keep waiting for the real one

    async def _tcp(self, build: Build, check: Check) -> tuple[bytes, wire.ReplyScan]:
        conn = await self._connection()
        qid = secrets.randbits(16)
        while qid in conn.pending:
            qid = secrets.randbits(16)
        fut = conn.send(qid, build(qid))
        try:
            msg = await fut
        finally:
            conn.pending.pop(qid, None)
        try:
            return msg, check(msg)
        except wire.Malformed as exc:
            raise UpstreamError(f"{self.address} sent an unusable reply over TCP: {exc}") from None

    async def _connection(self) -> _TcpConnection:
        """The least busy open connection; a new one only when all are busy."""
        self._conns = [c for c in self._conns if not c.closed]
        best = min(self._conns, key=lambda c: len(c.pending), default=None)
        if best is not None and (len(best.pending) < PIPELINE_DEPTH or len(self._conns) >= MAX_TCP_CONNECTIONS):
            return best
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
