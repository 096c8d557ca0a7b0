"""The fill workload: names that fill every default zone's success and denial cache.

The agent's four default zones (the cluster domain, in-addr.arpa, ip6.arpa and
".") each keep up to 9984 positive and 9984 negative answers. Memory with every
one of those caches full is a target of its own (issue 10), so the benchmark's
upstream must answer that many distinct names positively and negatively in
every zone. This module says which names those are and which extra zones NSD
serves to answer them; run.py sends them once to every contender.

All names and addresses come from documentation and link-local ranges
(RFC 2606, RFC 3927, RFC 3849), so nothing here can reach or resemble a real
network.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass

#: Entries per kind (success, denial) per zone: the agent's default capacity.
FILL_PER_KIND = 9984

#: Stands in for "the internet": names outside every cluster zone, which the
#: agent sends to the node's resolvers (--node-resolv-conf).
INTERNET_ZONE = "example."
#: 169.254.0.0/16's reverse zone; link-local, so it never names a real host.
REVERSE_V4_FILL_ZONE = "254.169.in-addr.arpa."
#: Negative IPv4 names start at this third octet, clear of the positive ones.
V4_NEGATIVE_OFFSET = 128
#: The sample zone's IPv6 reverse zone (2001:db8::/32) gets the positive PTRs.
V6_POSITIVE_NET = "2001:db8:f111::"
V6_NEGATIVE_NET = "2001:db8:f000::"
FILL_TTL = 30
#: SOA MINIMUM of the zones added here, the negative-caching TTL; the sample
#: cluster zone keeps its own (5 s).
FILL_SOA_MINIMUM = 30
ZONE_NS = "ns.dns.cluster.local."


@dataclass(frozen=True)
class FillZone:
    """One agent zone's fill: its name and the questions answered yes and no."""

    zone: str
    positive: tuple[tuple[str, str], ...]
    negative: tuple[tuple[str, str], ...]


def _v4_ptr(third: int, fourth: int) -> str:
    """The reverse name of 169.254.third.fourth."""
    return f"{fourth}.{third}.{REVERSE_V4_FILL_ZONE}".rstrip(".")


def _v4(i: int, offset: int = 0) -> tuple[int, int]:
    """The i-th address of the fill range as (third, fourth) octet."""
    return offset + i // 256, i % 256


def _v6_ptr(net: str, i: int) -> str:
    return ipaddress.ip_address(f"{net}{i:x}").reverse_pointer


def fill_zones(cluster_domain: str, count: int = FILL_PER_KIND) -> tuple[FillZone, ...]:
    """The four default zones' fill questions, `count` of each kind per zone."""
    d = cluster_domain.strip(".")
    return (
        FillZone(f"{d}.",
                 tuple((f"fill-{i}.wild.{d}", "A") for i in range(count)),  # the sample zone's wildcard
                 tuple((f"fill-{i}.nx.{d}", "A") for i in range(count))),
        FillZone("in-addr.arpa.",
                 tuple((_v4_ptr(*_v4(i)), "PTR") for i in range(count)),
                 tuple((_v4_ptr(*_v4(i, V4_NEGATIVE_OFFSET)), "PTR") for i in range(count))),
        FillZone("ip6.arpa.",
                 tuple((_v6_ptr(V6_POSITIVE_NET, i), "PTR") for i in range(count)),
                 tuple((_v6_ptr(V6_NEGATIVE_NET, i), "PTR") for i in range(count))),
        FillZone(".",
                 tuple((f"fill-{i}.pos.{INTERNET_ZONE}".rstrip("."), "A") for i in range(count)),
                 tuple((f"fill-{i}.neg.{INTERNET_ZONE}".rstrip("."), "A") for i in range(count))),
    )  # fmt: skip


def interleaved(zones: tuple[FillZone, ...]) -> Iterator[tuple[str, str]]:
    """Every fill question once, zones and kinds taking turns, as mixed traffic would."""
    lists = [z.positive for z in zones] + [z.negative for z in zones]
    for i in range(max(len(x) for x in lists)):
        for x in lists:
            if i < len(x):
                yield x[i]


def _soa(origin: str, minimum: int) -> str:
    return (f"$ORIGIN {origin}\n$TTL {FILL_TTL}\n"
            f"@ IN SOA {ZONE_NS} hostmaster.{origin} 1 7200 1800 86400 {minimum}\n@ IN NS {ZONE_NS}\n")  # fmt: skip


def upstream_zones(sample: dict[str, str], count: int = FILL_PER_KIND) -> dict[str, str]:
    """The sample zones plus what answers the fill: master-file text per zone name.

    Positive reverse names get PTR records (the IPv6 ones inside the sample's
    2001:db8::/32 zone); the negative ones have none, so NSD says NXDOMAIN.
    """
    zones = dict(sample)
    v6_zone = next((z for z in zones if z.endswith(".ip6.arpa.")), None)
    if v6_zone is None:
        raise ValueError("the sample zones have no ip6.arpa zone to add the fill PTRs to")
    zones[v6_zone] += "".join(f"{_v6_ptr(V6_POSITIVE_NET, i)}. IN PTR fill-{i}.v6.{INTERNET_ZONE}\n"
                              for i in range(count))  # fmt: skip
    zones[REVERSE_V4_FILL_ZONE] = _soa(REVERSE_V4_FILL_ZONE, FILL_SOA_MINIMUM) + "".join(
        f"{_v4_ptr(*_v4(i))}. IN PTR fill-{i}.v4.{INTERNET_ZONE}\n" for i in range(count))
    zones[INTERNET_ZONE] = _soa(INTERNET_ZONE, FILL_SOA_MINIMUM) + "*.pos IN A 198.51.100.7\n"
    return zones


def total(zones: tuple[FillZone, ...]) -> int:
    """How many questions the fill asks (and entries it should leave cached)."""
    return sum(len(z.positive) + len(z.negative) for z in zones)
