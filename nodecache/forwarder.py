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
from collections.abc import Callable
from typing import Any, Final

from nodecache import wire
from nodecache.config import UPSTREAM_UDP_PAYLOAD, ForwardPolicy
from nodecache.errors import UpstreamError
from nodecache.timers import Ticket, Timers
from nodecache.upstream import Build, Check, Try, Upstream

log: Final = logging.getLogger(__name__)

MAX_TRIES: Final = 8  # upper bound on tries per query, whatever the deadline allows
# Tries of one query waiting at once: a silent try stays open while one more goes out. Two, not more:
# a slow but live server (a node resolver recursing) then sees at most twice the queries.
MAX_OPEN_TRIES: Final = 2
# Early retries draw on a budget: each query earns RETRY_BUDGET_RATIO of one, and at most RETRY_BUDGET_MAX
# are saved up. A lost datagram here and there is retried early; when everything is slow (the upstream or
# this agent saturated), early retries stop instead of doubling the load that made them slow.
RETRY_BUDGET_RATIO: Final = 0.1
RETRY_BUDGET_MAX: Final = 20.0


# How an exchange ends: done((reply, its scan, the server that sent it), None) or done(None, the error).
Result = tuple[bytes, wire.ReplyScan, Upstream | None]  # the server that answered; None for LocalAnswers
Done = Callable[[Result | None, BaseException | None], None]


_clock: Final = time.monotonic  # not loop.time(): uvloop's counts whole milliseconds, and round trips here are less


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
        self.timers = Timers()  # the exchanges' wake-ups, on one loop timer

    def order(self) -> list[Upstream]:
        """Servers in the order to try them: by policy, healthy ones first."""
        ups = self.active
        if len(ups) == 1:  # the cluster DNS Service: nothing to choose
            if ups[0].down:
                self.all_down += 1
            return ups
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

    def fetch(self, lname: bytes, qtc: bytes, do: bool, cd: bool, done: Done) -> Exchange | None:
        """Start asking; `done(result, exc)` is called once, later, never from within this call.

        Returns the tries, to cancel them (None where there are none: LocalAnswers).

        Raises UpstreamError at once (Overloaded beyond `max_concurrent`) when no query may go out.
        """
        if not self.active:
            raise UpstreamError("every upstream of this zone forwards back to this agent (loop detected); fix them and restart")
        if self.inflight >= self.policy.max_concurrent:
            self.rejected += 1
            raise Overloaded(f"{self.inflight} queries already in flight (max_concurrent)")
        ask = _Question(lname, qtc, do, cd)
        return Exchange(self, ask.build, ask.check, ask.plain, done)

    async def query(self, lname: bytes, qtc: bytes, do: bool, cd: bool) -> Result:
        """`fetch`, awaited: ask until one server gives a usable reply; raise UpstreamError if none does."""
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()

        def done(result: Result | None, exc: BaseException | None) -> None:
            if fut.done():
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)  # type: ignore[arg-type]

        exchange = self.fetch(lname, qtc, do, cd, done)
        try:
            return await fut
        finally:
            if exchange is not None:
                exchange.cancel()  # no-op once finished

    @property
    def unreachable(self) -> bool:
        """Every server queries may go to is marked down: answer from the cache or fail at once."""
        for u in self.active:
            if not u.down:
                return False
        return bool(self.active)

    def exclude(self, up: Upstream) -> None:
        """Never ask `up` again: it forwards our queries back to us (see Resolver.check_loops).

        It stays in `upstreams`, so stats and metrics still show it.
        """
        if up in self.active:
            self.active.remove(up)

    def close(self) -> None:
        for up in self.upstreams:
            up.close()
        self.timers.close()


class _Question:
    """What one exchange asks and how it checks a reply: one object a miss, where three closures
    and their cells were a dozen (Exchange holds its bound methods)."""

    __slots__ = ("lname", "qtc", "question", "do", "cd")

    def __init__(self, lname: bytes, qtc: bytes, do: bool, cd: bool) -> None:
        self.lname = lname
        self.qtc = qtc
        self.question = lname + qtc
        self.do = do
        self.cd = cd

    def build(self, qid: int) -> bytes:
        return wire.make_query(qid, self.question, self.do, self.cd, UPSTREAM_UDP_PAYLOAD)

    def plain(self, qid: int) -> bytes:
        """The query without EDNS (RFC 6891 7)."""
        return wire.make_query(qid, self.question, self.do, self.cd, UPSTREAM_UDP_PAYLOAD, edns=False)

    def check(self, msg: bytes) -> wire.ReplyScan:
        return wire.scan_reply(msg, self.lname, self.qtc)


