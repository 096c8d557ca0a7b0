"""`reload [INTERVAL [JITTER]]`: how often the agent checks its config files for changes.

INTERVAL becomes Config.reload_interval. The agent checks exactly every INTERVAL,
so a JITTER other than CoreDNS's default (or 0) is refused rather than ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from nodecache.corefile.reader import Line
from nodecache.corefile.registry import Directive, Option, sample
from nodecache.corefile.values import Ctx, arity, duration, no_block
from nodecache.errors import ConfigError

if TYPE_CHECKING:
    from nodecache.corefile.model import ServerBlock

COREDNS_RELOAD_INTERVAL = 30.0
COREDNS_RELOAD_JITTER = 15.0
RELOAD_MIN_INTERVAL = 2.0
RELOAD_MIN_JITTER = 1.0
NO_RELOAD = 0.0  # Config.reload_interval without `reload`: only SIGHUP reloads


@dataclass(frozen=True)
class ReloadSpec:
    """`reload [INTERVAL [JITTER]]`: how often the Corefile is checked for changes."""

    interval: float = COREDNS_RELOAD_INTERVAL
    jitter: float = COREDNS_RELOAD_JITTER
    line: int = field(default=0, compare=False)


def default_jitter(interval: float) -> float:
    """CoreDNS's jitter for INTERVAL: 15s, but never more than half the interval."""
    return min(COREDNS_RELOAD_JITTER, interval / 2)


def parse(block: ServerBlock, ctx: Ctx, item: Line) -> ServerBlock:
    no_block(ctx, item)
    arity(ctx, item.args, 0, 2, "reload [INTERVAL [JITTER]]")
    interval = duration(ctx, item.args[0], "INTERVAL") if item.args else COREDNS_RELOAD_INTERVAL
    jitter = duration(ctx, item.args[1], "JITTER") if len(item.args) > 1 else COREDNS_RELOAD_JITTER
    if interval < RELOAD_MIN_INTERVAL:
        raise ctx.fail(f"INTERVAL must be at least {RELOAD_MIN_INTERVAL:g}s")
    if jitter and jitter < RELOAD_MIN_JITTER:
        raise ctx.fail(f"JITTER must be 0 or at least {RELOAD_MIN_JITTER:g}s")
    return replace(block, reload=ReloadSpec(interval, min(jitter, interval / 2), item.line))


def reload_interval(blocks: Sequence[ServerBlock]) -> float:
    """Config.reload_interval: the most frequent check any block asks for (CoreDNS's reload is agent-wide).

    Refuses a JITTER the agent would not apply: it checks exactly every INTERVAL.
    """
    specs = [(b, b.reload) for b in blocks if b.reload is not None]
    for block, spec in specs:
        if spec.jitter not in (0.0, default_jitter(spec.interval)):
            raise ConfigError(
                f"{block.source}:{spec.line or block.line}: reload: JITTER {spec.jitter:g}s is not supported yet; "
                f"nodecache checks for changes exactly every INTERVAL: remove JITTER (or write 0)"
            )
    return min(spec.interval for _, spec in specs) if specs else NO_RELOAD


RELOAD = Directive(
    "reload",
    parse,
    (
        Option("reload", sample("reload"), reaches=("reload_interval",)),
        Option("reload INTERVAL", sample("reload 10s"), sample("reload"), reaches=("reload_interval",)),
        Option("reload JITTER", sample("reload 30s 5s"), sample("reload 30s"), refused="Corefile:2: reload: JITTER 5s"),
        Option(
            "reload JITTER (0 or the default)",
            sample("reload 30s 0"),
            sample("reload 30s"),
            inert="the agent checks exactly every INTERVAL, which is what 0 means; the default is accepted as "
            "node-local-dns's stock Corefile writes a bare `reload`",
        ),
    ),
)
