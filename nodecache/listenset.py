"""The agent's listening sockets: UDP and TCP on every listen address, opened, reconciled, closed.

One set per agent. Each address gets a UDP and a TCP socket on the same port
(with port 0 the kernel picks one free for both). A reload reconciles the
set: addresses in both configurations keep their sockets, new sockets are
bound before old ones close, and a failure to bind leaves the old set
serving. At shutdown each UDP socket is diverted, then drained, then closed
(see `close_all`).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
import struct
import termios
from collections.abc import Sequence
from typing import Any

from nodecache import mmsg
from nodecache.config import Config
from nodecache.errors import ListenError, NodecacheError
from nodecache.listeners import TcpClients, TcpConnection, UdpBatchTransport, UdpListener, make_socket
from nodecache.resolver import Resolver
from nodecache.sockstats import UdpSocketStats, udp_socket_stats

log = logging.getLogger(__name__)

UDP_CLOSE_POLL = 0.001  # seconds between looks for a quiet moment to close a UDP socket at shutdown
PORT_ZERO_ATTEMPTS = 10  # tries to find a port free for both UDP and TCP when asked for port 0


class ListenerSet:
    """UDP and TCP listeners by address; `bound` lists (address, port) as they serve now."""

    def __init__(self, config: Config, resolver: Resolver, tcp: TcpClients) -> None:
        self.config = config
        self.resolver = resolver
        self.tcp = tcp  # every TCP listener's clients, shared
        self.by_host: dict[str, tuple[Any, Any]] = {}  # host -> (UDP transport, TCP server)
        self.closers: list[Any] = []  # every transport and server still open, in opening order
        self.bound: list[tuple[str, int]] = []
        self._fallback_logged = False

    async def open_all(self) -> None:
        """Bind UDP and TCP on every listen address (same port for both)."""
        for host in self.config.listen:
            await self.open(host)

    async def open(self, host: str, port: int | None = None) -> None:
        """UDP and TCP on one address (on `port`, else the running config's); remembered by host
        so a reload can keep or close it."""
        loop = asyncio.get_running_loop()
        udp, tcp, port = self._bind_pair(host, self.config.port if port is None else port)
        transport = await self._serve_udp(loop, udp)
        server = await loop.create_server(
            lambda: TcpConnection(self.resolver, self.config.tcp_idle_timeout, self.tcp), sock=tcp
        )
        self.closers += [transport, server]
        self.by_host[host] = (transport, server)
        self.bound.append((host, port))

    async def _serve_udp(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> Any:
        """Answer on a UDP socket in batches (recvmmsg/sendmmsg), or through the loop's datagram transport
        with --udp-batch 0 or 1, or where the batch calls are missing (logged once)."""
        size = self.config.udp_batch
        why = mmsg.available() if size > 1 else None
        if size > 1 and why is None:
            return UdpBatchTransport(loop, sock, UdpListener(self.resolver), size)
        if why is not None and not self._fallback_logged:
            self._fallback_logged = True
            log.warning("UDP queries are read one at a time (--udp-batch %d is not possible: %s)", size, why)
        transport, _ = await loop.create_datagram_endpoint(lambda: UdpListener(self.resolver), sock=sock)
        return transport

    def close(self, host: str) -> None:
        """Stop listening on one address; its connections' in-flight answers still go out."""
        for closer in self.by_host.pop(host):
            closer.close()
            self.closers.remove(closer)
        self.bound = [b for b in self.bound if b[0] != host]

    def _bind_pair(self, host: str, wanted: int) -> tuple[socket.socket, socket.socket, int]:
        """UDP and TCP sockets on one port. With port 0 the kernel picks the UDP
        port, and another program may hold that port for TCP: then pick again."""
        for attempt in range(PORT_ZERO_ATTEMPTS):
            udp = make_socket(host, wanted, socket.SOCK_DGRAM, self.config.udp_rcvbuf, self.config.udp_sndbuf)
            port = udp.getsockname()[1]  # the real port when 0 was asked for
            try:
                return udp, make_socket(host, port, socket.SOCK_STREAM), port
            except ListenError:
                udp.close()
                if wanted != 0 or attempt == PORT_ZERO_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def reconcile(self, new: Config) -> None:
        """Listen as `new` says: open what it adds, then close what it drops; on failure change nothing.

        Listeners on addresses in both configs keep their sockets; a changed port
        reopens them all. New sockets are bound before old ones close, so a failure
        to bind leaves the old set serving.
        """
        # New sockets are bound on the new port while `self.config` is still the running
        # configuration; it is swapped only once every step succeeded.
        old = self.config
        if new.port == old.port:
            to_open = [h for h in new.listen if h not in self.by_host]
            to_close = [h for h in self.by_host if h not in new.listen]
        else:  # every socket moves to the new port
            to_open, to_close = list(new.listen), list(self.by_host)
        leaving = {h: self.by_host.pop(h) for h in to_close}
        leaving_bound = [b for b in self.bound if b[0] in leaving]
        self.bound = [b for b in self.bound if b[0] not in leaving]
        opened: list[str] = []
        try:
            for host in to_open:
                await self.open(host, new.port)
                opened.append(host)
        except NodecacheError:
            for host in opened:
                self.close(host)
            self.by_host.update(leaving)
            self.bound += leaving_bound
            raise
        for transport, server in leaving.values():
            for closer in (transport, server):
                closer.close()
                self.closers.remove(closer)
        self.tcp.max_total, self.tcp.max_per_client = new.max_tcp_connections, new.max_tcp_per_client  # new connections
        self.config = new

    async def close_all(self, deadline: float, drain_timeout: float) -> None:
        """Close the TCP listeners at once, and each UDP socket once it is quiet (at the latest at `deadline`).

        In a rollout another agent shares our ports (SO_REUSEPORT), but closing
        a UDP socket drops the datagrams queued in it, and a miss still being
        resolved can only be answered through it. So each UDP socket first
        stops getting new datagrams (`_divert`) while it still reads what it
        has, and is closed when no miss is in flight and its receive queue is
        empty. `drain_timeout` is only named in the log line.
        """
        loop = asyncio.get_running_loop()
        udp = {id(t): t for t, _ in self.by_host.values()}
        for closer in self.closers:
            if id(closer) not in udp:
                closer.close()
        for transport in udp.values():
            _divert(transport)
        late = False
        while udp:
            late = loop.time() >= deadline
            for key, transport in list(udp.items()):
                if late or (not self.resolver.waiting and not _queued(transport)):
                    transport.close()
                    del udp[key]
            if udp:
                await asyncio.sleep(UDP_CLOSE_POLL)
        if late:
            log.info("closed the UDP sockets at the %gs drain deadline with misses in flight; those get no answer",
                     drain_timeout)  # fmt: skip

    def udp_stats(self) -> list[UdpSocketStats]:
        """Each listening UDP socket's buffers, kernel drops and batch counters (stats, metrics)."""
        pairs = []
        for transport, _ in self.by_host.values():
            sock = transport.get_extra_info("socket")
            if sock is not None and not transport.is_closing():
                pairs.append((sock, transport.batch if isinstance(transport, UdpBatchTransport) else None))
        return udp_socket_stats(pairs)

    def describe(self) -> Sequence[str]:
        """'HOST port PORT' for each address served, for log lines."""
        return [f"{h} port {p}" for h, p in self.bound]


def _divert(transport: Any) -> None:
    """Have the kernel send this UDP socket's clients to the other sockets on its port, if any.

    Connecting the socket (to its own address, from which no query ever comes)
    does it: a reuseport group hands new datagrams only to its unconnected
    sockets (kernels with 2019's "udp: correct reuseport selection with
    connected sockets"; seen on 6.x; an older kernel that kept delivering here
    would be no worse off). Datagrams already queued stay readable, and replies still go
    out with an explicit address. Without another socket, new queries to a
    kube-dns ClusterIP find no socket, so the `-m socket` rule lets them fall
    through to kube-proxy (fail open).
    """
    sock = transport.get_extra_info("socket")
    if sock is None or transport.is_closing():
        return
    try:
        with socket.socket(fileno=os.dup(sock.fileno())) as same:  # the same socket; closing the copy keeps it
            same.connect(same.getsockname())
    except OSError as exc:
        log.debug("cannot divert a UDP socket to the other agents on its port: %s", exc)


def _queued(transport: Any) -> int:
    """Bytes of the next datagram waiting in a UDP transport's socket (0: none, or unknown)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return 0
