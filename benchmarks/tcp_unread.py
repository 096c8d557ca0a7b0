"""RSS an agent gains per TCP client that pipelines queries for a ~15 KB answer and never reads.

Usage: python benchmarks/tcp_unread.py [N ...]   (default: 1 10)

Starts a fake upstream serving the big answer and `nodecache run` on a free
loopback port (test resolv.conf, no node setup), warms the cache, then for
each N opens N never-reading connections (tests/support/tcpabuse.py), waits
for the agent's RSS to settle, prints the growth, and closes them.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.conftest import AgentProcess  # noqa: E402
from tests.dnsmsg import query  # noqa: E402
from tests.support.clients import raw_tcp  # noqa: E402
from tests.support.fakeupstream import FakeUpstream  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.tcpabuse import HUGE_NAME, huge_records, open_never_readers, settled_rss_kib  # noqa: E402

IDLE = 60.0  # longer than a measurement: the connections must still be open when RSS is read


def main(counts: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp, FakeUpstream(huge_records()) as up:
        conf = Path(tmp) / "resolv.conf"
        conf.write_text("nameserver 127.0.0.254\n")
        port = free_port()
        args = ["--listen", "127.0.0.1", "--port", str(port), "--upstream", f"127.0.0.1:{up.port}",
                "--node-resolv-conf", str(conf), "--tcp-idle-timeout", str(IDLE)]
        with AgentProcess(args) as agent:
            assert agent.proc is not None
            pid = agent.proc.pid
            size = len(raw_tcp("127.0.0.1", port, [query(HUGE_NAME, "TXT")], timeout=5)[0])
            print(f"answer: {size} bytes over TCP")
            for n in counts:
                before = settled_rss_kib(pid)
                started = time.monotonic()
                readers = open_never_readers("127.0.0.1", port, n)
                after = settled_rss_kib(pid)
                sent = sum(r.sent for r in readers)
                growth = (after - before) / 1024
                print(f"{n:>3} never-reading connections: {sent} queries sent, RSS {before / 1024:.1f} -> "
                      f"{after / 1024:.1f} MiB, +{growth:.1f} MiB ({growth / n:.2f} MiB each), "
                      f"{time.monotonic() - started:.1f} s")
                for r in readers:
                    r.close()


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1, 10])
