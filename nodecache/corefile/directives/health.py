"""`health [ADDR] { lameduck DURATION }` and `prometheus [ADDR]`: the agent's HTTP endpoints.

The agent serves one of each, so every block naming one must name the same address.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from nodecache.corefile.reader import Line
from nodecache.corefile.registry import Directive, Option, sample
from nodecache.corefile.values import Ctx, Endpoint, arity, duration, endpoint, no_block
from nodecache.errors import ConfigError

if TYPE_CHECKING:
    from nodecache.corefile.model import ServerBlock

COREDNS_HEALTH_PORT = 8080  # `health` without an address listens on :8080
COREDNS_METRICS_ADDRESS = ("127.0.0.1", 9153)  # `prometheus` without an address: localhost:9153
HEALTH_OPTION_WORDS = ("lameduck",)


def parse_health(block: ServerBlock, ctx: Ctx, item: Line) -> ServerBlock:
    arity(ctx, item.args, 0, 1, "health [ADDR]:PORT")
    where = endpoint(ctx, item.args[0]) if item.args else Endpoint("", COREDNS_HEALTH_PORT)
    lameduck = 0.0
    for opt in item.block or ():
        octx = ctx.at(opt.line)
        if opt.name.text not in HEALTH_OPTION_WORDS:
            raise octx.fail(f"unknown option {opt.name.text!r}; health supports lameduck DURATION")
        arity(octx, opt.args, 1, 1, "lameduck DURATION")
        lameduck = duration(octx, opt.args[0], "lameduck")
    return replace(block, health=where, lameduck=lameduck)


def parse_prometheus(block: ServerBlock, ctx: Ctx, item: Line) -> ServerBlock:
    no_block(ctx, item)
    arity(ctx, item.args, 0, 1, "prometheus [ADDR]:PORT")
    where = endpoint(ctx, item.args[0]) if item.args else Endpoint(*COREDNS_METRICS_ADDRESS)
    return replace(block, prometheus=where)


def common_endpoint(blocks: Sequence[ServerBlock], directive: str) -> str | None:
    """Config.health_address or .metrics_address: the one address every block naming it agrees on."""
    found: list[tuple[Endpoint, ServerBlock]] = [
        (ep, b) for b in blocks if (ep := getattr(b, directive)) is not None
    ]
    if not found:
        return None
    first, owner = found[0]
    for ep, block in found[1:]:
        if ep != first:
            raise ConfigError(
                f"{block.where}: {directive} {ep} differs from {directive} {first} at {owner.where}; "
                f"nodecache serves one {directive} endpoint: use the same address in every block"
            )
    return str(first)


def lameduck(blocks: Sequence[ServerBlock]) -> float:
    """Config.lameduck: the longest any block's health asks for."""
    return max(b.lameduck for b in blocks)


HEALTH = Directive(
    "health",
    parse_health,
    (
        Option("health", sample("health"), reaches=("health_address",)),
        Option("health ADDR", sample("health 192.0.2.1:8081"), sample("health"), reaches=("health_address",)),
        Option("health lameduck", sample("health {\nlameduck 3s\n}"), sample("health"), reaches=("lameduck",)),
    ),
    words=HEALTH_OPTION_WORDS,
)
PROMETHEUS = Directive(
    "prometheus",
    parse_prometheus,
    (
        Option("prometheus", sample("prometheus"), reaches=("metrics_address",)),
        Option("prometheus ADDR", sample("prometheus :9253"), sample("prometheus"), reaches=("metrics_address",)),
    ),
)
