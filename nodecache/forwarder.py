"""An upstream group: which server to ask, failover, timeouts, concurrency.

Semantics follow CoreDNS's forward plugin where operators rely on them:
policies random / round_robin / sequential, healthy servers first, a server
marked down after `max_fails` consecutive failures and probed back, a per-try
timeout inside an overall deadline, and REFUSED once `max_concurrent`
queries are already in flight (memory stays bounded when upstreams stall).
"""

from __future__ import annotations

import logging
import random
import time

from nodecache import wire
from nodecache.config import UPSTREAM_UDP_PAYLOAD, ForwardPolicy
from nodecache.errors import UpstreamError
from nodecache.upstream import Build, Check, Upstream

log = logging.getLogger(__name__)

MAX_TRIES = 8  # upper bound on tries per query, whatever the deadline allows


class Overloaded(UpstreamError):
    """`max_concurrent` queries are already waiting on this group."""


class Forwarder:
    """Sends a zone's cache misses to its upstream servers."""

    def __init__(self, policy: ForwardPolicy) -> None:
        self.policy = policy
        self.upstreams = [
            Upstream(a, policy.expire, policy.health_check, policy.max_fails, policy.force_tcp)
            for a in policy.upstreams
        ]
        self.active = list(self.upstreams)  # those queries may go to: loop detection excludes the others
        self.inflight = 0
        self.rejected = 0
        self.all_down = 0  # queries that found every upstream marked down (CoreDNS: healthcheck broken)
        self._next = 0
        self._rng = random.Random()  # server choice only; IDs use `secrets`

    def order(self) -> list[Upstream]:
        """Servers in the order to try them: by policy, healthy ones first."""
        ups = self.active
        if self.policy.policy == "random":
            ups = self._rng.sample(ups, len(ups))
        elif self.policy.policy == "round_robin":
            k = self._next % len(ups)
            self._next += 1
            ups = ups[k:] + ups[:k]
        ordered = sorted(ups, key=lambda u: u.down)  # stable: keeps the policy's order
        if ordered[0].down:
            self.all_down += 1
        return ordered

    async def query(self, lname: bytes, qtc: bytes, do: bool, cd: bool) -> tuple[bytes, wire.ReplyScan, Upstream]:
        """Ask until one server gives a usable reply; raise UpstreamError if none does."""
        if not self.active:
            raise UpstreamError("every upstream of this zone forwards back to this agent (loop detected); fix them and restart")
        if self.inflight >= self.policy.max_concurrent:
            self.rejected += 1
            raise Overloaded(f"{self.inflight} queries already in flight (max_concurrent)")
        question = lname + qtc

        def build(qid: int) -> bytes:
            return wire.make_query(qid, question, do, cd, UPSTREAM_UDP_PAYLOAD)

        def plain(qid: int) -> bytes:
            return wire.make_query(qid, question, do, cd, UPSTREAM_UDP_PAYLOAD, edns=False)

        def check(msg: bytes) -> wire.ReplyScan:
            return wire.scan_reply(msg, lname, qtc)

        self.inflight += 1
        try:
            return await self._try_in_turn(build, check, plain)
        finally:
            self.inflight -= 1

    async def _try_in_turn(
        self, build: Build, check: Check, plain: Build | None = None
    ) -> tuple[bytes, wire.ReplyScan, Upstream]:
        p = self.policy
        deadline = time.monotonic() + p.timeout
        errors: list[str] = []
        order = self.order()
        for attempt in range(MAX_TRIES):
            remaining = deadline - time.monotonic()
            if remaining <= 0.001:
                break
            up = order[attempt % len(order)]
            up.queries += 1
            started = time.monotonic()
            b = build
            try:
                msg, scan = await up.query(b, check, p.force_tcp, min(p.try_timeout, remaining))
                if scan.rcode == wire.FORMERR and plain is not None:
                    # RFC 6891 7: FORMERR to an EDNS query may mean no EDNS; ask the same server without it.
                    b = plain
                    remaining = deadline - time.monotonic()
                    msg, scan = await up.query(b, check, p.force_tcp, max(min(p.try_timeout, remaining), 0.001))
                if scan.flags & (wire.TC << 8) and not p.force_tcp:
                    # Truncated over UDP: the same server over TCP gives the whole answer.
                    remaining = deadline - time.monotonic()
                    msg, scan = await up.query(b, check, True, max(min(p.try_timeout, remaining), 0.001))
            except UpstreamError as exc:
                up.failed()
                errors.append(str(exc))
                log.debug("try %d failed: %s", attempt + 1, exc)
                continue
            up.succeeded(time.monotonic() - started, scan.rcode)
            return msg, scan, up
        raise UpstreamError("; ".join(dict.fromkeys(errors)) or "no time left to ask an upstream")

    def exclude(self, up: Upstream) -> None:
        """Never ask `up` again: it forwards our queries back to us (see Resolver.check_loops).

        It stays in `upstreams`, so stats and metrics still show it.
        """
        if up in self.active:
            self.active.remove(up)

    def close(self) -> None:
        for up in self.upstreams:
            up.close()
