"""What a miss spends keeping its answer: `wire.scan_reply` and `ZoneCache.store` into a full cache.

In process, no sockets, with the agent's garbage collector settings: its Resolver with the default four zones and
the default `--cache-memory` budget; the cluster zone's success cache is
first filled to its capacity, so every timed store also evicts the least
recently used entry, as under the saturated miss benchmark. Each reply has
the shape NSD gives the miss workload's wildcard names: one question, one A
record whose owner points at the question, and an OPT record. Prints the
median over repetitions of the microseconds per scan, per store and per both.
A tight loop for before/after comparisons of the cache's store path; the
agent's real CPU per miss comes from `profile_miss.py --no-profile`.

    .venv/bin/python benchmarks/store_bench.py [--stores N] [--reps R]
    .venv/bin/python benchmarks/store_bench.py --src OLD_TREE   # the same loop on another tree's code
    .venv/bin/python benchmarks/store_bench.py --instructions 5000 [--src OLD_TREE]   # needs valgrind

On a busy machine the times move by a quarter from run to run; instruction
counts do not. --instructions N runs this script four times under callgrind
(N and 2N stores, each also with --prepare-only) and prints the instructions
per scan and store: the differences, so start-up and the test data cancel out.
With PYTHONHASHSEED fixed the count repeats to within a few instructions.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

PAYLOAD = 1232
HASH_SEED = "0"  # fixed under callgrind, so the count repeats
RECORD_TTL = 30  # the sample zone's TTL: equal to the cluster zone's success cap


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stores", type=int, default=30_000, help="stores timed per repetition (each evicts one entry)")
    p.add_argument("--reps", type=int, default=7, help="repetitions; the median is reported")
    p.add_argument("--prepare-only", action="store_true",
                   help="build the queries and replies but neither scan nor store them: the baseline to subtract "
                        "when counting instructions (callgrind) rather than timing")
    p.add_argument("--src", type=Path, default=None, help="import nodecache from this source tree instead")
    p.add_argument("--instructions", type=int, metavar="N", default=None,
                   help="count instructions per scan and store under callgrind (N and 2N stores) instead of timing")
    args = p.parse_args()
    if args.stores < 1 or args.reps < 1 or (args.instructions is not None and args.instructions < 1):
        p.error("--stores, --reps and --instructions must be positive")
    return args


def counted(stores: int, src: Path | None, prepare_only: bool) -> int:
    """Instructions callgrind counts for one repetition of `stores` stores (or their preparation alone)."""
    argv = [sys.executable, __file__, "--reps", "1", "--stores", str(stores)]
    argv += ["--src", str(src)] if src is not None else []
    argv += ["--prepare-only"] if prepare_only else []
    run = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
                         capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": HASH_SEED}, check=True)
    found = re.search(r"Collected : (\d+)", run.stderr)
    if found is None:
        raise SystemExit(f"no instruction count in callgrind's output:\n{run.stderr}")
    return int(found.group(1))


def instructions(n: int, src: Path | None) -> None:
    """Print the instructions per scan and store: (2N - N stores) less (2N - N preparations), over N."""
    total = counted(2 * n, src, False) - counted(n, src, False)
    prepare = counted(2 * n, src, True) - counted(n, src, True)
    print(f"{(total - prepare) / n:,.0f} instructions per scan_reply and store into a full cache "
          f"(callgrind, {n:,} vs {2 * n:,} stores, less their preparation: {prepare / n:,.0f} each)")


def name_wire(name: str) -> bytes:
    """`name` (dotted, no trailing dot) in DNS wire format."""
    return b"".join(bytes((len(label),)) + label.encode() for label in name.split(".")) + b"\x00"


def exchange(n: int, run: int) -> tuple[bytes, bytes]:
    """(client query, upstream reply) for the n-th unique wildcard name, as NSD answers it."""
    question = name_wire(f"r{run}-{n}.wild.cluster.local") + b"\x00\x01\x00\x01"
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01" + question + opt
    answer = b"\xc0\x0c\x00\x01\x00\x01" + RECORD_TTL.to_bytes(4, "big") + b"\x00\x04\xcb\x00\x71\x07"
    reply = b"\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x01" + question + answer + opt
    return query, reply


def main() -> int:
    args = parse_args()
    if args.instructions is not None:
        instructions(args.instructions, args.src)
        return 0
    if args.src is not None:
        sys.path.insert(0, str(args.src.resolve()))
    from nodecache import wire
    from nodecache.config import DEFAULT_CLUSTER_DENIAL_TTL, Address, CachePolicy, Config, default_zones
    from nodecache.resolver import Resolver
    from nodecache.server import settle_gc

    upstream = (Address("192.0.2.10"),)  # never contacted: nothing is forwarded
    zones = default_zones("cluster.local", upstream, upstream,
                          CachePolicy(denial_max_ttl=DEFAULT_CLUSTER_DENIAL_TTL), CachePolicy())
    resolver = Resolver(Config(listen=("127.0.0.1",), port=0, zones=zones))
    cache = resolver.zones[0].cache
    cache.watch(resolver.replies)

    def prepared(count: int, run: int) -> list[tuple[bytes, bytes, bytes, bytes]]:
        out = []
        for n in range(count):
            query, reply = exchange(n, run)
            q = wire.scan_query(query)
            out.append((q.key, reply, q.lname, q.key[len(q.lname) : len(q.lname) + 4]))
        return out

    scan_reply, store = wire.scan_reply, cache.store
    for key, reply, lname, qtc in prepared(cache.policy.success_capacity, 0):
        store(key, scan_reply(reply, lname, qtc), False, PAYLOAD)
    settle_gc()  # the agent's collector settings, once loaded (they change a miss's cost a lot)
    scan_us, store_us, both_us = [], [], []
    for rep in range(args.reps):
        work = prepared(args.stores, rep + 1)
        if args.prepare_only:
            continue
        t0 = time.perf_counter()
        scans = [scan_reply(reply, lname, qtc) for _key, reply, lname, qtc in work]
        t1 = time.perf_counter()
        for (key, _reply, _lname, _qtc), scan in zip(work, scans):
            store(key, scan, False, PAYLOAD)
        t2 = time.perf_counter()
        scan_us.append(1e6 * (t1 - t0) / args.stores)
        store_us.append(1e6 * (t2 - t1) / args.stores)
        both_us.append(1e6 * (t2 - t0) / args.stores)
        del scans
    if args.prepare_only:
        return 0
    held = len(cache.success)
    assert held == cache.policy.success_capacity, f"the cache holds {held} entries, not its capacity"
    scan_med, store_med, both_med = (statistics.median(v) for v in (scan_us, store_us, both_us))
    print(f"{args.stores:,} stores x {args.reps} into a full cache ({held:,} entries, {cache.evictions:,} evicted): "
          f"scan_reply {scan_med:.2f} us, store {store_med:.2f} us, both {both_med:.2f} us "
          f"(medians; both per rep: {', '.join(f'{u:.2f}' for u in both_us)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
