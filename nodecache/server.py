"""Lifecycle: start listeners, run until told to stop, shut down in order.

Signal handlers only set a flag; the steps themselves are small named
methods so the order is visible in one place (`serve`).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import socket
import struct
import termios
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from nodecache.config import Address, Config, canonical_zone
from nodecache.control import ControlServer
from nodecache.endpoints import TEXT, HttpEndpoint, Response
from nodecache.errors import ControlError, ListenError, NodecacheError
from nodecache.health import Readiness
from nodecache.listeners import TcpClients, TcpConnection, UdpListener, make_socket
from nodecache.logs import QueryLog
from nodecache.metrics import CONTENT_TYPE, AgentCollector, exposition, registry
from nodecache.node import NodeSetup
from nodecache.resolver import Resolver
from nodecache.stats import DEFAULT_TOP, report

log = logging.getLogger(__name__)

PURGE_INTERVAL = 10.0  # seconds between sweeps of entries past their stale window
DRAIN_TIMEOUT = 3.0  # seconds in-flight misses get to finish at shutdown
UDP_CLOSE_POLL = 0.001  # seconds between looks for a quiet moment to close a UDP socket at shutdown
PORT_ZERO_ATTEMPTS = 10  # tries to find a port free for both UDP and TCP when asked for port 0
TICK_INTERVAL = 1.0  # seconds between query-rate samples (stats, sampling interval, hit durations)
MAX_TOP = 1000  # largest --top a stats request may ask for


class Server:
    """One agent: its resolver and its sockets on every listen address."""

    def __init__(
        self, config: Config, rebuild: Callable[[], Config] | None = None, watch: Sequence[str] = ()
    ) -> None:
        self.config = config
        # Reload: `rebuild` reads the configuration again (the CLI's flags + Corefile);
        # `watch` are the files and directories whose change triggers it.
        self._rebuild = rebuild
        self._watch = tuple(watch)
        self._reload_wanted = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self.reload_failed = 0
        self.reloads = 0
        self._listeners: dict[str, tuple[Any, Any]] = {}  # host -> (UDP transport, TCP server)
        self._loop_checks: set[asyncio.Task[None]] = set()
        self.resolver = Resolver(config)
        self.tcp = TcpClients(config.max_tcp_connections, config.max_tcp_per_client)  # every TCP listener's clients
        self.bound: list[tuple[str, int]] = []
        self._stop = asyncio.Event()
        self._closers: list[Any] = []
        self._housekeeping: asyncio.Task[None] | None = None
        # Operator endpoints (control.py, endpoints.py, health.py, metrics.py).
        self.started = time.monotonic()
        self.readiness = Readiness(lambda: list(self.bound), lambda: self.node_ready())
        self.control: ControlServer | None = None
        self.http: list[HttpEndpoint] = []
        self._ticker: asyncio.Task[None] | None = None
        self._endpoints_open = False
        self._hurry = asyncio.Event()
        if config.query_log:
            self.resolver.query_log = QueryLog(config.query_log_sample, config.query_log_errors_only)
        self.node: NodeSetup | None = None  # interface and iptables rules; node.py

    def request_stop(self) -> None:
        """Ask the agent to stop; safe to call from a signal handler. A second request cuts the lameduck short."""
        if self._stop.is_set():
            self._hurry.set()
        self._stop.set()

    async def serve(self) -> None:
        """startup, then main_loop, then shutdown, whatever happens in between."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
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
            await self._open_listener(host)
        self._housekeeping = loop.create_task(self._purge_forever())
        self._check_loops(self.config.loop_zones)
        for host, port in self.bound:
            log.info("serving DNS on %s port %d (udp, tcp)", host, port)
        for z in self.config.zones:
            ups = ", ".join(str(a) for a in z.forward.upstreams)
            log.info("zone %s -> %s over %s", z.name, ups, "tcp" if z.forward.force_tcp else "udp (tcp on truncation)")

    def _check_loops(self, zone_names: Sequence[str]) -> None:
        """Probe these zones' upstreams for forwarding loops (Corefile `loop`), in the background.

        The listeners must already serve: a looping probe is caught when it reaches them.
        Other zones answer meanwhile; see Resolver.check_loops.
        """
        if zone_names:
            task = asyncio.get_running_loop().create_task(self.resolver.check_loops(zone_names))
            self._loop_checks.add(task)
            task.add_done_callback(self._loop_checks.discard)

    async def _open_listener(self, host: str) -> None:
        """UDP and TCP on one address; remembered by host so a reload can keep or close it."""
        loop = asyncio.get_running_loop()
        udp, tcp, port = self._bind_pair(host)
        transport, _ = await loop.create_datagram_endpoint(lambda: UdpListener(self.resolver), sock=udp)
        server = await loop.create_server(
            lambda: TcpConnection(self.resolver, self.config.tcp_idle_timeout, self.tcp), sock=tcp
        )
        self._closers += [transport, server]
        self._listeners[host] = (transport, server)
        self.bound.append((host, port))

    def _close_listener(self, host: str) -> None:
        """Stop listening on one address; its connections' in-flight answers still go out."""
        for closer in self._listeners.pop(host):
            closer.close()
            self._closers.remove(closer)
        self.bound = [b for b in self.bound if b[0] != host]

    def _bind_pair(self, host: str) -> tuple[socket.socket, socket.socket, int]:
        """UDP and TCP sockets on one port. With port 0 the kernel picks the UDP
        port, and another program may hold that port for TCP: then pick again."""
        for attempt in range(PORT_ZERO_ATTEMPTS):
            udp = make_socket(host, self.config.port, socket.SOCK_DGRAM)
            port = udp.getsockname()[1]  # the real port when 0 was asked for
            try:
                return udp, make_socket(host, port, socket.SOCK_STREAM), port
            except ListenError:
                udp.close()
                if self.config.port != 0 or attempt == PORT_ZERO_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def _setup_node(self) -> None:
        """The interface, then the iptables rules (the listeners already serve); see node.py.

        Its setup error counts are `self.node.setup_errors`."""
        self.node = NodeSetup(self.config, port=self.bound[0][1] if self.bound else self.config.port)
        await self.node.start()

    async def _open_endpoints(self) -> None:
        """The once-a-second tick, then the control socket, then /metrics, /health, /ready.

        The metrics and health addresses may be the same; they then share
        one HTTP server. Each is skipped when its Config field is None; a
        bare `:PORT` means every IPv4 address, as in a Corefile.
        """
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())
        cfg = self.config
        if cfg.control_socket:
            self.control = ControlServer(cfg.control_socket, {"stats": self._stats, "flush": self._flush})
            await self.control.start()
        routes: dict[Address, dict[str, Any]] = {}
        metrics_at, health_at = cfg.metrics_endpoint, cfg.health_endpoint
        if metrics_at:
            collector = AgentCollector(
                self.resolver, self._server_label, self._setup_errors, lambda: self.reload_failed, tcp=self.tcp
            )
            reg = registry(collector)

            async def metrics() -> Response:
                return 200, CONTENT_TYPE, exposition(reg)

            routes.setdefault(metrics_at, {})["/metrics"] = metrics
        if health_at:
            health = {"/health": self._health, "/ready": self._ready}
            routes.setdefault(health_at, {}).update(health)
        for address, paths in routes.items():
            endpoint = HttpEndpoint(address, paths)
            await endpoint.start()
            self.http.append(endpoint)
        self._endpoints_open = True
        log.info("started in %.0f ms", (time.monotonic() - self.started) * 1e3)

    def node_ready(self) -> str | None:
        """The node check that fails (interface, rules), as one line; None when in place or not managed.

        /ready includes it. Node setup (node.py) answers it; without node setup there is nothing to check.
        """
        return self.node.problem() if self.node is not None else None

    def _setup_errors(self) -> Mapping[str, int]:
        return self.node.setup_errors if self.node is not None else {}

    def _server_label(self) -> str:
        """CoreDNS's `server` label: one server, all local IPs, on our port."""
        return f"dns://:{self.bound[0][1] if self.bound else self.config.port}"

    async def _health(self) -> Response:
        return 200, TEXT, b"OK\n"

    async def _ready(self) -> Response:
        failed = await self.readiness.check()
        if failed is None:
            return 200, TEXT, b"ready\n"
        return 503, TEXT, f"not ready: {failed}\n".encode()

    def _stats(self, args: dict[str, Any]) -> dict[str, Any]:
        top = args.get("top", DEFAULT_TOP)
        if not isinstance(top, int) or not 0 <= top <= MAX_TOP:
            raise ControlError(f"top must be a whole number from 0 to {MAX_TOP}")
        ready, why = self.readiness.state()
        return report(
            self.resolver, started=self.started, listen=list(self.bound), ready=ready, not_ready=why, top=top, tcp=self.tcp
        )

    def _flush(self, args: dict[str, Any]) -> dict[str, Any]:
        """Flush synchronously, on the loop: atomic with respect to queries (see Resolver.flush)."""
        name, suffix, qtype = args.get("name"), args.get("suffix"), args.get("type")
        for value in (name, suffix):
            if value is not None and not isinstance(value, str):
                raise ControlError("name and suffix must be strings")
        if qtype is not None and (not isinstance(qtype, int) or not 0 < qtype < 65536):
            raise ControlError("type must be a number from 1 to 65535")
        name = canonical_zone(name) if name is not None else None
        suffix = canonical_zone(suffix) if suffix is not None else None
        removed = self.resolver.flush(name, suffix, qtype)
        given = {k: v for k, v in (("name", name), ("suffix", suffix), ("type", qtype)) if v is not None}
        log.info("flushed %d cached answers", removed, extra={"fields": given})
        return {"removed": removed}

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            self.resolver.tick()

    async def _enter_lameduck(self) -> None:
        """Stop looking ready, then keep answering for the lameduck delay (a second signal cuts it short).

        Skipped when startup did not finish: nothing was steered to us yet.
        """
        self.readiness.draining = True
        delay = self.config.lameduck
        if not self._endpoints_open or delay <= 0:
            return
        log.info("not ready now; still answering for %gs (lameduck)", delay)
        try:
            await asyncio.wait_for(self._hurry.wait(), delay)
            log.info("lameduck cut short by a second signal")
        except TimeoutError:
            pass

    async def _teardown_node(self) -> None:
        """Remove the iptables rules, then the interface (unless told to keep them)."""
        if self.node is not None:
            await self.node.stop(teardown=not self.config.skip_teardown)

    async def _close_endpoints(self) -> None:
        """Close the control socket and the HTTP endpoints."""
        if self.control is not None:
            self.control.close()
        for endpoint in self.http:
            endpoint.close()
        for endpoint in self.http:
            await endpoint.wait_closed()  # bounded: see HttpEndpoint.wait_closed
        if self._ticker is not None:
            self._ticker.cancel()

    async def main_loop(self) -> None:
        """Serve until told to stop; reload whenever SIGHUP or the file watcher asks."""
        if self._rebuild is not None and self._watch and self.config.reload_interval > 0:
            self._watcher = asyncio.get_running_loop().create_task(self._watch_forever())
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            while not self._stop.is_set():
                wanted = asyncio.ensure_future(self._reload_wanted.wait())
                await asyncio.wait((stop, wanted), return_when=asyncio.FIRST_COMPLETED)
                wanted.cancel()
                if self._reload_wanted.is_set() and not self._stop.is_set():
                    self._reload_wanted.clear()
                    await self.reload()
        finally:
            stop.cancel()
            if self._watcher is not None:
                self._watcher.cancel()
        log.info("stopping")

    def request_reload(self) -> None:
        """Ask for a reload (SIGHUP, or a changed file); safe to call from a signal handler."""
        self._reload_wanted.set()

    async def reload(self) -> bool:
        """Build the configuration again and swap it in; keep the old one if the new one is invalid.

        Returns whether the running configuration is now the new one (or already was).
        """
        if self._rebuild is None:
            log.info("reload asked for, but this agent was not started from the command line; nothing to read")
            return False
        try:
            new = self._rebuild()
        except NodecacheError as exc:
            self.reload_failed += 1
            log.error("reload failed, still running the previous configuration: %s", exc)
            return False
        if new == self.config:
            log.info("reload: configuration unchanged")
            return True
        try:
            await self._apply(new)
        except NodecacheError as exc:
            self.reload_failed += 1
            log.error("reload failed, still running the previous configuration: %s", exc)
            return False
        self.reloads += 1
        return True

    async def _apply(self, new: Config) -> None:
        """Swap `new` in: listeners first (the only step that can fail), then the zones in one step.

        Listeners on addresses in both configs keep their sockets; a changed port
        reopens them all. New sockets are bound before old ones close, so a failure
        to bind leaves the old set serving.
        """
        old = self.config
        if new.port == old.port:
            to_open = [h for h in new.listen if h not in self._listeners]
            to_close = [h for h in self._listeners if h not in new.listen]
        else:  # every socket moves to the new port
            to_open, to_close = list(new.listen), list(self._listeners)
        leaving = {h: self._listeners.pop(h) for h in to_close}
        leaving_bound = [b for b in self.bound if b[0] in leaving]
        self.bound = [b for b in self.bound if b[0] not in leaving]
        opened: list[str] = []
        try:
            for host in to_open:
                await self._open_listener(host)
                opened.append(host)
        except NodecacheError:
            for host in opened:
                self._close_listener(host)
            self._listeners.update(leaving)
            self.bound += leaving_bound
            raise
        for transport, server in leaving.values():
            for closer in (transport, server):
                closer.close()
                self._closers.remove(closer)
        retired = self.resolver.reconfigure(new)
        self.tcp.max_total, self.tcp.max_per_client = new.max_tcp_connections, new.max_tcp_per_client  # new connections
        self.config = new
        self._check_loops([z.name for z in new.zones if z not in old.zones and z.name in new.loop_zones])
        for zone in retired:  # their in-flight misses get the whole query timeout to finish
            asyncio.get_running_loop().call_later(zone.forwarder.policy.timeout + 1, zone.forwarder.close)
        for what in ("control_socket", "metrics_address", "health_address", "query_log", "setup_interface",
                     "setup_iptables", "interface_name"):  # fmt: skip
            if getattr(new, what) != getattr(old, what):
                log.warning("reload: %s changed; it takes effect when the agent restarts", what)
        if (new.setup_interface or new.setup_iptables) and set(new.listen) != set(old.listen):
            log.warning("reload: the interface and iptables rules keep the previous local IPs until the agent restarts")
        kept = len(new.zones) - sum(1 for z in new.zones if z not in old.zones)
        log.info(
            "reloaded: %d zones (%d kept with their cache), listening on %s",
            len(new.zones), kept, ", ".join(f"{h} port {p}" for h, p in self.bound),
        )  # fmt: skip

    async def _watch_forever(self) -> None:
        """Poll the watched paths; a change of what they resolve to asks for a reload.

        ConfigMap volumes update by pointing a `..data` symlink at a new directory, so
        the identity (inode, mtime, size) of each path's resolved target is compared,
        and a directory's entries are compared one by one.
        """
        seen = watch_signature(self._watch)
        while True:
            await asyncio.sleep(self.config.reload_interval)
            now = watch_signature(self._watch)
            if now != seen:
                seen = now
                log.info("configuration files changed; reloading")
                self.request_reload()

    async def shutdown(self) -> None:
        """Hand the node back in a fixed order; each step tolerates a failed startup."""
        # 1. Readiness goes false first, and queries are still answered for the lameduck delay.
        await self._enter_lameduck()
        # 2. Rules, then the interface: traffic to a kube-dns ClusterIP falls back to kube-proxy.
        await self._teardown_node()
        # 3. No new queries: close the listening sockets (each UDP one once it is quiet, see there).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT
        await self._close_listeners(deadline)
        # 4. Clients still waiting on misses get the rest of DRAIN_TIMEOUT (the answer deadline bounds it).
        await self.resolver.drain(max(0.0, deadline - loop.time()))
        # 5. Operator endpoints, housekeeping and upstream connections go last.
        await self._close_endpoints()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        for task in list(self._loop_checks):
            task.cancel()
        self.resolver.close()

    async def _close_listeners(self, deadline: float) -> None:
        """Close the TCP listeners at once, and each UDP socket once it is quiet (at the latest at `deadline`).

        In a rollout another agent shares our ports (SO_REUSEPORT), but closing
        a UDP socket drops the datagrams queued in it, and a miss still being
        resolved can only be answered through it. So each UDP socket first
        stops getting new datagrams (`_divert`) while it still reads what it
        has, and is closed when no miss is in flight and its receive queue is
        empty.
        """
        loop = asyncio.get_running_loop()
        udp = {id(t): t for t, _ in self._listeners.values()}
        for closer in self._closers:
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
                     DRAIN_TIMEOUT)  # fmt: skip

    async def _purge_forever(self) -> None:
        while True:
            await asyncio.sleep(PURGE_INTERVAL)
            dropped = self.resolver.purge()
            if dropped:
                log.debug("purged %d expired entries", dropped)


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


def watch_signature(paths: Sequence[str]) -> tuple[Any, ...]:
    """What each path resolves to now: (path, inode, mtime, size) of its target, None when missing.

    A directory contributes its visible entries (and its `..data` link target).
    """
    out: list[Any] = []
    for path in paths:
        targets = [path]
        if os.path.isdir(path):
            targets = [os.path.join(path, "..data")]
            targets += sorted(os.path.join(path, n) for n in os.listdir(path) if not n.startswith("."))
        for target in targets:
            real = os.path.realpath(target)
            try:
                st = os.stat(real)
            except OSError:
                out.append((target, None))
                continue
            out.append((target, real, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


def run(config: Config, rebuild: Callable[[], Config] | None = None, watch: Sequence[str] = ()) -> None:
    """Run the agent on uvloop when available, else on the stock asyncio loop.

    `rebuild` re-reads the configuration on SIGHUP or when a `watch`ed path changes.
    """
    _run_on_loop(Server(config, rebuild, watch).serve(), config.loop)


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
