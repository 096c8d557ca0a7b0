"""`errors`, `log` and `loop`: switches without arguments.

`log` turns the query log on (Config.query_log); `loop` probes the block's upstreams
for a forwarding loop at start (Config.loop_zones); `errors` changes nothing, since
nodecache always logs its errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from nodecache.corefile.reader import Line
from nodecache.corefile.registry import Directive, Handler, Option, sample
from nodecache.corefile.values import Ctx, no_block

if TYPE_CHECKING:
    from nodecache.corefile.model import ServerBlock


def _flag(field_name: str) -> Handler:
    def handle(block: ServerBlock, ctx: Ctx, item: Line) -> ServerBlock:
        if item.args:
            raise ctx.at(item.args[0].line).fail(f"takes no arguments in nodecache, got {item.args[0].text!r}")
        no_block(ctx, item)
        on: dict[str, Any] = {field_name: True}
        return replace(block, **on)

    return handle


def query_log(blocks: Sequence[ServerBlock]) -> bool:
    """The agent has one query log: on when any block says `log`."""
    return any(b.log for b in blocks)


def loop_zones(blocks: Sequence[ServerBlock]) -> tuple[str, ...]:
    """The zones whose upstreams are probed for a loop at start: those of blocks with `loop`."""
    return tuple(k.zone for b in blocks if b.loop for k in b.keys)


ERRORS = Directive(
    "errors",
    _flag("errors"),
    (Option("errors", sample("errors"), inert="nodecache always logs its errors; there is nothing to switch on"),),
)
LOG = Directive("log", _flag("log"), (Option("log", sample("log"), reaches=("query_log",)),))
LOOP = Directive("loop", _flag("loop"), (Option("loop", sample("loop"), reaches=("loop_zones",)),))
