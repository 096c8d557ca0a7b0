"""--cache-memory and bounded counters, through a running agent: what an operator sees.

The agent answers from a fake upstream; the test floods it with distinct names
(bounded in count) and reads the result back the way an operator would: the
stats report and a /metrics scrape parsed with prometheus_client.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import tracemalloc
from dataclasses import replace
from pathlib import Path

import click
import pytest
from dnslib import EDNS0, RCODE, DNSRecord

from nodecache import cache as cache_module
from nodecache import wire
from nodecache.cache import Kind, ZoneCache
from nodecache.cli import build_config, run
from nodecache.config import DEFAULT_CACHE_MEMORY, DEFAULT_CAPACITY, Address, CachePolicy, Config
from nodecache.counters import COUNTED_RCODES, COUNTED_TYPES, OTHER_RCODE, OTHER_TYPE, counted_type
from nodecache.dnstext import rcode_name
from nodecache.resolver import Resolver
from nodecache.stats import render, report
from nodecache.upstream import Upstream
from tests import dnsmsg
from tests.conftest import ask_udp, make_config, running, with_zone
from tests.support.fakeupstream import FakeUpstream
from tests.support.http import scrape, value
from tests.support.net import free_port

BUDGET = 1024 * 1024  # the smallest budget a Config accepts
FLOOD = 5000  # distinct answers: about 1.6 MiB cached (~320 bytes each here), past BUDGET
BATCH = 50  # queries in flight at once while flooding
TYPE_BATCH = 200
HIT_TYPES = 500
SVC = "kubernetes.default.svc.cluster.local"
STOCK_COREFILE = Path(__file__).parent / "fixtures" / "node-local-dns.Corefile"
# Room for every name the tests send, and a stale window that keeps expired entries from the
# periodic purge (the sample zone's negative TTL is 5 s): only the budget evicts.
ROOMY = CachePolicy(success_max_ttl=600, denial_max_ttl=600, stale_window=3600)


def agent_config(up: FakeUpstream, cache_memory: int, **extra: object) -> Config:
    base = make_config([f"127.0.0.1:{up.port}"], [f"127.0.0.1:{up.port}"])
    return replace(with_zone(base, "cluster.local.", cache=ROOMY), cache_memory=cache_memory, **extra)  # type: ignore[arg-type]


def key(name: str) -> bytes:
    return wire.scan_query(query(name)).key


def query(name: str, qtype: str | int = "A", qid: int = 7) -> bytes:
    q = DNSRecord.question(name, qtype) if isinstance(qtype, str) else DNSRecord.question(name, "A")
    if not isinstance(qtype, str):
        q.q.qtype = qtype
    q.header.id = qid
    q.add_ar(EDNS0(udp_len=1232))
    return bytes(q.pack())


async def flood(port: int, names: list[str], qtype: str | int = "A") -> list[bytes | None]:
    """Ask every name once, BATCH at a time (bounded: len(names) queries in all)."""
    replies: list[bytes | None] = []
    for i in range(0, len(names), BATCH):
        chunk = names[i : i + BATCH]
        replies += await asyncio.gather(*(ask_udp(port, query(n, qtype, qid=j)) for j, n in enumerate(chunk)))
    return replies


@pytest.mark.slow
async def test_budget_bounds_a_flood_and_shows_in_stats_and_metrics(upstream: FakeUpstream) -> None:
    """Distinct names past the budget: bytes stay within it, denials went first, all of it visible."""
    metrics_port = free_port()
    config = agent_config(upstream, BUDGET, metrics_address=f"127.0.0.1:{metrics_port}")
    async with running(config) as srv:
        port = srv.bound[0][1]
        resolver = srv.resolver
        cluster = resolver.zones[0].cache
        denied = await flood(port, [f"nx{i}.default.svc.cluster.local" for i in range(200)])
        assert all(r is not None and DNSRecord.parse(r).header.rcode == RCODE.NXDOMAIN for r in denied)
        assert len(cluster.denial) == 200
        answered = await flood(port, [f"p{i}.wild.cluster.local" for i in range(FLOOD)])
        assert all(r is not None and DNSRecord.parse(r).header.rcode == RCODE.NOERROR for r in answered)
        assert resolver.budget.used <= BUDGET
        assert len(cluster.denial) == 0  # every denial made room before any answer did
        assert FLOOD // 2 < len(cluster.success) < FLOOD
        assert cluster.memory_evictions == 200 + FLOOD - len(cluster.success)
        stats = report(resolver, started=0.0, listen=[("127.0.0.1", port)], ready=True, not_ready=None)
        metrics = await asyncio.to_thread(scrape, "127.0.0.1", metrics_port)
    assert stats["cache"]["memory"] == {"budget": BUDGET, "used": resolver.budget.used}
    assert stats["cache"]["memory_evictions"] == cluster.memory_evictions
    assert stats["zones"][0]["memory_evictions"] == cluster.memory_evictions
    text = render(stats)
    assert "of 1.0 MiB budget" in text and f"({cluster.memory_evictions} for memory)" in text
    assert value(metrics, "nodecache_cache_memory_budget_bytes") == BUDGET
    assert 0 < value(metrics, "nodecache_cache_memory_bytes") <= BUDGET
    assert value(metrics, "nodecache_cache_memory_evictions_total", zone="cluster.local.") == cluster.memory_evictions
    assert value(metrics, "coredns_cache_evictions_total", zones="cluster.local.") == cluster.evictions
    assert value(metrics, "nodecache_cache_bytes") == resolver.budget.used


@pytest.mark.slow
async def test_a_reload_applies_a_lower_budget_at_once(upstream: FakeUpstream) -> None:
    """Reconfiguring with a smaller --cache-memory shrinks the caches to it, keeping the newest answers."""
    config = agent_config(upstream, 0)
    async with running(config) as srv:
        port = srv.bound[0][1]
        names = [f"r{i}.wild.cluster.local" for i in range(FLOOD)]
        await flood(port, names)
        resolver = srv.resolver
        assert resolver.budget.used > BUDGET
        resolver.reconfigure(replace(config, cache_memory=BUDGET))
        assert resolver.budget.used <= BUDGET
        cache = resolver.zones[0].cache
        assert cache.get(key(names[-1])) is not None and cache.get(key(names[0])) is None
        assert cache.memory_evictions == len(names) - len(cache.success)


@pytest.mark.slow
async def test_counters_stay_bounded_whatever_types_clients_invent(upstream: FakeUpstream) -> None:
    """5,000 distinct query types, missed and some hit: per-type tables keep a key per known type plus "other"."""
    metrics_port = free_port()
    config = agent_config(upstream, 0, metrics_address=f"127.0.0.1:{metrics_port}")
    qtypes = list(range(1000, 6000))  # unassigned types: ordinary queries the upstream answers NODATA
    hits = qtypes[:HIT_TYPES]
    async with running(config) as srv:
        port = srv.bound[0][1]
        replies = await flood_types(port, SVC, qtypes)  # misses
        replies += await flood_types(port, SVC, hits)  # hits
        replies += await flood_types(port, SVC, [1, 28, 33])  # A, AAAA, SRV keep their own keys
        zone = srv.resolver.zones[0]
        metrics = await asyncio.to_thread(scrape, "127.0.0.1", metrics_port)
    assert all(r is not None for r in replies)
    # Every query counted, as a hit or a miss (how many of the second pass hit depends on the negative TTL).
    assert zone.cache.hits + zone.stats.misses == len(qtypes) + len(hits) + 3
    assert {t for (_kind, _rcode, t) in zone.cache.tallies} == {OTHER_TYPE, 1, 28, 33}
    assert len(zone.cache.tallies) <= 4
    assert {k >> 2 for k in zone.stats.requests} == {OTHER_TYPE, 1, 28, 33}
    mine = [dict(k) for k in metrics["coredns_dns_requests_total"] if dict(k)["zone"] == "cluster.local."]
    assert {labels["type"] for labels in mine} == {"other", "A", "AAAA", "SRV"}
    assert value(metrics, "coredns_dns_requests_total", zone="cluster.local.", type="other") == len(qtypes) + len(hits)
    assert len(metrics["coredns_dns_requests_total"]) < 20


async def flood_types(port: int, name: str, qtypes: list[int]) -> list[bytes | None]:
    """Ask `name` once per type, TYPE_BATCH at a time (bounded: len(qtypes) queries)."""
    replies: list[bytes | None] = []
    for i in range(0, len(qtypes), TYPE_BATCH):
        chunk = qtypes[i : i + TYPE_BATCH]
        replies += await asyncio.gather(*(ask_udp(port, query(name, t, qid=t)) for t in chunk))
    return replies


def test_rcode_and_type_keyed_tables_are_bounded() -> None:
    """Every extended rcode (12 bits) and every type (16 bits) lands in a small fixed set of keys."""
    up = Upstream(Address("127.0.0.1", 53), 10.0, 0.5, 2, tcp=False)
    by_rcode = ZoneCache(CachePolicy(), lambda: 1000.0)
    by_type = ZoneCache(CachePolicy(), lambda: 1000.0)
    for rcode in range(4096):
        up.succeeded(0.001, rcode)
        by_rcode.tally(Kind.SERVFAIL, rcode, 1)
    for qtype in range(65536):
        by_type.tally(Kind.DENIAL, 0, qtype)
    assert set(up.durations) == set(COUNTED_RCODES) | {OTHER_RCODE}
    assert sum(h.count for h in up.durations.values()) == 4096
    assert {rcode for _, rcode, _ in by_rcode.tallies} == set(COUNTED_RCODES) | {OTHER_RCODE}
    assert {qtype for _, _, qtype in by_type.tallies} == set(COUNTED_TYPES) | {OTHER_TYPE}
    assert rcode_name(OTHER_RCODE) == "other" and rcode_name(3) == "NXDOMAIN"


@pytest.mark.parametrize(
    ("qtype", "key"), [(1, 1), (28, 28), (257, 257), (65, 65), (0, 0), (99, OTHER_TYPE), (65535, OTHER_TYPE)]
)
def test_types_fold_into_other(qtype: int, key: int) -> None:
    """Known types keep their number; any other is counted as OTHER_TYPE."""
    assert counted_type(qtype) == key


@pytest.mark.parametrize(("given", "expected"), [(None, DEFAULT_CACHE_MEMORY), ("64Mi", 64 * 2**20), ("0", 0)])
def test_cache_memory_flag_applies_with_and_without_a_corefile(
    given: str | None, expected: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--cache-memory reaches the Config whether zones come from flags or from the stock Corefile."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 203.0.113.1\n")
    monkeypatch.setenv("KUBE_DNS_UPSTREAM_SERVICE_HOST", "192.0.2.53")
    opts: dict[str, object] = {o.name: o.default for o in run.params if isinstance(o, click.Option) and o.name}
    opts.update(local_ip=("169.254.20.10",), node_resolv_conf=str(resolv), kube_dns_config_dir=None)
    if given is not None:
        opts["cache_memory"] = given
    flags = build_config({**opts, "upstream": ("192.0.2.53",)})
    corefile = build_config({**opts, "config": str(STOCK_COREFILE), "upstream_svc": "kube-dns-upstream"})
    assert flags.cache_memory == corefile.cache_memory == expected


@pytest.mark.parametrize(("cache_memory", "shown"), [(0, "(no memory budget)"), (32 * 2**20, "of 32.0 MiB budget")])
def test_stats_text_says_the_budget(cache_memory: int, shown: str) -> None:
    """`nodecache stats` names the budget, says when there is none, and still reads an older agent's report."""
    resolver = Resolver(replace(make_config(["192.0.2.53"]), cache_memory=cache_memory))
    try:
        data = report(resolver, started=0.0, listen=[("127.0.0.1", 53)], ready=True, not_ready=None)
        assert shown in render(data)
        del data["cache"]["memory"], data["cache"]["memory_evictions"]  # what an agent without the budget sends
        assert "0 evictions (0 for memory)" in render(data) and "budget" not in render(data)
    finally:
        resolver.close()


