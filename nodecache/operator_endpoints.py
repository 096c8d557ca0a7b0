"""What an operator talks to: the control socket (stats, flush) and HTTP /metrics, /health, /ready.

The control handlers check their input here, since it comes from outside the
agent; the reports themselves are built by stats.py, the metrics by
metrics.AgentCollector, readiness by health.Readiness.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from nodecache.config import Address, Config
from nodecache.control import ControlServer
from nodecache.endpoints import TEXT, HttpEndpoint, Response
from nodecache.errors import ControlError
from nodecache.health import Readiness
from nodecache.listeners import TcpClients
from nodecache.metrics import CONTENT_TYPE, AgentCollector, exposition, registry
from nodecache.names import canonical_name
from nodecache.resolver import Resolver
from nodecache.sockstats import UdpSocketStats
from nodecache.stats import DEFAULT_TOP, report

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
    ) -> None:
        self.config = config  # the one at startup: these addresses change only with a restart
        self.resolver = resolver
        self.tcp = tcp
        self.readiness = readiness
        self.bound = bound
        self.setup_errors = setup_errors
        self.reload_failed = reload_failed
        self.started = started
        self.udp = udp  # the listening UDP sockets' buffers and drops, read when asked
        self.control: ControlServer | None = None
        self.http: list[HttpEndpoint] = []
        self.opened = False

    async def open(self) -> None:
        """The control socket, then /metrics, /health, /ready.

        The metrics and health addresses may be the same; they then share
        one HTTP server. Each is skipped when its Config field is None; a
        bare `:PORT` means every IPv4 address, as in a Corefile.
        """
        cfg = self.config
        if cfg.control_socket:
            self.control = ControlServer(cfg.control_socket, {"stats": self.stats, "flush": self.flush})
            await self.control.start()
        routes: dict[Address, dict[str, Any]] = {}
        metrics_at, health_at = cfg.metrics_endpoint, cfg.health_endpoint
        if metrics_at:
            collector = AgentCollector(
                self.resolver, self.server_label, self.setup_errors, self.reload_failed, tcp=self.tcp, udp=self.udp
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
            tcp=self.tcp, udp=self.udp(),
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

