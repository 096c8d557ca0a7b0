"""Abusive TCP clients and what they cost the agent (RFC 7766 section 10).

A never-reading client pipelines queries for a big answer and leaves every
reply unread, so whatever the agent does not bound piles up in its memory.
Used by tests/test_tcp_limits.py and benchmarks/tcp_unread.py.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from dnslib import QTYPE, RR, TXT

from tests.dnsmsg import query
from tests.support.samplezone import all_records

HUGE_NAME = "huge.default.svc.cluster.local"
TXT_STRING = 250  # bytes per character-string (at most 255)
TXT_RECORDS = 56  # 56 records of 250 bytes: a TCP answer of about 15 KB
CLIENT_RCVBUF = 4096  # the kernel rounds it up a little; small, so the agent's writes back up at once
SEND_SECONDS = 3.0  # a never-reading client stops pipelining after this long (or when the agent stops reading)
TCP_CLOSE, TCP_CLOSE_WAIT = 7, 8  # tcpi_state values (include/net/tcp_states.h)


def huge_records(name: str = HUGE_NAME, count: int = TXT_RECORDS) -> list[RR]:
    """The sample zone plus `count` distinct 250-byte TXT records at `name` (about count * 265 bytes packed)."""
    extra = [RR(name, QTYPE.TXT, rdata=TXT([f"{i:04d}".ljust(TXT_STRING, "x")]), ttl=300) for i in range(count)]
    return all_records() + extra


def rss_kib(pid: int) -> int:
    """Resident set size of process `pid`, in KiB (VmRSS in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def framed(wire: bytes) -> bytes:
    return len(wire).to_bytes(2, "big") + wire


class NeverReader:
    """One TCP connection that pipelines queries for `name` and never reads a reply.

    Sends at most `count` queries, for at most `seconds`: it stops early when
    the agent stops reading (the kernel buffers between them fill and a send
    would block for a whole second).
    """

    def __init__(self, host: str, port: int, name: str = HUGE_NAME, qtype: str = "TXT") -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
        self.sock.settimeout(3.0)
        self.sock.connect((host, port))
        self.sock.setblocking(False)
        self.one = framed(query(name, qtype, qid=0x4242))
        self.sent = 0

    def pipeline(self, count: int = 5000, seconds: float = SEND_SECONDS) -> int:
        """Queries sent in whole; the rest stay unsent (bounded in count and time)."""
        deadline = time.monotonic() + seconds
        stuck_since: float | None = None
        pending = b""
        while self.sent < count and time.monotonic() < deadline:
            if not pending:
                pending = self.one
            try:
                n = self.sock.send(pending)
            except BlockingIOError:
                n = 0
            except OSError:
                break  # reset by the agent
            pending = pending[n:]
            if not pending:
                self.sent += 1
            if n:
                stuck_since = None
                continue
            now = time.monotonic()
            if stuck_since is None:
                stuck_since = now
            elif now - stuck_since > 1.0:
                break  # nothing taken for a second: the agent stopped reading
            time.sleep(0.005)
        return self.sent

    def closed_by_peer(self, timeout: float) -> bool:
        """Wait (bounded) until the agent has closed or aborted the connection, reading nothing.

        The kernel's TCP state says so (CLOSE after a reset, CLOSE_WAIT after a
        FIN), so the replies the agent already sent stay unread.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] in (TCP_CLOSE, TCP_CLOSE_WAIT):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.sock.close()


SETTLE_SECONDS = 1.0  # RSS counts as settled once it moved less than SETTLE_KIB in this long
SETTLE_KIB = 256
SETTLE_TIMEOUT = 15.0


def settled_rss_kib(pid: int) -> int:
    """The agent's RSS once it stops moving (bounded by SETTLE_TIMEOUT)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    last = rss_kib(pid)
    while time.monotonic() < deadline:
        time.sleep(SETTLE_SECONDS)
        now = rss_kib(pid)
        if abs(now - last) < SETTLE_KIB:
            return now
        last = now
    return last


def open_never_readers(host: str, port: int, n: int, count: int = 5000) -> list[NeverReader]:
    """`n` connections, each pipelining up to `count` queries for the huge answer and reading nothing."""
    readers = [NeverReader(host, port) for _ in range(n)]
    for r in readers:
        r.pipeline(count)
    return readers