# ---------------------------------------------------------------------------- what an entry costs

OVERHEAD_TARGET = 400  # issue 10: bytes an entry may cost beyond its answer's own bytes
IDLE_RSS_BOUND = 27 * 2**20  # measured ~24 MiB on CPython 3.11 / uvloop, ~28 with OpenSSL (docs/performance.md)
STARTUP = 3.0  # seconds an idle agent gets to start before its RSS is read


def _answers(count: int) -> list[tuple[bytes, bytes]]:
    """(query, reply) pairs of ~100-byte answers: three A records each, as the cluster zone gives."""
    out = []
    for i in range(count):
        name = f"svc{i:05d}.default.svc.cluster.local."
        out.append((dnsmsg.query(name), dnsmsg.reply(name, answers=[dnsmsg.a(name, 30, f"192.0.2.{j + 1}") for j in range(3)])))
    return out


def _stored(msgs: list[tuple[bytes, bytes]]) -> tuple[ZoneCache, int]:
    """Store every reply in one zone cache while tracemalloc watches; the cache and the bytes it grew by."""
    t = [1000.0]
    cache = ZoneCache(CachePolicy(success_capacity=len(msgs)), lambda: t[0] + 0.0)  # a new float a read
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for q, msg in msgs:
            qs = wire.scan_query(q)
            cache.store(qs.key, wire.scan_reply(msg, qs.lname, qs.key[len(qs.lname) : len(qs.lname) + 4]), False, 1232)
        del qs
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    return cache, grown


