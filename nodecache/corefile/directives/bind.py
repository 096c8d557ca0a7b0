"""`bind IP...`: the addresses the agent serves on (Config.listen)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from nodecache.corefile.reader import Line
from nodecache.corefile.registry import Directive, Option, sample
from nodecache.corefile.values import Ctx, ip
from nodecache.errors import ConfigError

if TYPE_CHECKING:
    from nodecache.corefile.model import ServerBlock

WILDCARD_LISTEN = ("0.0.0.0", "::")  # a block without `bind` listens everywhere, as CoreDNS


def parse(block: ServerBlock, ctx: Ctx, item: Line) -> ServerBlock:
    if item.block is not None:
        raise ctx.fail("bind options (except) are not supported; list the addresses to serve on")
    if not item.args:
        raise ctx.fail("expected bind IP..., at least one address")
    addresses = [ip(ctx, t, "address") for t in item.args]
    return replace(block, bind=tuple(dict.fromkeys((*block.bind, *addresses))))


def common_listen(blocks: Sequence[ServerBlock]) -> tuple[str, ...]:
    """Config.listen: every block must bind the same addresses, as the agent serves all zones on each."""
    first = blocks[0]
    want = set(first.bind or WILDCARD_LISTEN)
    for block in blocks[1:]:
        if set(block.bind or WILDCARD_LISTEN) != want:
            raise ConfigError(
                f"{block.where}: this block listens on {' '.join(block.bind or WILDCARD_LISTEN)} but the block at "
                f"{first.where} on {' '.join(first.bind or WILDCARD_LISTEN)}; nodecache serves every zone on the "
                "same addresses: give every block the same bind (or set --listen)"
            )
    return first.bind or WILDCARD_LISTEN


BIND = Directive(
    "bind",
    parse,
    (Option("bind", sample("bind 192.0.2.1\nbind 2001:db8::1"), reaches=("listen",)),),
    repeatable=True,
)
