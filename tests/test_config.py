"""nodecache.config: addresses, zone names, resolv.conf, default zones and validation.

Table-driven, CoreDNS style: each table lists inputs with what they must give, or the
inputs that must be refused (with an error message naming the bad input).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest

from nodecache.config import (
    DEFAULT_CAPACITY,
    Address,
    CachePolicy,
    Config,
    ForwardPolicy,
    Zone,
    canonical_zone,
    default_zones,
    name_to_wire,
    parse_size,
    read_resolv_conf,
    without_self,
)
from nodecache.errors import ConfigError, NodecacheError, ResolvConfError
from tests.dnsmsg import name_wire

UP = (Address("192.0.2.10"),)


# ---------------------------------------------------------------------------- Address


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("192.0.2.10", "192.0.2.10", 53),
        ("192.0.2.10:53", "192.0.2.10", 53),
        ("192.0.2.10:5353", "192.0.2.10", 5353),
        ("192.0.2.10:1", "192.0.2.10", 1),
        ("192.0.2.10:65535", "192.0.2.10", 65535),
        ("  169.254.20.10  ", "169.254.20.10", 53),
        ("::1", "::1", 53),
        ("2001:db8::53", "2001:db8::53", 53),
        ("fd00:10:96::a", "fd00:10:96::a", 53),
        ("[2001:db8::53]:5353", "2001:db8::53", 5353),
        ("[::1]:53", "::1", 53),
        ("[::1]", "::1", 53),
        ("::ffff:192.0.2.1", "::ffff:192.0.2.1", 53),
    ],
)
def test_address_parse(text: str, host: str, port: int) -> None:
    """IPv4, IPv4:PORT, a bare IPv6 address and [IPv6]:PORT."""
    addr = Address.parse(text)
    assert ipaddress.ip_address(addr.host) == ipaddress.ip_address(host)
    assert addr.port == port
    assert addr.family_v6 == (ipaddress.ip_address(host).version == 6)


@pytest.mark.parametrize("text", ["192.0.2.10", "192.0.2.10:5353", "::1", "[2001:db8::53]:853"])
def test_address_str_round_trips(text: str) -> None:
    """str() writes a form parse() reads back to the same address ([v6]:port for IPv6)."""
    addr = Address.parse(text)
    assert Address.parse(str(addr)) == addr
    assert str(addr).startswith("[") == addr.family_v6


@pytest.mark.parametrize(("text", "port"), [("192.0.2.1", 8053), ("::1", 8053), ("192.0.2.1:53", 53), ("[::1]:99", 99)])
def test_address_default_port(text: str, port: int) -> None:
    """The default port applies only when the text names none."""
    assert Address.parse(text, default_port=8053).port == port


@pytest.mark.parametrize(
    "text",
    [
        "",
        "dns.google",
        "dns.google:53",
        "kube-dns.kube-system.svc",
        "192.0.2.300",
        "192.0.2",
        "192.0.2.1:0",
        "192.0.2.1:65536",
        "192.0.2.1:99999",
        "192.0.2.1:abc",
        "192.0.2.1:",
        "192.0.2.1:-53",
        "192.0.2.1:5 3",
        "[::1",
        "[::1]53",
        "[::1]:",
        "[::1]:0",
        "[::1]:65536",
        "[::1]:x",
        "[dns.google]:53",
        "[]:53",
        "::1::2",
    ],
)
def test_address_parse_rejects(text: str) -> None:
    """Not an IP address, or a port outside 1..65535: a ConfigError quoting the input."""
    with pytest.raises(ConfigError) as info:
        Address.parse(text)
    message = str(info.value)
    assert f"'{text.strip()}'" in message or f'"{text.strip()}"' in message


@pytest.mark.parametrize("text", ["192.0.2.1:²", "[::1]:5³"])
def test_address_parse_superscript_port(text: str) -> None:
    """A port written with digit-like characters int() cannot read is a ConfigError, not a traceback."""
    with pytest.raises(ConfigError):
        Address.parse(text)


# ---------------------------------------------------------------------------- zone names


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("cluster.local", "cluster.local."),
        ("cluster.local.", "cluster.local."),
        ("Cluster.LOCAL", "cluster.local."),
        ("  example.com  ", "example.com."),
        (".", "."),
        ("", "."),
        ("in-addr.arpa", "in-addr.arpa."),
        ("a" * 63 + ".com", "a" * 63 + ".com."),
        (".".join(["a" * 63] * 3 + ["b" * 61]), ".".join(["a" * 63] * 3 + ["b" * 61]) + "."),
    ],
)
def test_canonical_zone(text: str, canonical: str) -> None:
    """Lowercase with exactly one trailing dot; empty and "." are the root."""
    assert canonical_zone(text) == canonical


@pytest.mark.parametrize(
    "text",
    [
        "a..b",
        "..",
        ".example.com",
        "example..com.",
        "a" * 64 + ".com",
        ".".join(["a" * 63] * 3 + ["b" * 62]),  # 254 characters: 256 octets on the wire
        ".".join(["a"] * 128),
    ],
)
def test_canonical_zone_rejects(text: str) -> None:
    """Empty labels, labels over 63 octets and names over 255 octets are refused, naming the input."""
    with pytest.raises(ConfigError) as info:
        canonical_zone(text)
    assert text.lower() in str(info.value)


@pytest.mark.parametrize("text", ["bücher.example", "пример.рф"])
def test_canonical_zone_non_ascii(text: str) -> None:
    """A name canonical_zone accepts can be put on the wire; otherwise it is a ConfigError."""
    try:
        name = canonical_zone(text)
    except ConfigError:
        return
    name_to_wire(name)


@pytest.mark.parametrize(
    "name", [".", "cluster.local.", "in-addr.arpa.", "ip6.arpa.", "a.b.c.d.e.f.", "x" * 63 + "."]
)
def test_name_to_wire_matches_dnslib(name: str) -> None:
    """The wire form is what dnslib writes for the same name."""
    assert name_to_wire(name) == name_wire(name)


def test_zone_wire_is_lowercase_wire_name() -> None:
    """A zone's wire name, used for suffix matching on lowercased query names."""
    zone = Zone(canonical_zone("Cluster.Local"), ForwardPolicy(UP))
    assert zone.wire == name_wire("cluster.local.")


