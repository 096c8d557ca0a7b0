"""Memory of the agent's caches when every default cache is full.

Builds the agent's Resolver with the default four zones (cluster.local,
in-addr.arpa, ip6.arpa, .) and their default capacities (9984 success and
9984 denial entries each), stores realistic answers into every cache until it
is full (about 100-byte replies: three A records, or an NXDOMAIN with its SOA),
replays each once a second later (so each entry's one body is rendered again
with lowered TTLs), and prints what that cost: resident memory (VmRSS) before and after,
the caches' own byte accounting, and with --tracemalloc tracemalloc's count
and the per-entry overhead beyond the reply's own bytes (tracemalloc's own
bookkeeping then inflates the RSS figure, so measure RSS without it). In
process, no sockets: the figures are the caches' alone.

Usage: python benchmarks/cache_memory.py [--cache-memory BYTES] [--entries N] [--tracemalloc]
(--cache-memory 0, the default here, fills everything; give the agent's default
to see the budget hold.)
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from pathlib import Path

from dnslib import QTYPE, RCODE, RR, SOA, A, DNSHeader, DNSQuestion, DNSRecord

from nodecache import config as nodecache_config
from nodecache import wire
from nodecache.config import DEFAULT_CAPACITY, Address, CachePolicy, Config, default_zones
from nodecache.resolver import Resolver

UPSTREAM = (Address("192.0.2.10"),)  # never contacted: nothing is forwarded
SUFFIX = {"cluster.local.": "default.svc.cluster.local.", ".": "example.com."}
PAYLOAD = 1232


def rss() -> int:
    """This process's resident set size in bytes (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def messages(zone: str, count: int, denial: bool) -> list[tuple[bytes, bytes]]:
    """(client query, upstream reply) pairs for `count` distinct names under `zone`."""
    suffix = SUFFIX.get(zone, zone)
    out = []
    for i in range(count):
        name = f"{'nx' if denial else 'svc'}{i:05d}.{suffix}"
        q = DNSRecord(DNSHeader(id=1, rd=1), q=DNSQuestion(name, QTYPE.A))
        r = DNSRecord(DNSHeader(id=1, qr=1, rd=1, ra=1, rcode=RCODE.NXDOMAIN if denial else 0), q=q.q)
        if denial:
            soa = SOA(f"ns.dns.{suffix}", f"hostmaster.{suffix}", (1, 7200, 1800, 86400, 30))
            r.add_auth(RR(suffix, QTYPE.SOA, rdata=soa, ttl=30))
        else:
            for j in range(3):
                r.add_answer(RR(name, QTYPE.A, rdata=A(f"192.0.2.{j + 1}"), ttl=30))
        out.append((bytes(q.pack()), bytes(r.pack())))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-memory", default="0", help="the budget, as --cache-memory takes it (0: none)")
    parser.add_argument("--entries", type=int, default=DEFAULT_CAPACITY, help="entries per cache")
    parser.add_argument("--tracemalloc", action="store_true", help="also count with tracemalloc (RSS then means little)")
    args = parser.parse_args()
    policy = CachePolicy(success_capacity=args.entries, denial_capacity=args.entries, denial_max_ttl=30)
    zones = default_zones("cluster.local", UPSTREAM, UPSTREAM, policy, policy)
    extra = {}
    if "cache_memory" in Config.__dataclass_fields__:  # absent before --cache-memory: run against older code too
        extra["cache_memory"] = nodecache_config.parse_size(args.cache_memory)
    resolver = Resolver(Config(listen=("127.0.0.1",), port=0, zones=zones, **extra))
    work = [(z, messages(z.name, args.entries, denial)) for z in resolver.zones for denial in (False, True)]
    reply_bytes = sum(len(m) for _, msgs in work for _, m in msgs)
    gc.collect()
    rss0 = rss()
    if args.tracemalloc:
        tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for zone, msgs in work:
        for q, m in msgs:
            qs = wire.scan_query(q)
            qtc = qs.key[len(qs.lname) : len(qs.lname) + 4]
            zone.cache.store(qs.key, wire.scan_reply(m, qs.lname, qtc), False, PAYLOAD)
    later = time.monotonic() + 1.0
    for zone, msgs in work:
        for q, _ in msgs:
            qs = wire.scan_query(q)
            entry = zone.cache.get(qs.key)
            if entry is not None:
                entry.reply(q, qs.qend, qs.edns, PAYLOAD, later)
    del qs, entry
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    gc.collect()
    grown = rss() - rss0
    held = sum(len(z.cache.success) + len(z.cache.denial) for z in resolver.zones)
    accounted = sum(z.cache.bytes for z in resolver.zones)
    per_reply = reply_bytes / sum(len(msgs) for _, msgs in work)
    mib = 1024 * 1024
    print(f"entries held     {held} of {len(resolver.zones) * 2 * args.entries}, reply {per_reply:.0f} bytes on average")
    print(f"RSS growth       {grown / mib:.1f} MiB ({grown / held:.0f} bytes/entry)"
          f"{' (tracemalloc on: not meaningful)' if args.tracemalloc else ''}; RSS now {rss() / mib:.1f} MiB")  # fmt: skip
    if args.tracemalloc:
        print(f"tracemalloc      {traced / mib:.1f} MiB ({traced / held:.0f} bytes/entry, "
              f"{traced / held - per_reply:.0f} beyond the reply)")  # fmt: skip
    print(f"accounted        {accounted / mib:.1f} MiB ({accounted / held:.0f} bytes/entry)")
    budget = getattr(resolver, "budget", None)
    if budget is not None and budget.limit:
        evicted = sum(z.cache.memory_evictions for z in resolver.zones)
        print(f"budget           {budget.limit / mib:.1f} MiB, {evicted} entries evicted for memory")


if __name__ == "__main__":
    main()
