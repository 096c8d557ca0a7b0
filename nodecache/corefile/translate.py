"""Step two: a parsed Corefile into the agent's complete Config, flags in `Overrides` winning.

This module owns the whole mapping; each directive module supplies the translation of
its own part. What the agent cannot honour as written is refused here, naming the
line, so a half-understood Corefile never runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nodecache.config import DEFAULT_TIMEOUT, DEFAULT_TRY_TIMEOUT, Config, Zone
from nodecache.corefile.directives import bind, cache, flags, forward, health, reload, template
from nodecache.corefile.model import CorefileConfig, Overrides, ServerBlock
from nodecache.corefile.values import is_ip
from nodecache.errors import ConfigError


def to_config(parsed: CorefileConfig, overrides: Overrides | None = None) -> Config:
    """Build the agent's Config from a parsed Corefile; flags in `overrides` win.

    Refuses, naming the line, what the agent cannot honour yet, rather than running
    something other than what the operator wrote.
    """
    o = overrides or Overrides()
    blocks = parsed.blocks
    _refuse_unsupported(blocks)
    reload_interval = reload.reload_interval(blocks)
    listen = o.listen if o.listen is not None else bind.common_listen(blocks)
    for host in listen:
        if not is_ip(host):
            raise ConfigError(f"listen address {host!r} is not an IP address; give bare IPv4 or IPv6 addresses")
    port = o.port if o.port is not None else _common_port(blocks)
    try_timeout = o.try_timeout if o.try_timeout is not None else DEFAULT_TRY_TIMEOUT
    timeout = o.timeout if o.timeout is not None else DEFAULT_TIMEOUT
    explicit = {k.zone for b in blocks for k in b.keys}
    zones: list[Zone] = []
    for block in blocks:
        policy = forward.forward_policy(block, listen, port, try_timeout, timeout)
        for name in block.zones:
            zones += cache.zones_of(block, name, policy, explicit)
    extra: dict[str, Any] = {
        name: value
        for name in ("tcp_idle_timeout", "max_udp_payload", "loop")
        if (value := getattr(o, name)) is not None
    }
    return Config(
        listen=listen,
        port=port,
        zones=tuple(zones),
        metrics_address=o.metrics_address or health.common_endpoint(blocks, "prometheus"),
        health_address=o.health_address or health.common_endpoint(blocks, "health"),
        lameduck=o.lameduck if o.lameduck is not None else health.lameduck(blocks),
        query_log=flags.query_log(blocks),
        reload_interval=reload_interval,
        loop_zones=flags.loop_zones(blocks),
        **extra,
    )


def _refuse_unsupported(blocks: Sequence[ServerBlock]) -> None:
    """template and hosts parse, but the agent cannot honour them yet: refuse, never ignore."""
    for block in blocks:
        found = [("template", t.line) for t in block.templates]
        if block.hosts is not None:
            found.append(("hosts", block.hosts.line))
        for what, line in found:
            raise ConfigError(f"{block.source}:{line}: {what} {template.REFUSED}")


def _common_port(blocks: Sequence[ServerBlock]) -> int:
    """Config.port: every zone of every block on one port, as the agent serves them."""
    first = blocks[0]
    want = first.keys[0].port
    for block in blocks:
        for key in block.keys:
            if key.port != want:
                raise ConfigError(
                    f"{block.where}: zone {key.zone} is on port {key.port} but {first.keys[0].zone} "
                    f"({first.where}) on {want}; nodecache serves every zone on one port: make them equal (or set --port)"
                )
    return want
