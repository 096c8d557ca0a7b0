"""Server block headers: `[dns://]ZONE[:PORT]...`, a CIDR standing for its reverse zones."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from nodecache.config import DNS_PORT
from nodecache.corefile.lexer import Token
from nodecache.corefile.registry import Option, sample
from nodecache.corefile.values import Ctx
from nodecache.errors import ConfigError
from nodecache.names import canonical_name, reverse_zones


@dataclass(frozen=True)
class ZoneKey:
    """One `ZONE[:PORT]` of a server block's header."""

    zone: str  # canonical: lowercase, trailing dot
    port: int


def parse_keys(raw: list[Token], source: str) -> tuple[ZoneKey, ...]:
    """Every zone and port a header names, refusing one listed twice."""
    ctx = Ctx(source, raw[0].line, "server block")
    keys: list[ZoneKey] = []
    for tok in raw:
        for part in tok.text.split(","):
            if part:
                keys.extend(_key(ctx.at(tok.line), part))
    seen: set[ZoneKey] = set()
    for key in keys:
        if key in seen:
            raise ctx.fail(f"zone {key.zone} port {key.port} is listed twice")
        seen.add(key)
    return tuple(keys)


def _key(ctx: Ctx, text: str) -> list[ZoneKey]:
    """`[dns://]ZONE[:PORT]`; ZONE may be a CIDR, meaning its reverse zones."""
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme.lower() != "dns":
            raise ctx.fail(f"{text!r}: {scheme}:// is not served; nodecache answers plain DNS over UDP and TCP (dns://)")
        text = rest
    zone, port = text, DNS_PORT
    head, sep, tail = text.rpartition(":")
    if sep and tail.isascii() and tail.isdigit() and (head.count(":") == 0 or "/" in head or head.endswith("]")):
        zone, port = head, int(tail)
        if not 0 <= port <= 65535:
            raise ctx.fail(f"port {port} in {text!r} is out of range 0-65535")
    if "/" in zone:
        return [ZoneKey(z, port) for z in _reverse_zones(ctx, zone.strip("[]"))]
    try:
        return [ZoneKey(canonical_name(zone), port)]
    except ConfigError as exc:
        raise ctx.fail(f"{exc}; a server block starts with ZONE[:PORT], e.g. cluster.local:53") from None


def _reverse_zones(ctx: Ctx, cidr: str) -> list[str]:
    """The reverse zones covering a network (names.reverse_zones); a bad network fails at its line."""
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise ctx.fail(f"{cidr!r} is not a network; write e.g. 192.0.2.0/24") from None
    return reverse_zones(net)


# The header's parts, as the directives declare theirs (tests/corefile/test_options.py).
OPTIONS = (
    Option("ZONE", sample(header="example.org"), reaches=("zones",)),
    Option("ZONE:PORT", sample(header=".:5353"), reaches=("port",)),
    Option("CIDR", sample(header="192.0.2.0/24"), reaches=("zones",)),
    Option("dns://", sample(header="dns://.:53"), inert="dns:// is plain DNS over UDP and TCP, all nodecache serves"),
)
