"""Lifecycle: start listeners, run until told to stop, shut down in order.

Signal handlers only set a flag; the steps themselves are small named
methods so the order is visible in one place (`startup`, `main_loop`,
`shutdown`). The parts they sequence live in their own modules: the
listening sockets (listenset.py), reload (reloader.py), the operator's
endpoints (operator_endpoints.py), background tasks (periodic.py) and the
node's interface and rules (node.py).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import signal
import time
from collections.abc import Callable, Sequence

from nodecache import build, mmsg
from nodecache.config import Config
from nodecache.health import Readiness
from nodecache.listeners import TcpClients
from nodecache.listenset import ListenerSet
from nodecache.logs import QueryLog
from nodecache.node import NodeSetup
from nodecache.operator_endpoints import MAX_TOP, OperatorEndpoints
from nodecache.periodic import PURGE_INTERVAL, TICK_INTERVAL, PeriodicTasks
from nodecache.reloader import Reloader, warn_restart_only, watch_signature
from nodecache.resolver import Resolver

__all__ = ["DRAIN_TIMEOUT", "MAX_TOP", "PURGE_INTERVAL", "TICK_INTERVAL", "Server", "run", "watch_signature"]

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 3.0  # seconds in-flight misses get to finish at shutdown
# The cyclic GC's youngest-generation threshold (CPython's default is 700). Its counter saturates with
# the live objects of a burst (a batch of 64 queries, 100 misses in flight), so at 700 it ran a collection
# every ~50 misses, 0.3 ms each: 6 us a miss. The miss path leaves no cycles to collect, so collecting
# rarely loses nothing: at 5,000, 50,000 saturated misses ran 4 collections instead of 900.
GC_YOUNG_THRESHOLD = 5_000


class Server:
    """One agent: its resolver and its sockets on every listen address."""

    def __init__(
        self, config: Config, rebuild: Callable[[], Config] | None = None, watch: Sequence[str] = ()
    ) -> None:
        self.config = config
        self.started = time.monotonic()
        self.resolver = Resolver(config)
        if config.query_log:
            self.resolver.query_log = QueryLog(config.query_log_sample, config.query_log_errors_only)
        self.tcp = TcpClients(config.max_tcp_connections, config.max_tcp_per_client)  # every TCP listener's clients
        self.listeners = ListenerSet(config, self.resolver, self.tcp)
        self.reloader = Reloader(rebuild, watch, lambda: self.config, self._apply)
        self.periodic = PeriodicTasks(self.resolver)
        self.node: NodeSetup | None = None  # interface and iptables rules; node.py
        self.readiness = Readiness(lambda: list(self.bound), lambda: self.node_ready())
        self.operator = OperatorEndpoints(
            config, self.resolver, self.tcp, self.readiness, lambda: self.bound,
            lambda: self.node.setup_errors if self.node is not None else {}, lambda: self.reloader.failed,
            self.started, udp=self.listeners.udp_stats, heap=self.periodic.heap.counts,
        )  # fmt: skip
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()
        # The parts' state under the names the tests and older callers use.
        self._listeners = self.listeners.by_host  # host -> (UDP transport, TCP server)
        self._closers = self.listeners.closers  # every open transport and server, in opening order
        self._stats = self.operator.stats  # the `stats` control request
        self.request_reload = self.reloader.request  # SIGHUP, or a changed file; signal-safe
        self.reload = self.reloader.reload  # -> whether the running configuration is now the new one

    @property
    def bound(self) -> list[tuple[str, int]]:
        """(address, port) of every listener serving now."""
        return self.listeners.bound

    @property
    def reload_failed(self) -> int:
        return self.reloader.failed

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
        # 0. A live agent's cache (a rollout), before this one serves or can look ready; --handover-timeout bounds it.
        await self.operator.receive_handover()
        # 1. Listeners, with the purge sweep and the loop probes (which need them serving).
        await self.listeners.open_all()
        self.periodic.start_purge()
        self.periodic.check_loops(self.config.loop_zones)
        self._log_serving()
        # 2. The interface, then the iptables rules; see node.py. Its setup error counts are `node.setup_errors`.
        self.node = NodeSetup(self.config, port=self.bound[0][1] if self.bound else self.config.port)
        await self.node.start()
        # 3. The once-a-second tick, then the control socket and the HTTP endpoints.
        self.periodic.start_tick()
        await self.operator.open()
        log.info("started in %.0f ms", (time.monotonic() - self.started) * 1e3)

    def _log_serving(self) -> None:
        for host, port in self.bound:
            log.info("serving DNS on %s port %d (udp, tcp)", host, port)
        for z in self.config.zones:
            ups = ", ".join(str(a) for a in z.forward.upstreams)
            log.info("zone %s -> %s over %s", z.name, ups, "tcp" if z.forward.force_tcp else "udp (tcp on truncation)")

    def node_ready(self) -> str | None:
        """The node check that fails (interface, rules), as one line; None when in place or not managed.

        /ready includes it. Node setup (node.py) answers it; without node setup there is nothing to check.
        """
        return self.node.problem() if self.node is not None else None

    async def main_loop(self) -> None:
        """Serve until told to stop; reload whenever SIGHUP or the file watcher asks."""
        self.reloader.start_watching()
        wanted_reload = self.reloader.wanted
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            while not self._stop.is_set():
                wanted = asyncio.ensure_future(wanted_reload.wait())
                await asyncio.wait((stop, wanted), return_when=asyncio.FIRST_COMPLETED)
                wanted.cancel()
                if wanted_reload.is_set() and not self._stop.is_set():
                    wanted_reload.clear()
                    await self.reload()
        finally:
            stop.cancel()
            self.reloader.stop_watching()
        log.info("stopping")

    async def _apply(self, new: Config) -> None:
        """Swap `new` in: listeners first (the only step that can fail), then the zones in one step."""
        old = self.config
        await self.listeners.reconcile(new)
        retired = self.resolver.reconfigure(new)
        self.config = new
        self.periodic.check_loops([z.name for z in new.zones if z not in old.zones and z.name in new.loop_zones])
        for zone in retired:  # their in-flight misses get the whole query timeout to finish
            asyncio.get_running_loop().call_later(zone.forwarder.policy.timeout + 1, zone.forwarder.close)
        warn_restart_only(old, new)
        kept = len(new.zones) - sum(1 for z in new.zones if z not in old.zones)
        log.info(
            "reloaded: %d zones (%d kept with their cache), listening on %s",
            len(new.zones), kept, ", ".join(self.listeners.describe()),
        )  # fmt: skip

    async def _enter_lameduck(self) -> None:
        """Stop looking ready, then keep answering for the lameduck delay (a second signal cuts it short).

        Skipped when startup did not finish: nothing was steered to us yet.
        """
        self.readiness.draining = True
        delay = self.config.lameduck
        if not self.operator.opened or delay <= 0:
            return
        log.info("not ready now; still answering for %gs (lameduck)", delay)
        try:
            await asyncio.wait_for(self._hurry.wait(), delay)
            log.info("lameduck cut short by a second signal")
        except TimeoutError:
            pass

    async def shutdown(self) -> None:
        """Hand the node back in a fixed order; each step tolerates a failed startup."""
        # 1. Readiness goes false first, and queries are still answered for the lameduck delay.
        await self._enter_lameduck()
        # 2. Rules, then the interface (unless told to keep them): traffic to a kube-dns ClusterIP falls back to kube-proxy.
        if self.node is not None:
            await self.node.stop(teardown=not self.config.skip_teardown)
        # 3. No new queries: close the listening sockets (each UDP one once it is quiet, see ListenerSet.close_all).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT
        await self.listeners.close_all(deadline, DRAIN_TIMEOUT)
        # 4. Clients still waiting on misses get the rest of DRAIN_TIMEOUT (the answer deadline bounds it).
        await self.resolver.drain(max(0.0, deadline - loop.time()))
        # 5. Operator endpoints, housekeeping and upstream connections go last.
        await self.operator.close()
        self.periodic.stop_tick()
        self.periodic.stop()
        self.resolver.close()


def run(config: Config, rebuild: Callable[[], Config] | None = None, watch: Sequence[str] = ()) -> None:
    """Run the agent on uvloop when available, else on the stock asyncio loop.

    `rebuild` re-reads the configuration on SIGHUP or when a `watch`ed path changes.
    """
    factory = loop_factory(config.loop)
    settle_gc()
    calls = mmsg.CALLS.name if mmsg.CALLS is not None else "none"
    log.info("event loop: %s; hot path: %s; recvmmsg/sendmmsg through: %s",
             "uvloop" if factory else "asyncio", build(), calls)  # fmt: skip
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(Server(config, rebuild, watch).serve())


@functools.cache
def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None for the stock loop: `choice` is Config.loop ("auto", "uvloop", "asyncio").

    Imports uvloop, once: `nodecache run` calls it inside notls.held_back(), so that uvloop's import of
    ssl does not load OpenSSL. ImportError when uvloop is asked for and not installed.
    """
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        log.warning("uvloop is not installed; running on the stock asyncio loop (hits are ~5x slower)")
        return None
    return uvloop.new_event_loop


def settle_gc() -> None:
    """Keep the cyclic GC off the per-query cost, once the modules and the configuration are loaded.

    Frozen, the startup objects (modules, functions, the config: about 30,000) are never traversed
    again; each full collection then walks only what the agent made since (cache entries, mostly),
    a fifth of the time. And the young generation is collected rarely (GC_YOUNG_THRESHOLD). Nothing
    is kept alive by this: frozen objects are still freed when their last reference goes.
    """
    gc.collect()
    gc.freeze()
    _young, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