# ---------------------------------------------------------------------------- resolv.conf


def write(tmp_path: Path, text: str | bytes) -> Path:
    """A resolv.conf with `text` in it."""
    path = tmp_path / "resolv.conf"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "servers"),
    [
        ("nameserver 198.51.100.1\n", ["198.51.100.1"]),
        ("nameserver 198.51.100.1\nnameserver 198.51.100.2\nnameserver 2001:db8::1\n", ["198.51.100.1", "198.51.100.2", "2001:db8::1"]),  # noqa: E501
        ("# nameserver 203.0.113.9\nnameserver 198.51.100.1\n", ["198.51.100.1"]),
        ("; nameserver 203.0.113.9\nnameserver 198.51.100.1\n", ["198.51.100.1"]),
        ("nameserver 198.51.100.1 # primary\nnameserver 198.51.100.2;secondary\n", ["198.51.100.1", "198.51.100.2"]),
        ("search default.svc.cluster.local svc.cluster.local\noptions ndots:5 timeout:1\nnameserver 198.51.100.1\n", ["198.51.100.1"]),  # noqa: E501
        ("domain example.com\noptions edns0 trust-ad\n  nameserver\t198.51.100.1  \nsortlist 198.51.100.0/24\n", ["198.51.100.1"]),  # noqa: E501
        ("nameserver\nnameserver not-an-ip\nnameserver 198.51.100.1:53\nnameserver 198.51.100.2\n", ["198.51.100.2"]),
        ("nameserver 2001:db8::0001\n", ["2001:db8::1"]),
        ("nameserver 198.51.100.1\r\nnameserver 198.51.100.2\r\n", ["198.51.100.1", "198.51.100.2"]),
        ("nameservers 203.0.113.9\nnameserver 198.51.100.1", ["198.51.100.1"]),
    ],
)
def test_read_resolv_conf(tmp_path: Path, text: str, servers: list[str]) -> None:
    """`nameserver` lines in order, port 53; comments, options and unparsable entries ignored."""
    got = read_resolv_conf(write(tmp_path, text))
    assert [ipaddress.ip_address(a.host) for a in got] == [ipaddress.ip_address(s) for s in servers]
    assert all(a.port == 53 for a in got)


