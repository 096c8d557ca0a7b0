"""nodecache.names: names as operators write them, as the wire carries them, and back."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodecache import config, dnstext
from nodecache.errors import ConfigError, NodecacheError
from nodecache.names import at_or_below, canonical_name, name_text, name_to_wire, reverse_zones
from tests.dnsmsg import name_wire

LONGEST = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 characters: 255 octets on the wire


# ---------------------------------------------------------------------------- canonical_name


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("cluster.local", "cluster.local."),
        ("cluster.local.", "cluster.local."),
        ("Cluster.LOCAL", "cluster.local."),
        ("\tsvc.Example \n", "svc.example."),
        (".", "."),
        ("", "."),
        ("   ", "."),
        ("xn--bcher-kva.example", "xn--bcher-kva.example."),
        ("_dns._udp.example", "_dns._udp.example."),  # not a hostname, but a valid domain name
        ("a" * 63, "a" * 63 + "."),
        (LONGEST, LONGEST + "."),
    ],
)
def test_canonical_name(text: str, canonical: str) -> None:
    """Lowercase, trimmed, exactly one trailing dot; empty and "." are the root."""
    assert canonical_name(text) == canonical


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("a..b", "not a valid domain name"),
        ("..", "not a valid domain name"),
        (".example.com", "not a valid domain name"),
        ("example.com..", "not a valid domain name"),
        ("a" * 64 + ".com", "not a valid domain name"),
        (LONGEST + "b", "not a valid domain name"),  # 256 octets on the wire
        (".".join(["a"] * 128), "not a valid domain name"),
        ("bücher.example", "xn--"),
        ("пример.рф", "xn--"),
    ],
)
def test_canonical_name_refuses(text: str, says: str) -> None:
    """What cannot be a name is a ConfigError naming the input and what to write instead."""
    with pytest.raises(ConfigError) as info:
        canonical_name(text)
    assert isinstance(info.value, NodecacheError)
    assert text.lower() in str(info.value) and says in str(info.value)


def test_config_keeps_the_old_names() -> None:
    """Code that imports the helpers from config (written before the move) gets the same functions."""
    assert config.canonical_zone is canonical_name
    assert config.name_to_wire is name_to_wire
    assert dnstext.name_text is name_text


# ---------------------------------------------------------------------------- name_to_wire and name_text


@pytest.mark.parametrize(
    ("name", "wire"),
    [
        (".", b"\x00"),
        ("local.", b"\x05local\x00"),
        ("cluster.local.", b"\x07cluster\x05local\x00"),
        ("a.b.c.", b"\x01a\x01b\x01c\x00"),
        ("x" * 63 + ".", b"\x3f" + b"x" * 63 + b"\x00"),
    ],
)
def test_name_to_wire(name: str, wire: bytes) -> None:
    """Length-prefixed labels ending in the root's zero byte."""
    assert name_to_wire(name) == wire


@pytest.mark.parametrize("name", [".", "cluster.local.", "in-addr.arpa.", "ip6.arpa.", LONGEST + "."])
def test_name_to_wire_matches_dnslib(name: str) -> None:
    """The same bytes dnslib writes, so keys built from configured names match scanned queries."""
    assert name_to_wire(name) == name_wire(name)
    assert len(name_to_wire(LONGEST + ".")) == 255


@pytest.mark.parametrize(
    ("wire", "text"),
    [
        (b"\x00", "."),
        (b"", "."),
        (b"\x07cluster\x05local\x00", "cluster.local."),
        (b"\x03a.b\x03com\x00", "a\\046b.com."),  # a dot inside a label is not a label boundary
        (b"\x03a\\b\x00", "a\\092b."),
        (b"\x03a b\x00", "a\\032b."),
        (b"\x04a\nb\x7f\x00", "a\\010b\\127."),  # a newline cannot forge a second log line
        (b"\x02\xc3\xbc\x00", "\\195\\188."),
    ],
)
def test_name_text(wire: bytes, text: str) -> None:
    """Visible ASCII as is, everything else (and '.' and '\\' inside a label) as \\DDD, as dig writes it."""
    assert name_text(wire) == text


@given(st.lists(st.from_regex(r"[a-z0-9_-]{1,63}", fullmatch=True), min_size=0, max_size=4))
def test_text_wire_round_trip(labels: list[str]) -> None:
    """Any canonical name survives name_to_wire then name_text unchanged."""
    name = canonical_name(".".join(labels))
    assert name_text(name_to_wire(name)) == name


# ---------------------------------------------------------------------------- at_or_below


def _w(name: str) -> bytes:
    return name_to_wire(canonical_name(name))


@pytest.mark.parametrize(
    ("name", "suffix", "below"),
    [
        ("cluster.local", "cluster.local", True),
        ("svc.cluster.local", "cluster.local", True),
        ("a.b.svc.cluster.local", "cluster.local", True),
        ("anything.example", ".", True),
        (".", ".", True),
        ("xcluster.local", "cluster.local", False),  # same bytes at the end, not on a label boundary
        ("cluster.local", "svc.cluster.local", False),
        ("local", "cluster.local", False),
        ("cluster.localx", "cluster.local", False),
        ("example.com", "example.org", False),
        (".", "cluster.local", False),
    ],
)
def test_at_or_below(name: str, suffix: str, below: bool) -> None:
    """A name is below a suffix only on a label boundary; every name is at or below the root."""
    assert at_or_below(_w(name), _w(suffix)) is below


def test_at_or_below_label_bytes_are_not_boundaries() -> None:
    """A label whose bytes look like a length byte plus the suffix is still one label."""
    suffix = _w("local")
    tricky = b"\x06" + b"\x05local"[:6] + b"\x00"  # one label "\x05local" whose tail is "local"
    assert suffix in tricky
    assert at_or_below(tricky, suffix) is False


# ---------------------------------------------------------------------------- reverse_zones


@pytest.mark.parametrize(
    ("cidr", "zones"),
    [
        ("192.0.2.0/24", ["2.0.192.in-addr.arpa."]),
        ("169.254.0.0/16", ["254.169.in-addr.arpa."]),
        ("203.0.113.0/23", ["112.0.203.in-addr.arpa.", "113.0.203.in-addr.arpa."]),
        ("198.51.100.7/32", ["7.100.51.198.in-addr.arpa."]),
        ("0.0.0.0/0", ["in-addr.arpa."]),
        ("2001:db8::/32", ["8.b.d.0.1.0.0.2.ip6.arpa."]),
        ("2001:db8::/31", ["8.b.d.0.1.0.0.2.ip6.arpa.", "9.b.d.0.1.0.0.2.ip6.arpa."]),
        ("::/0", ["ip6.arpa."]),
    ],
)
def test_reverse_zones(cidr: str, zones: list[str]) -> None:
    """Whole octets (nibbles) become one zone; a prefix between boundaries becomes the zones below it."""
    assert reverse_zones(ipaddress.ip_network(cidr, strict=False)) == zones


@pytest.mark.parametrize(("cidr", "count"), [("192.0.0.0/17", 128), ("2001:db8::/29", 8)])
def test_reverse_zones_widest_split(cidr: str, count: int) -> None:
    """One bit past a boundary is the widest split: 128 zones for IPv4, 8 for IPv6, all canonical."""
    zones = reverse_zones(ipaddress.ip_network(cidr))
    assert len(zones) == len(set(zones)) == count
    assert all(canonical_name(z) == z for z in zones)