class Exchange:
    """One query's tries at a zone's upstreams, driven by callbacks: no Task, no Future, no asyncio.wait.

    A try (upstream.Try) reports its reply or failure to `answered`/`failed`,
    called directly by the transport that read it. One deadline on the
    forwarder's Timers (moved as things change) wakes it for the next early
    retry, a try's timeout, or the overall deadline. See the module notes for
    the policy: at most MAX_OPEN_TRIES open at once, early retries on a budget,
    each waiting twice as long as the one before.
    """

    __slots__ = ("fw", "build", "check", "plain", "done", "order", "tries", "used", "errors", "sent", "next_try",
                 "end", "backoff", "timer", "finished")  # fmt: skip

    def __init__(self, fw: Forwarder, build: Build, check: Check, plain: Build | None, done: Done) -> None:
        self.fw = fw
        self.build = build
        self.check = check
        self.plain = plain  # builds the query without EDNS, for a server that answers FORMERR to ours (RFC 6891 7)
        self.done = done
        now = _clock()
        self.end = now + fw.policy.timeout
        self.order = fw.order()
        self.tries: list[Try] = []  # open ones, oldest first
        self.used: set[Any] = set()  # TCP connections this query went out on: a retry takes another one
        self.errors: list[str] = []
        self.sent = 0
        self.next_try = now
        self.backoff = 1.0  # each early retry waits twice as long as the one before (RFC 6298 5.5)
        self.timer: Ticket | None = None  # on the forwarder's Timers: the next retry, try timeout or deadline
        self.finished = False
        fw.inflight += 1
        fw._retry_budget = min(fw._retry_budget + RETRY_BUDGET_RATIO, RETRY_BUDGET_MAX)
        self._first(now)

    def _first(self, now: float) -> None:
        """`_advance` for the first try, which always goes out: one deadline, its retransmission timer."""
        p = self.fw.policy
        up = self.order[0]
        self.sent = 1
        up.queries += 1
        self._send(up, self.build, p.force_tcp, now)
        self.next_try = now + min(up.rtt.timeout(p.try_timeout), p.try_timeout)
        self.backoff = 2.0
        self.timer = self.fw.timers.at(self.next_try if self.next_try < self.end else self.end, Exchange._woken, self)

    def _send(self, up: Upstream, build: Build, tcp: bool, now: float) -> None:
        t = Try(self, up, build, self.check, tcp, now)
        self.tries.append(t)
        err = up.send(t, self.used)
        if err is not None:
            t.fail_soon(err)  # as any failure: `failed`, on the next pass, moves on

    def _advance(self, now: float) -> None:
        """Send the next try if one is due, then sleep until the next thing that can happen."""
        fw, p, tries = self.fw, self.fw.policy, self.tries
        if tries and now >= self.next_try and fw._retry_budget < 1:
            self.next_try = self.end  # no early retry now: the open try runs to its own timeout
        if now >= self.next_try and self.sent < MAX_TRIES and now < self.end and len(tries) < MAX_OPEN_TRIES:
            up = self.order[self.sent % len(self.order)]
            if tries:
                up.retries += 1
                fw._retry_budget -= 1
            self.sent += 1
            up.queries += 1
            self._send(up, self.build, p.force_tcp, now)
            self.next_try = now + min(up.rtt.timeout(p.try_timeout) * self.backoff, p.try_timeout)
            self.backoff *= 2
        if not tries:
            return self._fail()
        wake = tries[0].started + p.try_timeout  # the oldest open try times out first
        if self.end < wake:
            wake = self.end
        if self.sent < MAX_TRIES and len(tries) < MAX_OPEN_TRIES and self.next_try < wake:
            wake = self.next_try
        timers = fw.timers
        if self.timer is not None:
            timers.cancel(self.timer)
        self.timer = timers.at(wake, Exchange._woken, self)

    def _woken(self) -> None:
        """A timer: give up on tries past their timeout (or the deadline), then go on."""
        self.timer = None
        if self.finished:
            return
        now = _clock()
        p = self.fw.policy
        for t in list(self.tries):
            if now >= t.started + p.try_timeout or now >= self.end:
                self.tries.remove(t)
                t.cancel()
                t.up.failed()
                self.errors.append(f"{t.up.address} did not answer within {min(p.try_timeout, now - t.started):.2g}s")
                self.next_try = min(self.next_try, now)  # that one is over: the next goes out now
        if now >= self.end:
            return self._fail()
        self._advance(now)

    def failed(self, t: Try, exc: UpstreamError) -> None:
        """A try failed (upstream.Owner); a try we gave up on ourselves reports nothing."""
        if self.finished:
            return
        self.tries.remove(t)
        now = _clock()
        t.up.failed()
        self.errors.append(str(exc))
        self.next_try = now  # that one is over: the next goes out now
        self._advance(now)

    def answered(self, t: Try, msg: bytes, scan: wire.ReplyScan) -> None:
        """A try's checked reply (upstream.Owner): the answer, or a reason to ask again."""
        if self.finished:
            return
        self.tries.remove(t)
        up = t.up
        now = _clock()
        if scan.rcode == wire.FORMERR and self.plain is not None and t.build is not self.plain:
            # RFC 6891 7: FORMERR to an EDNS query may mean no EDNS; ask the same server without it.
            self._send(up, self.plain, t.tcp, now)
            return self._advance(now)
        if scan.flags & (wire.TC << 8) and not t.tcp:
            # Truncated over UDP: the same server over TCP gives the whole answer.
            self._send(up, t.build, True, now)
            return self._advance(now)
        up.succeeded(now - t.started, scan.rcode)
        self._finish((msg, scan, up), None)

    def _fail(self) -> None:
        self._finish(None, UpstreamError("; ".join(dict.fromkeys(self.errors)) or "no time left to ask an upstream"))

    def _finish(self, result: Result | None, exc: BaseException | None) -> None:
        self.cancel()
        self.done(result, exc)

    def cancel(self) -> None:
        """Stop: give up the open tries and the timer; `done` is not called (unless `_finish` does)."""
        if self.finished:
            return
        self.finished = True
        self.fw.inflight -= 1
        if self.timer is not None:
            self.fw.timers.cancel(self.timer)
            self.timer = None
        tries, self.tries = self.tries, []
        for t in tries:
            t.cancel()
