"""Domain names: the text an operator writes, the wire form the cache keys on, and back.

One home for the name helpers the configuration, the resolver, the control API and
the reports share. Two forms are in use:

- text: lowercase, ASCII, exactly one trailing dot (`cluster.local.`; the root is `.`),
  as `canonical_name` returns it; zone names and flush arguments are kept this way;
- wire: length-prefixed labels ending in a zero byte (RFC 1035 3.1), uncompressed and
  lowercased, as `wire.scan_query` leaves a query's name; cache keys start with it.

The per-packet name scanning (skipping compressed names, finding the question's end)
stays in wire.py: it works on offsets in a message, not on names. Nothing here runs on
the hit path.
"""

from __future__ import annotations

import ipaddress

from nodecache.errors import ConfigError

ROOT = "."
ROOT_WIRE = b"\x00"
MAX_LABEL = 63  # RFC 1035 2.3.4: octets in one label
MAX_NAME_TEXT = 254  # 255 octets on the wire are 253 characters plus the trailing dot written out
_PRINTABLE = range(0x21, 0x7F)  # visible ASCII; everything else is written \DDD, as dig does
_ESCAPED = b".\\"  # visible, but would change the name's meaning if written as is

# Reverse zones (RFC 1035 3.5, RFC 3596 2.5): one label per octet (IPv4) or nibble (IPv6).
_REVERSE_UNIT = {4: 8, 6: 4}


def canonical_name(text: str) -> str:
    """Lowercase with a trailing dot; "" and "." are the root; refuses what cannot be a domain name.

    Only ASCII is accepted: an internationalised name must be given in its xn-- (IDNA)
    form, because the wire carries that form and a cache key would never match otherwise.
    """
    name = text.strip().lower()
    if name in ("", ROOT):
        return ROOT
    if not name.isascii():
        raise ConfigError(f"{name!r} is not ASCII; write internationalised names in their xn-- (IDNA) form")
    if not name.endswith("."):
        name += "."
    labels = name[:-1].split(".")
    if any(not label or len(label) > MAX_LABEL for label in labels) or len(name) > MAX_NAME_TEXT:
        raise ConfigError(f"{name!r} is not a valid domain name")
    return name


def name_to_wire(name: str) -> bytes:
    """A canonical name (see `canonical_name`) in wire format: labels with length bytes."""
    if name == ROOT:
        return ROOT_WIRE
    return b"".join(bytes((len(p),)) + p.encode("ascii") for p in name[:-1].split(".")) + ROOT_WIRE


def name_text(lname: bytes) -> str:
    """A wire-format name as text with a trailing dot, for people (logs, stats).

    Bytes that are not visible ASCII, and dots or backslashes inside a label, are written
    \\DDD as dig writes them, so a hostile name cannot forge a log line or a second label.
    """
    labels, i = [], 0
    while i < len(lname) and lname[i]:
        raw = lname[i + 1 : i + 1 + lname[i]]
        labels.append("".join(chr(b) if b in _PRINTABLE and b not in _ESCAPED else f"\\{b:03d}" for b in raw))
        i += lname[i] + 1
    return ".".join(labels) + "." if labels else ROOT


def at_or_below(lname: bytes, suffix: bytes) -> bool:
    """Whether wire name `lname` is `suffix` or a name under it.

    Compared label by label, so `xcluster.local.` is not under `cluster.local.`; both
    names must be lowercased wire names (the cache's keys and zones' wire names are).
    """
    i = 0
    while i < len(lname):
        if lname[i:] == suffix:
            return True
        if lname[i] == 0:
            return False
        i += lname[i] + 1
    return False


def reverse_zones(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> list[str]:
    """The in-addr.arpa / ip6.arpa zones that together cover `network`, as CoreDNS expands them.

    A prefix off an octet (IPv4) or nibble (IPv6) boundary becomes every zone at the next
    boundary down: 192.0.2.0/23 is 2.0.192.in-addr.arpa. and 3.0.192.in-addr.arpa.
    """
    unit = _REVERSE_UNIT[network.version]
    units_total = network.max_prefixlen // unit
    prefix = -(-network.prefixlen // unit) * unit  # rounded up to the boundary
    zones = []
    for sub in network.subnets(new_prefix=prefix):
        labels = sub.network_address.reverse_pointer.split(".")
        zones.append(".".join(labels[units_total - prefix // unit :]) + ".")
    return zones