def test_read_resolv_conf_ipv6_zone(tmp_path: Path) -> None:
    """An IPv6 nameserver with a %zone suffix is read as that IPv6 address."""
    (addr,) = read_resolv_conf(write(tmp_path, "nameserver 2001:db8::53%eth0\n"))
    assert ipaddress.ip_address(addr.host.split("%")[0]) == ipaddress.ip_address("2001:db8::53")
    assert addr.family_v6 and addr.port == 53


def test_read_resolv_conf_link_local_keeps_zone(tmp_path: Path) -> None:
    """fe80::1%eth0 is only usable with its zone (RFC 4007 11), so the zone must survive."""
    (addr,) = read_resolv_conf(write(tmp_path, "nameserver fe80::1%eth0\n"))
    ip = ipaddress.ip_address(addr.host)
    assert ip == ipaddress.ip_address("fe80::1%eth0") and ip.scope_id == "eth0"


def test_read_resolv_conf_latin1_comment(tmp_path: Path) -> None:
    """A Latin-1 byte in a comment does not stop the nameservers being read (libc reads bytes)."""
    path = write(tmp_path, b"# r\xe9solveurs du n\xbfud\nnameserver 198.51.100.1\n")
    assert [a.host for a in read_resolv_conf(path)] == ["198.51.100.1"]


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_read_resolv_conf_unreadable(tmp_path: Path, kind: str) -> None:
    """An unreadable file is a ResolvConfError that names the path."""
    path = tmp_path / "nope.conf" if kind == "missing" else tmp_path
    with pytest.raises(ResolvConfError) as info:
        read_resolv_conf(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "text",
    ["", "\n\n", "# nameserver 198.51.100.1\n", "search example.com\noptions ndots:5\n", "nameserver dns.google\n"],
)
def test_read_resolv_conf_without_nameserver(tmp_path: Path, text: str) -> None:
    """No usable nameserver: a ResolvConfError naming the file."""
    path = write(tmp_path, text)
    with pytest.raises(ResolvConfError) as info:
        read_resolv_conf(path)
    assert str(path) in str(info.value)


def test_resolv_conf_error_is_a_config_error() -> None:
    """The CLI prints every ConfigError as one line; resolv.conf problems are among them."""
    assert issubclass(ResolvConfError, ConfigError) and issubclass(ConfigError, NodecacheError)


# ---------------------------------------------------------------------------- default zones


def test_default_zones() -> None:
    """The four zones of node-local-dns's stock Corefile, with their upstreams, transports and caches."""
    cluster_ups = (Address("192.0.2.10"), Address("192.0.2.11", 5353))
    node_ups = (Address("192.0.2.1"), Address("2001:db8::1"))
    cluster_cache = CachePolicy(success_max_ttl=30, denial_max_ttl=5)
    other_cache = CachePolicy(success_max_ttl=30, denial_max_ttl=30, success_capacity=1000)
    zones = {z.name: z for z in default_zones("Cluster.Local", cluster_ups, node_ups, cluster_cache, other_cache)}
    assert sorted(zones) == sorted(["cluster.local.", "in-addr.arpa.", "ip6.arpa.", "."])

    cluster = zones["cluster.local."]
    assert cluster.forward.upstreams == cluster_ups and cluster.forward.force_tcp
    assert cluster.cache == cluster_cache
    for name in ("in-addr.arpa.", "ip6.arpa."):
        assert zones[name].forward.upstreams == cluster_ups and zones[name].forward.force_tcp
        assert zones[name].cache == other_cache
    root = zones["."]
    assert root.forward.upstreams == node_ups and not root.forward.force_tcp
    assert root.cache == other_cache


def test_default_zones_make_a_valid_config() -> None:
    """The default zones are distinct, so a Config accepts them."""
    zones = default_zones("cluster.local", UP, (Address("192.0.2.1"),), CachePolicy(), CachePolicy())
    config = Config(listen=("169.254.20.10",), port=53, zones=zones)
    assert len(config.zones) == 4


