"""`hosts [FILE [ZONES...]] { IP NAME...; ttl; no_reverse; reload; fallthrough }`: parsed, refused by to_config.

The resolver cannot answer from a hosts table yet, so the directive is refused with
its line rather than skipped.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from nodecache.corefile.reader import Line
from nodecache.corefile.registry import Directive, Option, sample
from nodecache.corefile.values import Ctx, arity, duration, integer, is_ip, zone

if TYPE_CHECKING:
    from nodecache.corefile.model import ServerBlock

COREDNS_HOSTS_FILE = "/etc/hosts"  # `hosts` without FILE
COREDNS_HOSTS_TTL = 3600
COREDNS_HOSTS_RELOAD = 5.0
OPTION_WORDS = ("ttl", "no_reverse", "reload", "fallthrough")


@dataclass(frozen=True)
class HostsEntry:
    """One `IP NAME...` line of a hosts table."""

    address: str
    names: tuple[str, ...]  # canonical


@dataclass(frozen=True)
class HostsSpec:
    """`hosts [FILE [ZONES...]] { IP NAME...; ttl; no_reverse; reload; fallthrough }`."""

    line: int
    file: str = COREDNS_HOSTS_FILE
    zones: tuple[str, ...] = ()  # empty: the server block's zones
    entries: tuple[HostsEntry, ...] = ()
    ttl: int = COREDNS_HOSTS_TTL
    reverse: bool = True  # answer PTR for the entries (off with no_reverse)
    reload: float = COREDNS_HOSTS_RELOAD
    fallthrough: tuple[str, ...] | None = None  # None: no fallthrough; (): every zone


def parse(block: ServerBlock, ctx: Ctx, item: Line) -> ServerBlock:
    spec = HostsSpec(item.line)
    if item.args:
        spec = replace(spec, file=item.args[0].text, zones=tuple(zone(ctx, t) for t in item.args[1:]))
    entries: list[HostsEntry] = []
    seen: dict[str, int] = {}
    for opt in item.block or ():
        name = opt.name.text
        octx = ctx.at(opt.line)
        if is_ip(name):
            if not opt.args:
                raise octx.fail(f"the entry for {name} names no host; write IP NAME...")
            entries.append(HostsEntry(str(ipaddress.ip_address(name)), tuple(zone(octx, t) for t in opt.args)))
            continue
        if name not in OPTION_WORDS:
            raise octx.fail(f"{name!r} is neither an IP NAME... entry nor an option ({', '.join(OPTION_WORDS)})")
        if name in seen:
            raise octx.fail(f"{name} appears twice in this hosts block (first on line {seen[name]}); keep one")
        seen[name] = opt.line
        if name == "ttl":
            arity(octx, opt.args, 1, 1, "ttl SECONDS")
            spec = replace(spec, ttl=integer(octx, opt.args[0], "SECONDS", minimum=1))
        elif name == "no_reverse":
            arity(octx, opt.args, 0, 0, "no_reverse without arguments")
            spec = replace(spec, reverse=False)
        elif name == "reload":
            arity(octx, opt.args, 1, 1, "reload DURATION")
            spec = replace(spec, reload=duration(octx, opt.args[0], "DURATION"))
        else:  # fallthrough [ZONES...]
            spec = replace(spec, fallthrough=tuple(zone(octx, t) for t in opt.args))
    return replace(block, hosts=replace(spec, entries=tuple(entries)))


_WHY = "Corefile:2: hosts is not answered by this build"


def _in_hosts(option: str) -> str:
    return sample("hosts {\n192.0.2.7 web.example\n" + option + "\n}")


HOSTS = Directive(
    "hosts",
    parse,
    (
        Option("hosts", sample("hosts"), refused=_WHY),
        Option("hosts FILE ZONES", sample("hosts /etc/hosts example.org"), refused=_WHY),
        Option("hosts IP NAME...", _in_hosts(""), refused=_WHY),
        Option("hosts ttl", _in_hosts("ttl 60"), refused=_WHY),
        Option("hosts no_reverse", _in_hosts("no_reverse"), refused=_WHY),
        Option("hosts reload", _in_hosts("reload 10s"), refused=_WHY),
        Option("hosts fallthrough", _in_hosts("fallthrough"), refused=_WHY),
    ),
    words=OPTION_WORDS,
)
