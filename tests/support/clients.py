"""Real DNS clients (dig, kdig) and raw sockets, for talking to the agent the way users do.

dig and kdig catch what a dnslib round trip would not: real clients are strict about
IDs, questions, truncation and EDNS. Their text output is parsed (the same parser serves
both; their formats differ only in punctuation). Raw sockets cover malformed packets and
TCP pipelining, which neither client does: both reuse a connection with `+keepopen` but
send the next query only after the previous reply arrived.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import pytest

# The Debian package of each client binary, for the reason a test is skipped when one is missing.
CLIENT_PACKAGES = {"dig": "bind9-dnsutils", "kdig": "knot-dnsutils"}
_SECTIONS = {"QUESTION": "question", "ANSWER": "answer", "AUTHORITY": "authority", "ADDITIONAL": "additional"}


class Record(NamedTuple):
    """One resource record as the client printed it (name as received; type upper case)."""

    name: str
    ttl: int
    type: str
    rdata: str


@dataclass
class DigResult:
    """What the client saw. `rcode` is None when no reply arrived (see `timed_out`)."""

    rcode: str | None = None
    id: int | None = None
    flags: frozenset[str] = frozenset()
    question: list[tuple[str, str]] = field(default_factory=list)
    answer: list[Record] = field(default_factory=list)
    authority: list[Record] = field(default_factory=list)
    additional: list[Record] = field(default_factory=list)
    edns: bool = False
    udp_size: int | None = None
    query_time_ms: float | None = None
    transport: str | None = None
    """"UDP" or "TCP": how the reply that was printed came back."""
    retried_tcp: bool = False
    """The client saw TC=1 over UDP and asked again over TCP (only without +ignore)."""
    timed_out: bool = False
    returncode: int = 0
    output: str = ""

    @property
    def tc(self) -> bool:
        return "tc" in self.flags

    @property
    def aa(self) -> bool:
        return "aa" in self.flags

    def rdatas(self, rtype: str | None = None) -> list[str]:
        """Answer rdata, optionally of one type: `r.rdatas("A") == ["192.0.2.1"]`."""
        return [r.rdata for r in self.answer if rtype is None or r.type == rtype.upper()]

    def ttls(self) -> list[int]:
        return [r.ttl for r in self.answer]


_RECORD_RE = re.compile(r"(\S+)\s+(\d+)\s+(?:(?:IN|CH|HS|CS|ANY|NONE)\s+)?([A-Za-z0-9]+)\s*(.*)$")


def _parse_record(line: str) -> Record | None:
    """`name ttl [class] type rdata`, with rdata kept verbatim (TXT spacing matters)."""
    m = _RECORD_RE.match(line)
    if m is None:
        return None
    return Record(m.group(1), int(m.group(2)), m.group(3).upper(), m.group(4).strip())


def parse_output(text: str) -> list[DigResult]:
    """Every reply printed in a dig or kdig text output, in order."""
    results: list[DigResult] = []
    cur: DigResult | None = None
    section: str | None = None
    retried = "Truncated, retrying in TCP mode" in text
    for raw in text.splitlines():
        line = raw.strip()
        if "->>HEADER<<-" in line:
            cur = DigResult(retried_tcp=retried)
            results.append(cur)
            section = None
            if m := re.search(r"status: ([A-Z0-9]+)", line):
                cur.rcode = m.group(1)
            if m := re.search(r"id: (\d+)", line):
                cur.id = int(m.group(1))
            continue
        if cur is None:
            continue
        if m := re.match(r";; [Ff]lags:([^;]*);", line):
            cur.flags = frozenset(m.group(1).split())
        elif m := re.match(r";; ([A-Z]+) SECTION:", line):
            section = _SECTIONS.get(m.group(1))
        elif "PSEUDOSECTION" in line:
            cur.edns = "OPT" in line or "EDNS" in line
            section = None
        elif m := re.search(r"(?:udp: |UDP size: )(\d+)", line):
            cur.udp_size = int(m.group(1))
        elif m := re.match(r";; Query time: (\d+) msec", line):
            cur.query_time_ms = float(m.group(1))
        elif m := re.match(r";; SERVER: .*\((UDP|TCP)\)", line):
            cur.transport = m.group(1)
        elif m := re.match(r";; From .*\((UDP|TCP)\) in ([\d.]+) ms", line):
            cur.transport, cur.query_time_ms = m.group(1), float(m.group(2))
        elif not line:
            section = None
        elif section == "question" and line.startswith(";"):
            parts = line.lstrip(";").split()
            if parts:
                cur.question.append((parts[0], parts[-1].upper()))
        elif section in ("answer", "authority", "additional") and (rec := _parse_record(line)) is not None:
            getattr(cur, section).append(rec)
    return results


def _need(binary: str) -> str:
    """The client's path; without it the calling test is skipped, naming the package to install.

    Tests that ask with dig or kdig need not all carry a skipif of their own: a user who
    cannot install the package sees them skipped with this reason (`pytest -ra`), not failed.
    """
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed (Debian package {CLIENT_PACKAGES[binary]}; `make test` as root installs it)")
    return path


def _run(argv: list[str], timeout: float) -> tuple[str, int]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    return done.stdout + done.stderr, done.returncode


def _one(text: str, returncode: int) -> DigResult:
    results = parse_output(text)
    result = results[-1] if results else DigResult(timed_out=True)
    result.returncode, result.output = returncode, text
    return result


def dig(
    server: str,
    port: int,
    name: str,
    qtype: str = "A",
    *extra: str,
    tcp: bool = False,
    timeout: float = 3,
    retry_tcp: bool = False,
) -> DigResult:
    """One query with BIND's dig, no retries. `extra` are dig options, e.g. "+nocookie", "+bufsize=512".

    dig re-asks over TCP when a UDP reply has TC=1; that hides what the server did, so
    `+ignore` is passed unless `retry_tcp` is set.
    """
    argv = [_need("dig"), f"@{server}", "-p", str(port), name, qtype, "+tries=1", f"+time={max(1, round(timeout))}"]
    argv += ["+tcp"] if tcp else []
    argv += [] if retry_tcp else ["+ignore"]
    argv += list(extra)
    return _one(*_run(argv, timeout * 3 + 5))


def kdig(
    server: str,
    port: int,
    name: str,
    qtype: str = "A",
    *extra: str,
    tcp: bool = False,
    timeout: float = 3,
    retry_tcp: bool = False,
) -> DigResult:
    """One query with Knot's kdig, no retries; same result shape as `dig`.

    Unlike dig, kdig sends no EDNS unless asked ("+edns", "+bufsize=N").
    """
    return kdig_many(server, port, [(name, qtype)], *extra, tcp=tcp, timeout=timeout, retry_tcp=retry_tcp)[0]


def kdig_many(
    server: str,
    port: int,
    queries: list[tuple[str, str]],
    *extra: str,
    tcp: bool = True,
    timeout: float = 3,
    retry_tcp: bool = False,
) -> list[DigResult]:
    """Several queries in one kdig run; over TCP they share one connection (`+keepopen`).

    kdig waits for each reply before sending the next query (no pipelining); use `raw_tcp`
    to pipeline. A query that got no reply comes back as a `timed_out` result.
    """
    argv = [_need("kdig"), f"@{server}", "-p", str(port), f"+timeout={max(1, round(timeout))}", "+retry=0"]
    argv += ["+tcp", "+keepopen"] if tcp else ["+notcp"]
    argv += [] if retry_tcp else ["+ignore"]
    argv += list(extra)
    for name, qtype in queries:
        argv += [name, qtype]
    text, returncode = _run(argv, timeout * (len(queries) + 1) + 5)
    printed = parse_output(text)
    # Match replies to queries by question: a query that timed out prints no reply at all.
    results = []
    for name, qtype in queries:
        want = (name.lower().rstrip(".") + ".", qtype.upper())
        hit = next((r for r in printed if [(n.lower(), t) for n, t in r.question[:1]] == [want]), None)
        if hit is not None:
            printed.remove(hit)
        else:
            hit = DigResult(timed_out=True)
        hit.returncode, hit.output = returncode, text
        results.append(hit)
    return results


# --------------------------------------------------------------------------- raw sockets


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def udp_client_socket(host: str, port: int) -> socket.socket:
    """A UDP socket connected to host:port whose own port is not `port`.

    When nothing listens yet (a server still starting), the kernel may pick the very port
    being probed as the ephemeral source port: the socket then talks to itself, and it also
    keeps the server from binding. Pick again when that happens (bounded).
    """
    for _ in range(20):
        sock = socket.socket(_family(host), socket.SOCK_DGRAM)
        sock.connect((host, port))  # connected: only the server's replies are accepted
        if sock.getsockname()[1] != port:
            return sock
        sock.close()
    raise OSError(f"could not get a UDP source port other than {port}")


def raw_udp(host: str, port: int, wire: bytes, timeout: float = 2.0) -> bytes | None:
    """Send one datagram and return the first datagram back, or None on timeout."""
    with udp_client_socket(host, port) as sock:
        sock.settimeout(timeout)
        sock.send(wire)
        try:
            return sock.recv(65535)
        except (TimeoutError, ConnectionRefusedError):
            return None


def read_framed(sock: socket.socket, n: int, deadline: float) -> list[bytes]:
    """Up to `n` length-prefixed messages from a blocking socket, until EOF, a reset or time.monotonic() `deadline`."""
    out: list[bytes] = []
    buf = b""
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            chunk = sock.recv(65535)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        buf += chunk
        while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
            size = int.from_bytes(buf[:2], "big")
            out.append(buf[2 : 2 + size])
            buf = buf[2 + size :]
    return out


def raw_tcp(host: str, port: int, wires: list[bytes], timeout: float = 2.0, framed: bool = False) -> list[bytes]:
    """Pipeline `wires` on one TCP connection (all sent before reading), then read replies.

    Each wire gets the 2-byte length prefix unless `framed` (then they are sent as given,
    e.g. to send a bad length). Returns the replies that arrived, in arrival order, until
    as many as were sent, EOF, or `timeout` seconds in all.
    """
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        if sock.getsockname() == sock.getpeername():  # TCP self-connect: nobody listens there
            raise ConnectionRefusedError(f"nothing listens on {host} port {port} (self-connect)")
        sock.sendall(b"".join(w if framed else len(w).to_bytes(2, "big") + w for w in wires))
        return read_framed(sock, len(wires), deadline)
