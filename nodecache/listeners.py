"""UDP and TCP listeners (asyncio protocols).

Sockets are made here with SO_REUSEPORT, so a new agent can bind beside the
old one during a rolling update, and handed to the event loop. A cache hit
is answered inside the receive callback without creating a task; only a miss
spawns one.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import Any

from nodecache import wire
from nodecache.errors import ListenError
from nodecache.resolver import Resolver

log = logging.getLogger(__name__)

UDP_RCVBUF = 4 << 20  # absorbs bursts; the kernel caps it at net.core.rmem_max
TCP_BACKLOG = 1024
MAX_PIPELINED = 100  # per TCP connection; reading pauses above this


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


class Tasks:
    """Tasks started for cache misses, kept so shutdown can wait for them."""

    def __init__(self) -> None:
        self.running: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def drain(self, timeout: float) -> None:
        """Let in-flight misses finish (bounded), then cancel what is left."""
        if self.running:
            _done, pending = await asyncio.wait(set(self.running), timeout=timeout)
            for task in pending:
                task.cancel()


class UdpListener(asyncio.DatagramProtocol):
    """Answers datagrams; hits inline, misses in a task."""

    def __init__(self, resolver: Resolver, tasks: Tasks) -> None:
        self.answer = resolver.answer
        self.resolve = resolver.resolve
        self.tasks = tasks
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        r = self.answer(data, False)
        if r.__class__ is bytes:
            self.transport.sendto(r, addr)  # type: ignore[union-attr]
        elif r is not None:
            self.tasks.spawn(self._miss(data, r, addr))  # type: ignore[arg-type]

    async def _miss(self, data: bytes, q: wire.Query, addr: Any) -> None:
        reply = await self.resolve(data, q, False)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp socket error: %s", exc)  # e.g. ICMP unreachable from a client


class TcpConnection(asyncio.Protocol):
    """One client connection: 2-byte framing, pipelined queries, idle timeout.

    Replies are written as each is ready, so a slow miss does not hold back
    hits queued behind it (RFC 7766 6.2.1.1). The connection closes after
    `idle` seconds with no query and nothing outstanding.
    """

    def __init__(self, resolver: Resolver, tasks: Tasks, idle: float) -> None:
        self.answer = resolver.answer
        self.resolve = resolver.resolve
        self.tasks = tasks
        self.idle = idle
        self.buf = bytearray()
        self.outstanding = 0
        self.paused = False
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self.idle, self._idle_out)

    def _idle_out(self) -> None:
        if self.outstanding:
            self._arm()  # answers are still coming; the clock restarts after them
        elif self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= 2:
            size = buf[0] << 8 | buf[1]
            if len(buf) < 2 + size:
                break
            msg = bytes(buf[2 : 2 + size])
            del buf[: 2 + size]
            self._arm()
            r = self.answer(msg, True)
            if r.__class__ is bytes:
                self._send(r)  # type: ignore[arg-type]
            elif r is not None:
                self.outstanding += 1
                self.tasks.spawn(self._miss(msg, r))  # type: ignore[arg-type]
        if self.outstanding >= MAX_PIPELINED and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def _send(self, reply: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(struct.pack("!H", len(reply)) + reply)

    async def _miss(self, msg: bytes, q: wire.Query) -> None:
        try:
            self._send(await self.resolve(msg, q, True))
        finally:
            self.outstanding -= 1
            if self.paused and self.outstanding < MAX_PIPELINED // 2 and self.transport is not None:
                self.paused = False
                self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.transport = None