@pytest.mark.parametrize("domain", ["a..b", "x" * 64])
def test_default_zones_bad_cluster_domain(domain: str) -> None:
    """A cluster domain that is not a domain name is a ConfigError."""
    with pytest.raises(ConfigError):
        default_zones(domain, UP, UP, CachePolicy(), CachePolicy())


# ---------------------------------------------------------------------------- without_self


@pytest.mark.parametrize(
    ("servers", "listen", "port", "kept"),
    [
        (["169.254.20.10", "198.51.100.2"], ["169.254.20.10"], 53, ["198.51.100.2"]),
        (["198.51.100.1", "169.254.20.10", "198.51.100.2"], ["169.254.20.10"], 53, ["198.51.100.1", "198.51.100.2"]),
        (["192.0.2.10", "198.51.100.2"], ["169.254.20.10", "192.0.2.10"], 53, ["198.51.100.2"]),
        (["198.51.100.1", "198.51.100.2"], ["169.254.20.10"], 53, ["198.51.100.1", "198.51.100.2"]),
        (["169.254.20.10"], ["169.254.20.10"], 5353, ["169.254.20.10"]),  # we are on another port
        (["fd00::10", "198.51.100.2"], ["fd00:0:0::0010"], 53, ["198.51.100.2"]),  # same IPv6, other spelling
    ],
)
def test_without_self(servers: list[str], listen: list[str], port: int, kept: list[str]) -> None:
    """Resolvers that are this agent (same IP and port) are dropped; the rest keep their order."""
    got = without_self(tuple(Address(s) for s in servers), tuple(listen), port)
    assert [a.host for a in got] == kept


@pytest.mark.parametrize(("server_port", "our_port", "kept"), [(5353, 53, True), (5353, 5353, False), (53, 53, False)])
def test_without_self_compares_ports(server_port: int, our_port: int, kept: bool) -> None:
    """Our IP on another port is a different server; our IP and port is us."""
    servers = (Address("169.254.20.10", server_port), Address("198.51.100.2"))
    got = without_self(servers, ("169.254.20.10",), our_port)
    assert (servers[0] in got) == kept and servers[1] in got


@pytest.mark.parametrize(
    ("servers", "listen"),
    [(["169.254.20.10"], ["169.254.20.10"]), (["169.254.20.10", "192.0.2.10"], ["192.0.2.10", "169.254.20.10"])],
)
def test_without_self_nothing_left(servers: list[str], listen: list[str]) -> None:
    """Only ourselves in resolv.conf would loop: a ResolvConfError telling what to fix."""
    with pytest.raises(ResolvConfError) as info:
        without_self(tuple(Address(s) for s in servers), tuple(listen), 53)
    assert "resolv.conf" in str(info.value)


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize("policy", ["random", "round_robin", "sequential"])
def test_forward_policy_valid(policy: str) -> None:
    """Every documented policy is accepted; an overall timeout equal to the per-try one is fine."""
    fp = ForwardPolicy(UP, policy=policy, try_timeout=2.0, timeout=2.0)
    assert fp.policy == policy


@pytest.mark.parametrize(
    ("kwargs", "mentions"),
    [
        ({"upstreams": ()}, "upstream"),
        ({"policy": "fastest"}, "fastest"),
        ({"policy": "Random"}, "Random"),
        ({"policy": ""}, "policy"),
        ({"try_timeout": 0.0}, "timeout"),
        ({"try_timeout": -1.0}, "timeout"),
        ({"try_timeout": 3.0, "timeout": 2.0}, "timeout"),
        ({"timeout": 0.0}, "timeout"),
    ],
)
def test_forward_policy_invalid(kwargs: dict[str, object], mentions: str) -> None:
    """No upstreams, an unknown policy or impossible timeouts: a ConfigError saying which."""
    kwargs = {"upstreams": UP, **kwargs}
    with pytest.raises(ConfigError) as info:
        ForwardPolicy(**kwargs)  # type: ignore[arg-type]
    assert mentions in str(info.value)


