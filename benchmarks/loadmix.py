"""The bench-load workload and its model, as pure functions (tests/test_bench_load.py runs them without root).

- The names a cluster and "the internet" hold (`Universe`), and their zone files for NSD.
- The lookup mix: a Zipf-distributed choice of short cluster names and external names, fixed seed.
- glibc's search rules (`candidates`, `predict`): what each lookup sends upstream with no cache,
  which the no-cache run must match exactly. That check is what makes the other figures credible.
- How the counting upstream classifies a reply (`classify`), and the report table.
"""

from __future__ import annotations

import bisect
import math
import random
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

# A pod's resolv.conf in namespace "default" (kubelet writes it so).
SEARCH = ("default.svc.cluster.local", "svc.cluster.local", "cluster.local")
NDOTS = 5
CLUSTER_DOMAIN = "cluster.local"
EXTERNAL_ZONE = "example"  # stands in for the internet (RFC 6761 reserves it)

DEFAULT_LOOKUPS = 12_000
DEFAULT_SEED = 8020
CLUSTER_SHARE = 0.70  # of lookups; the rest are external names
NAMESPACE_FORM_SHARE = 0.5  # of cluster lookups written `svc-N.default` rather than `svc-N`
SERVICES = 400
EXTERNALS = 200
ZIPF_EXPONENT = 1.0
DUAL_STACK_EVERY = 4  # every 4th service also has an AAAA record; the rest are IPv4-only (AAAA is NODATA)

# As CoreDNS's kubernetes plugin answers: records TTL 30, SOA MINIMUM 5 (negative answers live 5 s).
CLUSTER_TTL = 30
SOA_TTL = 30
SOA_MINIMUM = 5
EXTERNAL_TTL = 300  # longer than every cache's 30 s cap, so the cap is what counts
PROBE_NAME = "ready.example"  # readiness probe; not in the mix, so it never warms a contender's cache

QTYPE_A, QTYPE_AAAA = 1, 28
QTYPE_NAMES = {QTYPE_A: "A", QTYPE_AAAA: "AAAA"}
NOERROR, NXDOMAIN = 0, 3
# What a reply says, as counted by the upstream (kinds of upstream query).
NX, NODATA, POSITIVE, OTHER = "nxdomain", "nodata", "positive", "other"
KINDS = (NX, NODATA, POSITIVE, OTHER)


@dataclass(frozen=True)
class Universe:
    """Every name that exists, with its addresses: `services` cluster Services and `externals` external hosts."""

    services: int = SERVICES
    externals: int = EXTERNALS

    def service(self, n: int) -> str:
        return f"svc-{n}.default.svc.{CLUSTER_DOMAIN}"

    def external(self, n: int) -> str:
        return f"www.site-{n}.{EXTERNAL_ZONE}"

    def records(self) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
        """Existing name -> (IPv4 addresses, IPv6 addresses); documentation ranges only."""
        out: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        for n in range(self.services):
            v4 = f"{'192.0.2' if n < 250 else '198.51.100'}.{n % 250 + 1}"
            v6 = (f"2001:db8:5::{n + 1:x}",) if n % DUAL_STACK_EVERY == 0 else ()
            out[self.service(n)] = ((v4,), v6)
        for n in range(self.externals):
            out[self.external(n)] = ((f"203.0.113.{n % 250 + 1}",), (f"2001:db8:e::{n + 1:x}",))
        return out

    def zone_texts(self) -> dict[str, str]:
        """Master files for NSD: the cluster zone and the external zone."""
        recs = self.records()
        texts = {}
        for zone, ttl in ((CLUSTER_DOMAIN, CLUSTER_TTL), (EXTERNAL_ZONE, EXTERNAL_TTL)):
            lines = [f"$ORIGIN {zone}.", f"$TTL {ttl}",
                     f"@ {SOA_TTL} IN SOA ns.{zone}. hostmaster.{zone}. 1 7200 1800 86400 {SOA_MINIMUM}",
                     f"@ {SOA_TTL} IN NS ns.{zone}.", f"ns.{zone}. IN A 192.0.2.53"]
            if zone == EXTERNAL_ZONE:
                lines.append(f"{PROBE_NAME}. IN A 192.0.2.1")
            for name, (v4, v6) in recs.items():
                if name.endswith("." + zone):
                    lines += [f"{name}. IN A {a}" for a in v4] + [f"{name}. IN AAAA {a}" for a in v6]
            texts[zone] = "\n".join(lines) + "\n"
        return texts


def zipf_sampler(n: int, exponent: float, rng: random.Random) -> Callable[[], int]:
    """Ranks 0..n-1 drawn with probability proportional to 1 / (rank + 1) ** exponent."""
    cumulative, total = [], 0.0
    for k in range(1, n + 1):
        total += 1.0 / k**exponent
        cumulative.append(total)
    return lambda: min(bisect.bisect_left(cumulative, rng.random() * total), n - 1)