def test_an_entry_costs_at_most_400_bytes_beyond_its_answer() -> None:
    """A full default cache of typical answers: each entry, with its key and LRU slot, within the target."""
    msgs = _answers(DEFAULT_CAPACITY)
    cache, grown = _stored(msgs)
    assert len(cache.success) == DEFAULT_CAPACITY
    answer_bytes = sum(len(m) for _, m in msgs)
    overhead = (grown - answer_bytes) / DEFAULT_CAPACITY
    assert 0 < overhead <= OVERHEAD_TARGET, overhead


def test_like_entries_share_their_headers_and_ttls_within_a_bound() -> None:
    """Entries with the same flags, counts and TTL layout share one copy; the shared table stays bounded."""
    cache, _ = _stored(_answers(50))
    entries = [e for _, e in cache.entries()]
    assert len({id(e._shape) for e in entries}) == 1 and len({id(e._ttls) for e in entries}) == 1
    shared_size = entries[0].size
    before = dict(cache_module._shared)
    try:
        cache_module._shared.clear()
        cache_module._shared.update({i: i for i in range(cache_module.MAX_SHARED)})  # full
        lone, _ = _stored(_answers(2))
        shapes = [e._shape for _, e in lone.entries()]
        alike = [(s.plain, s.rd, s.edns, s.edns_rd, s.opt, s.stale, s.kind, s.charge) for s in shapes]
        assert alike[0] == alike[1] and shapes[0] is not shapes[1]  # no room: each keeps its own, charged to it
        assert len(cache_module._shared) == cache_module.MAX_SHARED
        assert [e for _, e in lone.entries()][0].size > shared_size  # the own copies are counted
        lone.flush()
        assert lone.bytes == 0  # ... and given back, exactly, when the entries go
    finally:
        cache_module._shared.clear()
        cache_module._shared.update(before)


