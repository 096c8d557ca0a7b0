"""UDP and TCP listeners (asyncio protocols).

Sockets are made here with SO_REUSEPORT, so a new agent can bind beside the
old one during a rolling update, and handed to the event loop. A cache hit
is answered inside the receive callback without creating a task; only a miss
spawns one.

Observability costs the hit path one countdown: every so many queries (see
counters.Activity) one takes the sampled branch, which times the answer and
feeds the top names and clients. With the query log on, the UDP listener
swaps in a receive method that logs (the TCP one tests one flag), so with it
off nothing is paid for it at all.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

from nodecache import wire
from nodecache.cache import VIA_TCP4, VIA_TCP6, VIA_UDP4, VIA_UDP6
from nodecache.errors import ListenError
from nodecache.framing import FramedConnection
from nodecache.resolver import Resolver

log = logging.getLogger(__name__)

UDP_RCVBUF = 4 << 20  # absorbs bursts; the kernel caps it at net.core.rmem_max
TCP_BACKLOG = 1024
MAX_PIPELINED = 100  # per TCP connection; reading pauses above this
# Bind before the address exists: the agent serves first, then adds its
# addresses to the interface, then steers traffic with iptables rules.
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
IPV6_FREEBIND = 78  # Linux 4.15+; not exported by the socket module


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def make_socket(host: str, port: int, kind: socket.SocketKind) -> socket.socket:
    """A bound, non-blocking socket with SO_REUSEPORT (and v6-only for IPv6)."""
    sock = socket.socket(_family(host), kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        _set_freebind(sock)
        if kind == socket.SOCK_DGRAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(TCP_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        proto = "udp" if kind == socket.SOCK_DGRAM else "tcp"
        hint = (
            "ports below 1024 need root or CAP_NET_BIND_SERVICE"
            if exc.errno == 13
            else "is the address configured on this host, and is the port free?"
        )
        raise ListenError(f"cannot listen on {host} port {port}/{proto}: {exc.strerror}; {hint}") from None
    return sock


def _is_v6(transport: asyncio.BaseTransport) -> bool:
    sock = transport.get_extra_info("socket")
    return sock is not None and sock.family == socket.AF_INET6


def _lname(data: bytes) -> bytes | None:
    try:
        return wire.scan_query(data).lname
    except wire.Malformed:
        return None


def _outcome(reply: bytes) -> str:
    """How a reply made inside the receive callback came about: a hit, or an error we wrote."""
    return "error" if reply[3] & 0x0F in (wire.FORMERR, wire.NOTIMP, wire.REFUSED) else "hit"


def _set_freebind(sock: socket.socket) -> None:
    """Let bind() succeed for an address the node does not have (yet)."""
    if sock.family == socket.AF_INET6:
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
            return
        except OSError:
            pass  # older kernels: IP_FREEBIND covers IPv6 sockets too
    sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)


class UdpListener(asyncio.DatagramProtocol):
    """Answers datagrams; hits inline, misses through Resolver.submit."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.answer = resolver.answer
        self.submit = resolver.submit
        self.transport: asyncio.DatagramTransport | None = None
        self.via = VIA_UDP4
        self.activity = resolver.activity
        self.countdown = self.activity.countdown()
        self.query_log = resolver.query_log
        if self.query_log is not None:
            self.datagram_received = self._logged  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.via = VIA_UDP6 if _is_v6(transport) else VIA_UDP4

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.countdown -= 1
        if not self.countdown:
            return self._sampled(data, addr)
        r = self.answer(data, self.via)
        if r.__class__ is bytes:
            self.transport.sendto(r, addr)  # type: ignore[union-attr]
        elif r is not None:
            self.submit(data, r, self.via, self._deliver, addr)  # type: ignore[arg-type]

    def _sampled(self, data: bytes, addr: Any) -> None:
        """The same as datagram_received, timed, and counted for the top-N tables."""
        activity = self.activity
        self.countdown = activity.countdown()
        started = time.perf_counter()
        r = self.answer(data, self.via)
        if r.__class__ is bytes:
            self.transport.sendto(r, addr)  # type: ignore[union-attr]
            activity.hit_took(time.perf_counter() - started)
        elif r is not None:
            self.submit(data, r, self.via, self._deliver, addr)  # type: ignore[arg-type]
        activity.sample(_lname(data), addr[0] if isinstance(addr, tuple) else None)

    def _deliver(self, addr: Any, reply: bytes, _outcome: str) -> None:
        """A miss's answer (Resolver.submit); the socket may have closed meanwhile."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)

    def _logged(self, data: bytes, addr: Any) -> None:
        """datagram_received with the query log on: every answer is offered to it."""
        started = time.perf_counter()
        self.countdown -= 1
        sampled = not self.countdown
        r = self.answer(data, self.via)
        if r.__class__ is bytes:
            self.transport.sendto(r, addr)  # type: ignore[union-attr]
            took = time.perf_counter() - started
            if sampled:
                self.activity.hit_took(took)
            ql = self.query_log
            if ql is not None and ql.wants(r):  # type: ignore[arg-type]
                ql.record(addr, data, r, _outcome(r), "udp", took)  # type: ignore[arg-type]
        elif r is not None:
            self.submit(data, r, self.via, self._deliver_logged, (addr, data, started))  # type: ignore[arg-type]
        if sampled:
            self.countdown = self.activity.countdown()
            self.activity.sample(_lname(data), addr[0] if isinstance(addr, tuple) else None)

    def _deliver_logged(self, token: tuple[Any, bytes, float], reply: bytes, outcome: str) -> None:
        addr, data, started = token
        self._deliver(addr, reply, outcome)
        ql = self.query_log
        if ql is not None and ql.wants(reply):
            ql.record(addr, data, reply, outcome, "udp", time.perf_counter() - started)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp socket error: %s", exc)  # e.g. ICMP unreachable from a client


class TcpConnection(FramedConnection):
    """One client connection: 2-byte framing, pipelined queries, idle timeout.

    Replies are written as each is ready, so a slow miss does not hold back
    hits queued behind it (RFC 7766 6.2.1.1). The connection closes after
    `idle` seconds with no query and nothing outstanding.
    """

    def __init__(self, resolver: Resolver, idle: float) -> None:
        super().__init__(idle)
        self.resolver = resolver
        self.answer = resolver.answer
        self.submit = resolver.submit
        self.outstanding = 0
        self.paused = False
        self.via = VIA_TCP4
        self.peer: Any = None
        self.activity = resolver.activity
        self.countdown = self.activity.countdown()
        self.query_log = resolver.query_log

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.via = VIA_TCP6 if _is_v6(transport) else VIA_TCP4
        self.peer = transport.get_extra_info("peername")
        super().connection_made(transport)

    def busy(self) -> bool:
        return self.outstanding > 0  # answers are still coming; the clock restarts after them

    def data_received(self, data: bytes) -> None:
        for msg in self.frames(data):
            self._arm()
            self.countdown -= 1
            if not self.countdown or self.query_log is not None:
                self._one_observed(msg)
                continue
            r = self.answer(msg, self.via)
            if r.__class__ is bytes:
                self._send(r)  # type: ignore[arg-type]
            elif r is not None:
                self.outstanding += 1
                self.submit(msg, r, self.via, self._deliver, None)  # type: ignore[arg-type]
        if self.outstanding >= MAX_PIPELINED and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def _send(self, reply: bytes) -> None:
        self.write_message(reply)

    def _one_observed(self, msg: bytes) -> None:
        """One query on the sampled or logged branch: timed, sampled when due, logged when on."""
        started = time.perf_counter()
        sampled = not self.countdown
        if sampled:
            self.countdown = self.activity.countdown()
            peer = self.peer
            self.activity.sample(_lname(msg), peer[0] if isinstance(peer, tuple) else None)
        r = self.answer(msg, self.via)
        if r.__class__ is bytes:
            self._send(r)  # type: ignore[arg-type]
            if sampled:
                self.activity.hit_took(time.perf_counter() - started)
            ql = self.query_log
            if ql is not None and ql.wants(r):  # type: ignore[arg-type]
                ql.record(self.peer, msg, r, _outcome(r), "tcp", time.perf_counter() - started)  # type: ignore[arg-type]
        elif r is not None:
            self.outstanding += 1
            token = (msg, started) if self.query_log is not None else None
            self.submit(msg, r, self.via, self._deliver, token)  # type: ignore[arg-type]

    def _deliver(self, token: tuple[bytes, float] | None, reply: bytes, outcome: str) -> None:
        """A miss's answer (Resolver.submit): write it, log it when the query log is on, resume reading."""
        self._send(reply)
        ql = self.query_log
        if token is not None and ql is not None and ql.wants(reply):
            msg, started = token
            ql.record(self.peer, msg, reply, outcome, "tcp", time.perf_counter() - started)
        self.outstanding -= 1
        if self.paused and self.outstanding < MAX_PIPELINED // 2 and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.transport = None