def lookup_mix(count: int, seed: int, universe: Universe, exponent: float = ZIPF_EXPONENT) -> list[str]:
    """`count` names as pods write them: `svc-N`, `svc-N.default` (70%) or external hosts (30%); same seed, same list."""
    rng = random.Random(seed)
    service, external = zipf_sampler(universe.services, exponent, rng), zipf_sampler(universe.externals, exponent, rng)
    names = []
    for _ in range(count):
        if rng.random() < CLUSTER_SHARE:
            n = service()
            names.append(f"svc-{n}.default" if rng.random() < NAMESPACE_FORM_SHARE else f"svc-{n}")
        else:
            names.append(universe.external(external()))
    return names


def candidates(name: str, search: Sequence[str] = SEARCH, ndots: int = NDOTS) -> list[str]:
    """The names glibc's resolver tries, in order (res_search): with fewer than `ndots` dots, each
    search suffix, then the name as is; with at least `ndots` dots, the name as is first."""
    if name.endswith("."):
        return [name.rstrip(".")]
    expanded = [f"{name}.{suffix}" for suffix in search]
    return [name, *expanded] if name.count(".") >= ndots else [*expanded, name]


@dataclass(frozen=True)
class Prediction:
    """What no cache sends upstream for a list of lookups: queries by (kind, qtype), failed lookups, answers."""

    queries: Counter[tuple[str, str]]
    failures: int
    answers: list[tuple[str, ...]]  # per lookup: its sorted addresses, () if it fails

    def by_kind(self) -> dict[str, int]:
        return kind_totals(self.queries)


def predict(names: Iterable[str], universe: Universe) -> Prediction:
    """glibc with AF_UNSPEC asks A and AAAA of each candidate together, and stops at the first
    candidate for which either has an answer; a name that does not exist is NXDOMAIN for both."""
    records = universe.records()
    queries: Counter[tuple[str, str]] = Counter()
    answers: list[tuple[str, ...]] = []
    failures = 0
    for name in names:
        found: tuple[str, ...] = ()
        for candidate in candidates(name):
            rec = records.get(candidate.lower())
            if rec is None:
                queries[(NX, "A")] += 1
                queries[(NX, "AAAA")] += 1
                continue
            v4, v6 = rec
            queries[(POSITIVE if v4 else NODATA, "A")] += 1
            queries[(POSITIVE if v6 else NODATA, "AAAA")] += 1
            if v4 or v6:
                found = tuple(sorted(v4 + v6))
                break
        failures += not found
        answers.append(found)
    return Prediction(queries, failures, answers)


def kind_totals(queries: Counter[tuple[str, str]]) -> dict[str, int]:
    """(kind, qtype) counts summed per kind, every kind present."""
    out = dict.fromkeys(KINDS, 0)
    for (kind, _qtype), n in queries.items():
        out[kind] += n
    return out


def classify(reply: bytes) -> tuple[str, str]:
    """(kind, qtype name) of an upstream reply: NXDOMAIN, NODATA (NOERROR, no answer), positive, or other."""
    if len(reply) < 12:
        return OTHER, "?"
    flags, qdcount, ancount = struct.unpack("!HHH", reply[2:8])
    qtype = "?"
    if qdcount:
        i = 12
        while i < len(reply) and reply[i] != 0:
            i += reply[i] + 1
        if i + 3 <= len(reply):
            code = reply[i + 1] << 8 | reply[i + 2]
            qtype = QTYPE_NAMES.get(code, str(code))
    rcode = flags & 0xF
    if rcode == NXDOMAIN:
        return NX, qtype
    if rcode == NOERROR:
        return (POSITIVE if ancount else NODATA), qtype
    return OTHER, qtype


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1) of unsorted values; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Row:
    """One contender's run: what reached the upstream, and what the clients saw."""

    name: str
    queries: Counter[tuple[str, str]]
    lookups: int
    failures: int
    mismatches: int  # lookups answered differently than with no cache
    p50_ms: float | None
    p99_ms: float | None

    @property
    def total(self) -> int:
        return sum(self.queries.values())


def report_table(rows: Sequence[Row], baseline: str = "dnsmasq") -> str:
    """The bench-load table: upstream queries (all, per lookup, by kind, AAAA NXDOMAINs), failures, latency, ratio."""
    base = next((r.total for r in rows if r.name == baseline), 0)
    head = (f"{'contender':<14} {'upstream':>9} {'/lookup':>8} {'nxdomain':>9} {'(AAAA)':>7} {'nodata':>7} "
            f"{'positive':>9} {'other':>6} {'failed':>7} {'differ':>7} {'p50 ms':>7} {'p99 ms':>7} {'/' + baseline:>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        k = kind_totals(r.queries)
        ratio = f"{r.total / base:.3f}" if base else "n/a"
        lines.append(
            f"{r.name:<14} {r.total:>9,} {r.total / max(r.lookups, 1):>8.3f} {k[NX]:>9,} {r.queries[(NX, 'AAAA')]:>7,} "
            f"{k[NODATA]:>7,} {k[POSITIVE]:>9,} {k[OTHER]:>6,} {r.failures:>7,} {r.mismatches:>7,} "
            f"{_ms(r.p50_ms):>7} {_ms(r.p99_ms):>7} {ratio:>9}")
    return "\n".join(lines)


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"
