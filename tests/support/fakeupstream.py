"""A programmable upstream DNS server for fault injection.

By default it answers like the sample zone's authoritative server. Tests then make chosen
names (or every name, or one transport) misbehave — slow, silent, truncated, garbled,
lying about the ID or question, failing with an rcode, or with odd TTLs — and read back
exactly what the agent sent: transport, name, type, ID and source port of every query.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from dnslib import CLASS, QTYPE, RCODE, RR, A, DNSQuestion, DNSRecord

from tests.support.samplezone import CLOSE_CONNECTION, SampleResponder, encode, formerr_for, reply_header

CustomFn = Callable[[DNSRecord], bytes | None]


@dataclass(frozen=True)
class Behaviour:
    """How to answer one query. Build with the class methods, e.g. `Behaviour.delay(0.5)`."""

    kind: str
    seconds: float = 0.0
    value: int = 0
    """The TTL for `ttl`, the rcode for `servfail`/`refused`/`formerr`."""
    func: CustomFn | None = field(default=None, compare=False)
    then: Behaviour | None = None

    @classmethod
    def normal(cls) -> Behaviour:
        """Answer as the authoritative server would."""
        return cls("normal")

    @classmethod
    def delay(cls, seconds: float, then: Behaviour | None = None) -> Behaviour:
        """Wait, then answer normally (or as `then` says); other queries are not held up."""
        return cls("delay", seconds=seconds, then=then)

    @classmethod
    def drop(cls) -> Behaviour:
        """Never answer (over TCP the connection stays open and silent)."""
        return cls("drop")

    @classmethod
    def close(cls) -> Behaviour:
        """TCP: close the connection without answering. UDP: same as drop."""
        return cls("close")

    @classmethod
    def truncate_udp(cls) -> Behaviour:
        """Over UDP, TC=1 and no records; over TCP, the full answer."""
        return cls("truncate_udp")

    @classmethod
    def garbage(cls) -> Behaviour:
        """12 to 100 random bytes."""
        return cls("garbage")

    @classmethod
    def short(cls) -> Behaviour:
        """Fewer than 12 bytes: not even a whole header (the real reply's first bytes)."""
        return cls("short")

    @classmethod
    def wrong_id(cls) -> Behaviour:
        """The right answer with a different ID."""
        return cls("wrong_id")

    @classmethod
    def wrong_question(cls) -> Behaviour:
        """A well-formed answer, right ID, for a different name (`wrong.` + qname)."""
        return cls("wrong_question")

    @classmethod
    def servfail(cls) -> Behaviour:
        return cls("rcode", value=RCODE.SERVFAIL)

    @classmethod
    def refused(cls) -> Behaviour:
        return cls("rcode", value=RCODE.REFUSED)

    @classmethod
    def formerr(cls) -> Behaviour:
        return cls("rcode", value=RCODE.FORMERR)

    @classmethod
    def nxdomain_no_soa(cls) -> Behaviour:
        """NXDOMAIN with an empty authority section: not cacheable (RFC 2308 section 5)."""
        return cls("nxdomain_no_soa")

    @classmethod
    def nodata_no_soa(cls) -> Behaviour:
        """NOERROR, no answer, no SOA: not cacheable either."""
        return cls("nodata_no_soa")

    @classmethod
    def ttl(cls, value: int) -> Behaviour:
        """The normal answer with every TTL set to `value` (0..2**32-1, e.g. 0x80000000)."""
        if not 0 <= value <= 0xFFFFFFFF:
            raise ValueError("a TTL is an unsigned 32-bit field")
        return cls("ttl", value=value)

    @classmethod
    def custom(cls, func: CustomFn) -> Behaviour:
        """`func(query)` returns the reply bytes, or None to stay silent."""
        return cls("custom", func=func)


class Received(NamedTuple):
    """One query as the fake upstream saw it ('' / -1 where the packet did not parse)."""

    transport: str
    qname: str
    qtype: str
    id: int
    src_port: int


@dataclass
class _Rule:
    behaviour: Behaviour
    remaining: int | None


def _key(name: str | None) -> str | None:
    return None if name is None else name.lower().rstrip(".") + "."


class FakeUpstream(SampleResponder):
    """A sample-zone server on 127.0.0.1 (port 0 by default) whose answers tests can program.

    Rules are looked up most specific first: (name, transport), (name, any transport),
    (any name, transport), (any name, any transport); no rule means `normal`.
    """

    def __init__(self, records: Iterable[RR] | None = None, address: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(records, address=address, port=port)
        self.log: list[Received] = []
        self._rules: dict[tuple[str | None, str | None], _Rule] = {}
        self._lock = threading.Lock()

    # -- programming

    def set_behaviour(
        self, name: str | None, behaviour: Behaviour, transport: str | None = None, times: int | None = None
    ) -> None:
        """Make queries for `name` (None: every name) over `transport` ("udp", "tcp" or None: both)
        behave as told, for the next `times` matching queries (None: until changed)."""
        if transport not in (None, "udp", "tcp"):
            raise ValueError(f"transport must be 'udp', 'tcp' or None, not {transport!r}")
        with self._lock:
            self._rules[(_key(name), transport)] = _Rule(behaviour, times)

    def clear_behaviours(self) -> None:
        with self._lock:
            self._rules.clear()

    def reset(self) -> None:
        """Forget received queries and rules: back to a plain authoritative server."""
        with self._lock:
            self._rules.clear()
            self.log.clear()
            self.tcp_connections = 0

    # -- observing

    def count(self, name: str | None = None, transport: str | None = None) -> int:
        """Queries received, optionally only for `name` and/or over `transport`."""
        key = _key(name)
        with self._lock:
            return sum(
                1
                for r in self.log
                if (key is None or r.qname == key) and (transport is None or r.transport == transport)
            )

    def wait_for_count(
        self, n: int, name: str | None = None, transport: str | None = None, timeout: float = 5.0
    ) -> int:
        """Wait (bounded) until at least `n` matching queries arrived; returns the count seen."""
        deadline = time.monotonic() + timeout
        while (seen := self.count(name, transport)) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return seen

    def received(self, name: str | None = None) -> list[Received]:
        """A copy of the log, optionally only for `name`."""
        key = _key(name)
        with self._lock:
            return [r for r in self.log if key is None or r.qname == key]

    # -- answering

    async def handle(self, data: bytes, transport: str, peer: tuple[str, int]) -> bytes | None:
        try:
            query = DNSRecord.parse(data)
        except Exception:  # malformed input is logged and answered like the real server would
            self._record(
                Received(transport, "", "", int.from_bytes(data[:2], "big") if len(data) >= 2 else -1, peer[1])
            )
            return formerr_for(data)
        qname = _key(str(query.q.qname)) if query.questions else ""
        qtype = QTYPE.get(query.q.qtype, str(query.q.qtype)) if query.questions else ""
        self._record(Received(transport, qname or "", str(qtype), query.header.id, peer[1]))
        behaviour = self._behaviour_for(qname, transport)
        for _ in range(8):  # follow `delay(..., then=...)` chains, bounded
            if behaviour.kind != "delay":
                break
            await asyncio.sleep(behaviour.seconds)
            behaviour = behaviour.then or Behaviour.normal()
        if behaviour.kind == "close":
            return CLOSE_CONNECTION if transport == "tcp" else None
        return self._apply(behaviour, query, data, transport)

    def _record(self, entry: Received) -> None:
        with self._lock:
            self.log.append(entry)

    def _behaviour_for(self, qname: str | None, transport: str) -> Behaviour:
        with self._lock:
            for key in ((qname, transport), (qname, None), (None, transport), (None, None)):
                rule = self._rules.get(key)
                if rule is None:
                    continue
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        del self._rules[key]
                return rule.behaviour
        return Behaviour.normal()

    def _apply(self, b: Behaviour, query: DNSRecord, data: bytes, transport: str) -> bytes | None:
        kind = b.kind
        if kind in ("drop", "close"):
            return None
        if kind == "garbage":
            return os.urandom(random.randint(12, 100))
        if kind == "custom":
            assert b.func is not None
            return b.func(query)
        if kind == "rcode":
            return encode(reply_header(query, b.value), query, transport)
        if kind in ("nxdomain_no_soa", "nodata_no_soa"):
            rcode = RCODE.NXDOMAIN if kind == "nxdomain_no_soa" else RCODE.NOERROR
            return encode(reply_header(query, rcode, aa=True), query, transport)
        if kind == "wrong_question":
            wrong = DNSQuestion("wrong." + str(query.q.qname), query.q.qtype, query.q.qclass)
            reply = reply_header(query, RCODE.NOERROR, aa=True)
            reply.questions = [wrong]
            reply.add_answer(RR(wrong.qname, QTYPE.A, CLASS.IN, 30, A("203.0.113.99")))
            return encode(reply, query, transport)
        reply = self.authority.answer(query)
        if kind == "ttl":
            for rr in reply.rr + reply.auth + reply.ar:
                rr.ttl = b.value
        if kind == "truncate_udp" and transport == "udp":
            reply.rr, reply.auth, reply.ar = [], [], []
            reply.header.tc = 1
        wire = encode(reply, query, transport)
        if kind == "wrong_id":
            wire = ((query.header.id + 1) & 0xFFFF).to_bytes(2, "big") + wire[2:]
        if kind == "short":
            wire = wire[:6]
        return wire