@pytest.mark.slow
def test_idle_agent_stays_small_and_loads_no_optional_library(tmp_path: Path) -> None:
    """A started agent, not yet scraped, loads no optional library (pyroute2, dnslib...), and its RSS stays bounded."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    script = tmp_path / "idle.py"
    script.write_text(IDLE_PROBE)
    port = free_port()
    argv = [sys.executable, str(script), "run", "--no-setup-interface", "--no-setup-iptables",
            "--listen", "127.0.0.1", "--port", str(port), "--upstream", "127.0.0.1:9",
            "--node-resolv-conf", str(resolv), "--control-socket", str(tmp_path / "control.sock"),
            "--metrics-address", f"127.0.0.1:{free_port()}", "--health-address", f"127.0.0.1:{free_port()}",
            "--lameduck", "0"]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    report = [line for line in out.stdout.splitlines() if line.startswith("idle ")]
    assert report, out.stderr[-2000:]
    _, rss, loaded = report[0].split(" ", 2)
    assert loaded == "-", f"loaded at start: {loaded}"
    assert int(rss) * 1024 <= IDLE_RSS_BOUND, f"idle RSS {int(rss) / 1024:.1f} MiB"


# Runs the agent's CLI in-process and, once it serves, prints its VmRSS (KiB) and which optional
# libraries it loaded, then stops it with SIGTERM (the agent's own shutdown). Optional for an agent
# run from flags without iptables: the Corefile parser, the iptables code, secrets (hmac, hashlib);
# and for every agent, OpenSSL's bindings (_ssl, _hashlib: see nodecache/notls.py).
IDLE_PROBE = f"""
import os, signal, sys

def report():
    rss = [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmRSS:")][0]
    optional = ("prometheus_client", "dnslib", "pyroute2", "nodecache.corefile", "nodecache.firewall", "secrets",
                "_ssl", "_hashlib")
    loaded = [m for m in optional if m in sys.modules]
    print("idle", rss, ",".join(loaded) or "-", flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

signal.signal(signal.SIGALRM, lambda *a: report())
signal.alarm({int(STARTUP)})
sys.argv[0] = "nodecache"
from nodecache.cli import main
main()
"""


FULL_CACHES_GROWTH_BOUND = 40 * 2**20  # measured 33.3 MiB; with ~28 MiB idle, under the 64 MiB request


@pytest.mark.slow
def test_every_default_cache_full_fits_beside_an_idle_agent() -> None:
    """benchmarks/cache_memory.py with no budget: all eight default caches full grow RSS by under 40 MiB."""
    script = Path(__file__).parent.parent / "benchmarks" / "cache_memory.py"
    out = subprocess.run([sys.executable, str(script), "--cache-memory", "0"], capture_output=True, text=True,
                         timeout=300, check=True)  # fmt: skip
    lines = dict(line.split(None, 1) for line in out.stdout.splitlines() if line.strip())
    held, total = lines["entries"].split()[1], lines["entries"].split()[3].rstrip(",")
    assert held == total == str(4 * 2 * DEFAULT_CAPACITY)
    grown_mib = float(lines["RSS"].split()[1])
    assert grown_mib * 2**20 <= FULL_CACHES_GROWTH_BOUND, out.stdout
