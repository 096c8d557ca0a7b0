"""An upstream group: which server to ask, failover, timeouts, concurrency.

Semantics follow CoreDNS's forward plugin where operators rely on them:
policies random / round_robin / sequential, healthy servers first, a server
marked down after `max_fails` consecutive failures and probed back, a per-try
timeout inside an overall deadline, and REFUSED once `max_concurrent`
queries are already in flight (memory stays bounded when upstreams stall).

Where we differ: a try that stays silent past its server's retransmission
timer (a few smoothed round trips, see upstream.RttEstimator) is not waited
out. Another try goes to the next server (or the same one on a fresh socket
or another TCP connection) while the first stays open, and whichever answers
first wins. A lost datagram, or a TCP connection whose server sits on a
reply, then costs one round-trip timer rather than the whole try timeout.
A try only counts as a failure of its server when it errs or reaches the
full try timeout.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

from nodecache import wire
from nodecache.config import UPSTREAM_UDP_PAYLOAD, ForwardPolicy
from nodecache.errors import UpstreamError
from nodecache.upstream import Answer, Build, Check, Upstream

log = logging.getLogger(__name__)

MAX_TRIES = 8  # upper bound on tries per query, whatever the deadline allows
# Tries of one query waiting at once: a silent try stays open while one more goes out. Two, not more:
# a slow but live server (a node resolver recursing) then sees at most twice the queries.
MAX_OPEN_TRIES = 2
# Early retries draw on a budget: each query earns RETRY_BUDGET_RATIO of one, and at most RETRY_BUDGET_MAX
# are saved up. A lost datagram here and there is retried early; when everything is slow (the upstream or
# this agent saturated), early retries stop instead of doubling the load that made them slow.
RETRY_BUDGET_RATIO = 0.1
RETRY_BUDGET_MAX = 20.0


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
        self._retry_budget = RETRY_BUDGET_MAX

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

    @property
    def unreachable(self) -> bool:
        """Every server queries may go to is marked down: answer from the cache or fail at once."""
        return bool(self.active) and all(u.down for u in self.active)

    async def _try_in_turn(
        self, build: Build, check: Check, plain: Build | None = None
    ) -> tuple[bytes, wire.ReplyScan, Upstream]:
        """Send tries until one gives a usable reply, keeping earlier tries open (see the module notes).

        `plain` builds the query without EDNS, for a server that answers FORMERR to ours (RFC 6891 7).
        """
        p = self.policy
        clock = time.monotonic  # not loop.time(): uvloop's counts whole milliseconds, and round trips here are less
        now = clock()
        end = now + p.timeout
        order = self.order()
        # future -> (server, sent at, over TCP, how the query was built)
        tries: dict[asyncio.Future[Answer], tuple[Upstream, float, bool, Build]] = {}
        used: set[Any] = set()  # TCP connections this query went out on: a retry takes another one
        errors: list[str] = []
        sent = 0
        next_try = now
        self._retry_budget = min(self._retry_budget + RETRY_BUDGET_RATIO, RETRY_BUDGET_MAX)
        backoff = 1.0  # each early retry waits twice as long as the one before (RFC 6298 5.5)
        try:
            while True:
                if tries and now >= next_try and self._retry_budget < 1:
                    next_try = end  # no early retry now: the open try runs to its own timeout
                if now >= next_try and sent < MAX_TRIES and now < end and len(tries) < MAX_OPEN_TRIES:
                    up = order[sent % len(order)]
                    if tries:
                        up.retries += 1
                        self._retry_budget -= 1
                    sent += 1
                    up.queries += 1
                    tries[up.start(build, check, p.force_tcp, used)] = (up, now, p.force_tcp, build)
                    next_try = now + min(up.rtt.timeout(p.try_timeout) * backoff, p.try_timeout)
                    backoff *= 2
                if not tries:
                    break
                wake = min(end, *(t[1] + p.try_timeout for t in tries.values()))
                if sent < MAX_TRIES and len(tries) < MAX_OPEN_TRIES:
                    wake = min(wake, next_try)
                done, _ = await asyncio.wait(tries, timeout=max(wake - now, 0.0), return_when=asyncio.FIRST_COMPLETED)
                now = clock()
                for fut in done:
                    up, started, tcp, built = tries.pop(fut)
                    exc = fut.exception()
                    if exc is not None:
                        up.failed()
                        errors.append(str(exc))
                        next_try = now  # that one is over: the next goes out now
                        continue
                    msg, scan = fut.result()
                    if scan.rcode == wire.FORMERR and plain is not None and built is not plain:
                        # RFC 6891 7: FORMERR to an EDNS query may mean no EDNS; ask the same server without it.
                        tries[up.start(plain, check, tcp, used)] = (up, now, tcp, plain)
                        continue
                    if scan.flags & (wire.TC << 8) and not tcp:
                        # Truncated over UDP: the same server over TCP gives the whole answer.
                        tries[up.start(built, check, True, used)] = (up, now, True, built)
                        continue
                    up.succeeded(now - started, scan.rcode)
                    return msg, scan, up
                for fut, (up, started, _tcp, _built) in list(tries.items()):
                    if now >= started + p.try_timeout or now >= end:
                        del tries[fut]
                        fut.cancel()
                        up.failed()
                        errors.append(f"{up.address} did not answer within {min(p.try_timeout, now - started):.2g}s")
                        next_try = min(next_try, now)  # that one is over: the next goes out now
                if now >= end:
                    break
        finally:
            for fut in tries:
                fut.cancel()
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