def test_cache_policy_defaults() -> None:
    """The defaults are those of node-local-dns's `cache 30` (9984 entries each)."""
    p = CachePolicy()
    assert (p.success_capacity, p.denial_capacity, p.success_max_ttl, p.denial_max_ttl) == (
        DEFAULT_CAPACITY,
        DEFAULT_CAPACITY,
        30,
        30,
    )
    assert DEFAULT_CAPACITY == 9984


@pytest.mark.parametrize("field", ["success_capacity", "denial_capacity", "success_max_ttl", "denial_max_ttl"])
def test_cache_policy_zero_is_allowed(field: str) -> None:
    """Zero disables (capacity) or means "do not keep" (max TTL); it is not an error."""
    assert getattr(CachePolicy(**{field: 0}), field) == 0


@pytest.mark.parametrize(
    ("field", "words"),
    [
        ("success_capacity", "success capacity"),
        ("denial_capacity", "denial capacity"),
        ("success_max_ttl", "success max ttl"),
        ("denial_max_ttl", "denial max ttl"),
    ],
)
def test_cache_policy_negative(field: str, words: str) -> None:
    """A negative capacity or TTL is a ConfigError naming the setting."""
    with pytest.raises(ConfigError) as info:
        CachePolicy(**{field: -1})
    assert words in str(info.value)


def test_policies_are_frozen() -> None:
    """Configuration is built once and read-only afterwards."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        CachePolicy().success_max_ttl = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ForwardPolicy(UP).policy = "sequential"  # type: ignore[misc]


def _zones(*names: str) -> tuple[Zone, ...]:
    return tuple(Zone(canonical_zone(n), ForwardPolicy(UP)) for n in names)


def test_config_valid() -> None:
    """A listen address, distinct zones and a known loop make a Config."""
    config = Config(listen=("169.254.20.10", "192.0.2.10"), port=53, zones=_zones("cluster.local", "."), loop="asyncio")
    assert [z.name for z in config.zones] == ["cluster.local.", "."]


@pytest.mark.parametrize(
    ("kwargs", "mentions"),
    [
        ({"listen": ()}, "listen"),
        ({"zones": _zones("cluster.local", "example.com", "Cluster.Local.")}, "cluster.local."),
        ({"zones": _zones(".", "")}, "."),
        ({"loop": "trio"}, "trio"),
        ({"loop": ""}, "loop"),
        ({"cache_memory": -1}, "cache memory budget"),
        ({"cache_memory": 1000}, "at least 1Mi"),
    ],
)
def test_config_invalid(kwargs: dict[str, object], mentions: str) -> None:
    """No listen address, a zone configured twice or an unknown loop: a ConfigError saying which."""
    base: dict[str, object] = {"listen": ("169.254.20.10",), "port": 53, "zones": _zones("cluster.local", ".")}
    with pytest.raises(ConfigError) as info:
        Config(**{**base, **kwargs})  # type: ignore[arg-type]
    assert mentions in str(info.value)


# ---------------------------------------------------------------------------- sizes (--cache-memory)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("25165824", 25165824),
        ("24Mi", 24 * 2**20),
        ("64MiB", 64 * 2**20),
        ("24mi", 24 * 2**20),
        ("32M", 32_000_000),
        ("32MB", 32_000_000),
        ("512k", 512_000),
        ("512Ki", 512 * 1024),
        ("1.5Gi", 3 * 2**29),
        (" 2Gi ", 2 * 2**30),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    """Bytes, or a number with Kubernetes' binary (Ki, Mi, Gi) or decimal (k, M, G) suffixes."""
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "Mi", "-1", "-1Mi", "lots", "1Ti", "1.5.2Mi", "nan", "inf", "Mi24"])
def test_parse_size_rejects(text: str) -> None:
    """Anything else is a ConfigError that quotes the input and shows a valid example."""
    with pytest.raises(ConfigError) as info:
        parse_size(text)
    assert repr(text) in str(info.value) and "24Mi" in str(info.value)


def test_cache_memory_zero_means_no_budget() -> None:
    """0 is allowed (no budget beyond the entry capacities); the default is a budget."""
    base = Config(listen=("169.254.20.10",), port=53, zones=_zones("cluster.local", "."))
    assert dataclasses.replace(base, cache_memory=0).cache_memory == 0
    assert base.cache_memory >= 2**20
