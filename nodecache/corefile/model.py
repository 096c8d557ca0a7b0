"""The parsed Corefile as frozen data: server blocks, each item remembering its line."""

from __future__ import annotations

from dataclasses import dataclass

from nodecache.corefile.directives.cache import CacheSpec
from nodecache.corefile.directives.forward import ForwardSpec
from nodecache.corefile.directives.hosts import HostsSpec
from nodecache.corefile.directives.reload import ReloadSpec
from nodecache.corefile.directives.template import TemplateSpec
from nodecache.corefile.keys import ZoneKey
from nodecache.corefile.values import Endpoint


@dataclass(frozen=True)
class ServerBlock:
    """One `ZONE[:PORT]... { ... }` block, everything in it parsed and checked."""

    source: str
    line: int
    keys: tuple[ZoneKey, ...]
    errors: bool = False
    log: bool = False
    reload: ReloadSpec | None = None
    loop: bool = False
    bind: tuple[str, ...] = ()  # empty: every address, as CoreDNS
    health: Endpoint | None = None
    lameduck: float = 0.0
    prometheus: Endpoint | None = None
    cache: CacheSpec | None = None
    forward: ForwardSpec | None = None
    templates: tuple[TemplateSpec, ...] = ()
    hosts: HostsSpec | None = None

    @property
    def zones(self) -> tuple[str, ...]:
        return tuple(k.zone for k in self.keys)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass(frozen=True)
class CorefileConfig:
    """A whole parsed Corefile: its server blocks in file order."""

    source: str
    blocks: tuple[ServerBlock, ...]

    @property
    def reload(self) -> ReloadSpec | None:
        """The agent-wide reload check: the most frequent one any block asks for.

        CoreDNS's reload watches the whole Corefile, whichever block names it.
        """
        specs = [b.reload for b in self.blocks if b.reload is not None]
        return min(specs, key=lambda s: (s.interval, s.jitter)) if specs else None


@dataclass(frozen=True)
class Overrides:
    """Command-line values that win over the Corefile; None means "not given".

    Order, lowest to highest: built-in defaults, then the Corefile, then these.
    """

    listen: tuple[str, ...] | None = None
    port: int | None = None
    try_timeout: float | None = None
    timeout: float | None = None
    tcp_idle_timeout: float | None = None
    max_udp_payload: int | None = None
    loop: str | None = None
    metrics_address: str | None = None
    health_address: str | None = None
    lameduck: float | None = None
