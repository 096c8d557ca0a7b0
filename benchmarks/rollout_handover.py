"""Upstream queries in the 30 s after a rollout, with and without the cache handover.

Usage: python benchmarks/rollout_handover.py [--names N] [--rate Q] [--ttl SECONDS]

A counting fake upstream serves N names (A records) of the cluster zone. Agent A
(`nodecache run`, loopback, test resolv.conf, no node setup) is warmed by a bounded
query loop over all N names, then B is started beside it with the same control
socket (the rollout model) and A gets SIGTERM. For 30 s a bounded loop asks B
Q queries a second, names drawn uniformly. Printed: upstream queries in the first
5 s and in the 30 s after B started, with the handover and with it off.
"""

from __future__ import annotations

import argparse
import random
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dnslib import CLASS, QTYPE, RR, A  # noqa: E402

from tests.conftest import AgentProcess  # noqa: E402
from tests.dnsmsg import query  # noqa: E402
from tests.support.fakeupstream import FakeUpstream  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.samplezone import cluster_records  # noqa: E402

WINDOW = 30.0
EARLY = 5.0
SEED = 11


def names(n: int) -> list[str]:
    return [f"svc-{i}.default.svc.cluster.local." for i in range(n)]


def records(n: int, ttl: int) -> list[RR]:
    extra = [RR(name, QTYPE.A, CLASS.IN, ttl, A(f"192.0.2.{i % 250 + 1}")) for i, name in enumerate(names(n))]
    return cluster_records() + extra


def load(port: int, asked: list[str], rate: float, seconds: float, rng: random.Random) -> int:
    """Ask `rate` queries a second for `seconds` (bounded), not waiting for answers; returns how many were sent."""
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        start = time.monotonic()
        while (now := time.monotonic()) - start < seconds:
            due = int((now - start) * rate)
            while sent < due:
                sock.sendto(query(rng.choice(asked), qid=sent & 0xFFFF), ("127.0.0.1", port))
                sent += 1
            try:
                while sock.recv(65535):
                    pass
            except BlockingIOError:
                pass
            time.sleep(0.002)
    return sent


def rollout(n: int, rate: float, ttl: int, handover: bool) -> tuple[int, int, int]:
    """(upstream queries in the first EARLY s, in WINDOW s, queries sent) after B starts."""
    rng = random.Random(SEED)
    asked = names(n)
    with tempfile.TemporaryDirectory() as tmp, FakeUpstream(records(n, ttl)) as up:
        conf = Path(tmp) / "resolv.conf"
        conf.write_text("nameserver 127.0.0.254\n")

        def args(port: int, *extra: str) -> list[str]:
            return ["--listen", "127.0.0.1", "--port", str(port), "--upstream", f"127.0.0.1:{up.port}",
                    "--node-resolv-conf", str(conf), "--cluster-success-ttl", str(ttl), *extra]  # fmt: skip

        port = free_port()
        old = AgentProcess(args(port)).start()
        try:
            load(port, asked, rate, 5.0, rng)  # warm: every name asked several times
            before = up.count()
            sock = str(old.control_socket)
            new = AgentProcess(args(port, "--control-socket", sock, "--handover-timeout", "5" if handover else "0"))
            new.start()
            try:
                old.stop()  # SIGTERM: the old agent leaves; B serves the port alone (SO_REUSEPORT)
                started = time.monotonic()
                sent = load(port, asked, rate, EARLY, rng)
                early = up.count() - before
                sent += load(port, asked, rate, WINDOW - (time.monotonic() - started), rng)
                return early, up.count() - before, sent
            finally:
                new.stop()
        finally:
            old.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--ttl", type=int, default=30)
    opts = parser.parse_args()
    print(f"{opts.names} names, TTL {opts.ttl} s, {opts.rate:g} q/s for {WINDOW:g} s after the new agent starts")
    print(f"{'handover':<10} {'upstream first 5 s':>19} {'upstream 30 s':>14} {'queries sent':>13}")
    for on in (False, True):
        early, total, sent = rollout(opts.names, opts.rate, opts.ttl, on)
        print(f"{'on' if on else 'off':<10} {early:>19} {total:>14} {sent:>13}")


if __name__ == "__main__":
    main()
