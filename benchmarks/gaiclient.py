"""One pod's resolver client for bench-load: glibc's getaddrinfo, paced, bounded, one JSON line per lookup.

Python's socket.getaddrinfo calls glibc's getaddrinfo(3) directly, so the search list, ndots, the
parallel A and AAAA queries on one socket and the TCP fallback are glibc's own; the interpreter adds
microseconds to a lookup, far below a DNS round trip, and no compiler is needed on the machine.
Run inside the pod's network namespace (`ip netns exec POD ...`), where /etc/resolv.conf is the pod's.

Input (stdin): lines "INDEX NAME". Output (stdout): {"i": INDEX, "ok": bool, "addrs": [...], "ms": float}.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time


def lookup(name: str) -> tuple[bool, list[str]]:
    """AF_UNSPEC and no AI_ADDRCONFIG: A and AAAA both, as most pods' runtimes ask."""
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return False, [f"error {exc.errno}"]
    return True, sorted({str(info[4][0]) for info in infos})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, required=True, help="lookups per second this client starts (paced)")
    p.add_argument("--deadline", type=float, required=True, help="seconds after which the client stops")
    args = p.parse_args(argv)
    work = [line.split() for line in sys.stdin if line.strip()]
    start = time.monotonic()
    out = sys.stdout
    for k, (index, name) in enumerate(work):
        due = start + k / args.rate
        now = time.monotonic()
        if now - start > args.deadline:
            break
        if due > now:
            time.sleep(due - now)
        t0 = time.perf_counter()
        ok, addrs = lookup(name)
        ms = (time.perf_counter() - t0) * 1000
        out.write(json.dumps({"i": int(index), "ok": ok, "addrs": addrs, "ms": round(ms, 3)}) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
