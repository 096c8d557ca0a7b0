"""Lifecycle: start listeners, run until told to stop, shut down in order.

Signal handlers only set a flag; the steps themselves are small named
methods so the order is visible in one place (`serve`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Coroutine
from typing import Any

from nodecache.config import Config
from nodecache.listeners import Tasks, TcpConnection, UdpListener, make_socket
from nodecache.resolver import Resolver

log = logging.getLogger(__name__)

PURGE_INTERVAL = 10.0  # seconds between sweeps of entries past their stale window
DRAIN_TIMEOUT = 3.0  # seconds in-flight misses get to finish at shutdown


class Server:
    """One agent: its resolver and its sockets on every listen address."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.resolver = Resolver(config)
        self.tasks = Tasks()
        self.bound: list[tuple[str, int]] = []
        self._stop = asyncio.Event()
        self._closers: list[Any] = []
        self._housekeeping: asyncio.Task[None] | None = None

    def request_stop(self) -> None:
        """Ask the agent to stop; safe to call from a signal handler."""
        self._stop.set()

    async def serve(self) -> None:
        """startup, then main_loop, then shutdown, whatever happens in between."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.startup()
            await self.main_loop()
        finally:
            await self.shutdown()

    async def startup(self) -> None:
        """Listeners first (they must serve before traffic is steered to them),
        then the node's interface and rules, then the operator's endpoints."""
        await self._open_listeners()
        await self._setup_node()
        await self._open_endpoints()

    async def _open_listeners(self) -> None:
        """Bind UDP and TCP on every listen address (same port for both)."""
        loop = asyncio.get_running_loop()
        for host in self.config.listen:
            udp = make_socket(host, self.config.port, socket.SOCK_DGRAM)
            port = udp.getsockname()[1]  # the real port when 0 was asked for
            try:
                tcp = make_socket(host, port, socket.SOCK_STREAM)
            except Exception:
                udp.close()
                raise
            transport, _ = await loop.create_datagram_endpoint(
                lambda: UdpListener(self.resolver, self.tasks), sock=udp
            )
            server = await loop.create_server(
                lambda: TcpConnection(self.resolver, self.tasks, self.config.tcp_idle_timeout), sock=tcp
            )
            self._closers += [transport, server]
            self.bound.append((host, port))
        self._housekeeping = loop.create_task(self._purge_forever())
        for host, port in self.bound:
            log.info("serving DNS on %s port %d (udp, tcp)", host, port)
        for z in self.config.zones:
            ups = ", ".join(str(a) for a in z.forward.upstreams)
            log.info("zone %s -> %s over %s", z.name, ups, "tcp" if z.forward.force_tcp else "udp (tcp on truncation)")

    async def _setup_node(self) -> None:
        """Node integration (interface, iptables rules): see netif.py, firewall.py."""

    async def _open_endpoints(self) -> None:
        """Control socket, metrics and health endpoints: see control.py, metrics.py."""

    async def _enter_lameduck(self) -> None:
        """Stop looking ready and keep answering for a while before stopping."""

    async def _teardown_node(self) -> None:
        """Remove the iptables rules, then the interface (unless told to keep them)."""

    async def _close_endpoints(self) -> None:
        """Close the control socket and the HTTP endpoints."""

    async def main_loop(self) -> None:
        await self._stop.wait()
        log.info("stopping")

    async def shutdown(self) -> None:
        """Hand the node back in a fixed order; each step tolerates a failed startup."""
        # 1. Readiness goes false first, and queries are still answered for the lameduck delay.
        await self._enter_lameduck()
        # 2. Rules, then the interface: traffic to a kube-dns ClusterIP falls back to kube-proxy.
        await self._teardown_node()
        # 3. No new queries: close the listening sockets.
        for closer in self._closers:
            closer.close()
        # 4. Misses already being resolved get a bounded time to answer.
        await self.tasks.drain(DRAIN_TIMEOUT)
        # 5. Operator endpoints, housekeeping and upstream connections go last.
        await self._close_endpoints()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        self.resolver.close()

    async def _purge_forever(self) -> None:
        while True:
            await asyncio.sleep(PURGE_INTERVAL)
            dropped = self.resolver.purge()
            if dropped:
                log.debug("purged %d expired entries", dropped)


def run(config: Config) -> None:
    """Run the agent on uvloop when available, else on the stock asyncio loop."""
    _run_on_loop(Server(config).serve(), config.loop)


def _run_on_loop(coro: Coroutine[Any, Any, None], choice: str) -> None:
    factory = None
    if choice in ("auto", "uvloop"):
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            if choice == "uvloop":
                coro.close()
                raise
            log.warning("uvloop is not installed; running on the stock asyncio loop (hits are ~5x slower)")
    log.info("event loop: %s", "uvloop" if factory else "asyncio")
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(coro)
