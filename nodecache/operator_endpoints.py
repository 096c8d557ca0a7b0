"""What an operator talks to: the control socket (stats, flush, dump, load) and HTTP /metrics, /health, /ready.

The control handlers check their input here, since it comes from outside the
agent; the reports themselves are built by stats.py, the metrics by
metrics.AgentCollector, readiness by health.Readiness.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from nodecache import control, handover, notls
from nodecache.config import DEFAULT_HANDOVER_MAX_BYTES, Address, Config
from nodecache.control import ControlServer, Handler
from nodecache.endpoints import TEXT, HttpEndpoint, Response
from nodecache.errors import ControlError, HandoverError
from nodecache.health import Readiness
from nodecache.listeners import TcpClients
from nodecache.names import canonical_name
from nodecache.resolver import Resolver
from nodecache.sockstats import UdpSocketStats
from nodecache.stats import DEFAULT_TOP, report

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

log = logging.getLogger(__name__)

MAX_TOP = 1000  # largest --top a stats request may ask for


class OperatorEndpoints:
    """The control socket and the HTTP endpoints of one agent, opened and closed together."""

    def __init__(
        self,
        config: Config,
        resolver: Resolver,
        tcp: TcpClients,
        readiness: Readiness,
        bound: Callable[[], list[tuple[str, int]]],
        setup_errors: Callable[[], Mapping[str, int]],
        reload_failed: Callable[[], int],
        started: float,
        udp: Callable[[], list[UdpSocketStats]] = list,
        heap: Callable[[], Mapping[str, Any]] = dict,
    ) -> None:
        self.config = config  # the one at startup: these addresses change only with a restart
        self.resolver = resolver
        self.tcp = tcp
        self.readiness = readiness
        self.bound = bound
        self.setup_errors = setup_errors
        self.reload_failed = reload_failed
        self.started = started
        self.handover = handover.Counts()  # cache dumps and loads, this agent's life (`nodecache stats`)
        self.udp = udp  # the listening UDP sockets' buffers and drops, read when asked
        self.heap = heap  # heap trims after miss bursts (heap.HeapTrimmer.counts), read when asked
        self.control: ControlServer | None = None
        self.http: list[HttpEndpoint] = []
        self._registry: CollectorRegistry | None = None  # made on the first scrape (see `_metrics`)
        self.opened = False

    async def open(self) -> None:
        """The control socket, then /metrics, /health, /ready.

        The metrics and health addresses may be the same; they then share
        one HTTP server. Each is skipped when its Config field is None; a
        bare `:PORT` means every IPv4 address, as in a Corefile.
        """
        cfg = self.config
        if cfg.control_socket:
            handlers: dict[str, Handler] = {"stats": self.stats, "flush": self.flush, "dump": self.dump, "load": self.load}
            self.control = ControlServer(cfg.control_socket, handlers)
            await self.control.start()
        routes: dict[Address, dict[str, Any]] = {}
        metrics_at, health_at = cfg.metrics_endpoint, cfg.health_endpoint
        if metrics_at:
            routes.setdefault(metrics_at, {})["/metrics"] = self._metrics
        if health_at:
            health = {"/health": self._health, "/ready": self._ready}
            routes.setdefault(health_at, {}).update(health)
        for address, paths in routes.items():
            endpoint = HttpEndpoint(address, paths)
            await endpoint.start()
            self.http.append(endpoint)
        self.opened = True

    async def close(self) -> None:
        """Close the control socket and the HTTP endpoints."""
        if self.control is not None:
            self.control.close()
        for endpoint in self.http:
            endpoint.close()
        for endpoint in self.http:
            await endpoint.wait_closed()  # bounded: see HttpEndpoint.wait_closed

    def server_label(self) -> str:
        """CoreDNS's `server` label: one server, all local IPs, on our port."""
        bound = self.bound()
        return f"dns://:{bound[0][1] if bound else self.config.port}"

    async def _metrics(self) -> Response:
        """/metrics. prometheus_client, with what it imports, keeps about 4 MiB resident: it is
        loaded on the first scrape (a one-off pause of up to about 0.1 s), not at start; without OpenSSL,
        which it and the urllib it brings would load (notls.py)."""
        with notls.held_back():
            from nodecache.metrics import CONTENT_TYPE, AgentCollector, exposition, registry

        if self._registry is None:
            collector = AgentCollector(
                self.resolver, self.server_label, self.setup_errors, self.reload_failed, tcp=self.tcp,
                handover=lambda: vars(self.handover), udp=self.udp, heap=self.heap,
            )
            self._registry = registry(collector)
        return 200, CONTENT_TYPE, exposition(self._registry)

    async def _health(self) -> Response:
        return 200, TEXT, b"OK\n"

    async def _ready(self) -> Response:
        failed = await self.readiness.check()
        if failed is None:
            return 200, TEXT, b"ready\n"
        return 503, TEXT, f"not ready: {failed}\n".encode()

    def stats(self, args: dict[str, Any]) -> dict[str, Any]:
        """The `stats` control request: the report `nodecache stats` prints."""
        top = args.get("top", DEFAULT_TOP)
        if not isinstance(top, int) or not 0 <= top <= MAX_TOP:
            raise ControlError(f"top must be a whole number from 0 to {MAX_TOP}")
        ready, why = self.readiness.state()
        return report(
            self.resolver, started=self.started, listen=list(self.bound()), ready=ready, not_ready=why, top=top,
            tcp=self.tcp, handover=vars(self.handover), udp=self.udp(), heap=dict(self.heap()),
        )  # fmt: skip

    def flush(self, args: dict[str, Any]) -> dict[str, Any]:
        """Flush synchronously, on the loop: atomic with respect to queries (see Resolver.flush)."""
        name, suffix, qtype = args.get("name"), args.get("suffix"), args.get("type")
        for value in (name, suffix):
            if value is not None and not isinstance(value, str):
                raise ControlError("name and suffix must be strings")
        if qtype is not None and (not isinstance(qtype, int) or not 0 < qtype < 65536):
            raise ControlError("type must be a number from 1 to 65535")
        name = canonical_name(name) if name is not None else None
        suffix = canonical_name(suffix) if suffix is not None else None
        removed = self.resolver.flush(name, suffix, qtype)
        given = {k: v for k, v in (("name", name), ("suffix", suffix), ("type", qtype)) if v is not None}
        log.info("flushed %d cached answers", removed, extra={"fields": given})
        return {"removed": removed}


    def dump(self, args: dict[str, Any]) -> dict[str, Any]:
        """The `dump` control request: every zone's answers with their lifetimes (handover.py), base64."""
        zones = [(z.name, z.cache) for z in self.resolver.zones]
        data, counts = handover.dump(zones, DEFAULT_HANDOVER_MAX_BYTES, self.resolver.clock())
        self.handover.add(handover.Counts(dumped=counts.dumped, left_out=counts.left_out))
        if counts.left_out:
            log.warning("cache dump: %d answers left out, over %d bytes", counts.left_out, DEFAULT_HANDOVER_MAX_BYTES)
        return {"dump": base64.b64encode(data).decode(), "dumped": counts.dumped, "left_out": counts.left_out,
                "bytes": counts.bytes}  # fmt: skip

    def load(self, args: dict[str, Any]) -> dict[str, Any]:
        """The `load` control request: keep a dump's answers, synchronously (all checked before any is kept)."""
        text = args.get("dump")
        if not isinstance(text, str):
            raise ControlError("dump must be the base64 text of a cache dump")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ControlError("dump is not base64 text; give the file `nodecache dump` wrote") from None
        return self.keep(data)

    def keep(self, data: bytes) -> dict[str, Any]:
        """Load dump bytes into the caches of this agent's zones; HandoverError leaves them as they were."""
        dump = handover.parse(data, DEFAULT_HANDOVER_MAX_BYTES)
        caches = {z.zone.wire: z.cache for z in self.resolver.zones}
        counts = handover.load(dump, caches.get, self.config.max_udp_payload)
        self.handover.add(counts)
        result = {k: v for k, v in vars(counts).items() if k in ("loaded", "expired", "no_zone", "not_kept")}
        log.info("cache dump loaded", extra={"fields": result})
        return result

    async def receive_handover(self) -> None:
        """At startup: copy the cache of the agent answering on our control socket (a rollout), bounded in time.

        Absent, hung, too slow, or a dump that does not load: start with what came (nothing), and say so.
        """
        cfg = self.config
        if not cfg.control_socket or not cfg.handover_timeout:
            return
        started = time.monotonic()
        try:
            result = await asyncio.wait_for(
                asyncio.to_thread(control.call, cfg.control_socket, "dump", {}, cfg.handover_timeout),
                cfg.handover_timeout,
            )
            data = base64.b64decode(result["dump"], validate=True)
            loaded = self.keep(data)
        except (ControlError, HandoverError, TimeoutError, KeyError, TypeError, binascii.Error) as exc:
            self.handover.add(handover.Counts(failed=1))
            log.info("no cache handed over (%s); starting with an empty cache", str(exc) or type(exc).__name__)
            return
        log.info("cache handed over from the live agent in %.0f ms: %d answers", (time.monotonic() - started) * 1e3,
                 loaded["loaded"])  # fmt: skip
