"""The query pipeline: zone match, cache, coalescing, forwarding, fallbacks.

`answer` is the hot path and runs inside the listener's receive callback:
it scans the bytes, finds the zone (memoised by name), looks the key up and
replays the cached reply. Only a miss leaves it, through `resolve`, which is
a coroutine. Everything `answer` touches is a dict, a slice or an int.

Counting: a hit adds one to its entry's shared tally (see cache.py), which
already carries zone, kind, rcode and qtype, indexed by how the query came
(`via`: UDP/TCP, IPv4/IPv6). Everything else (misses by type, responses by
rcode, durations) is counted on the miss path, where it is lost in the noise
of an upstream round trip. metrics.py and stats.py read these at scrape time.

The agent's own zone, `nodecache.invalid.` (RFC 6761: never a real name),
answers from memory and never goes upstream; readiness probes ask it through
the real listeners (see health.py), so a probe needs no upstream at all.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from nodecache import prefetch, wire
from nodecache.cache import PURGE_STEP, Entry, Kind, MemoryBudget, ReplyMemo, ZoneCache
from nodecache.config import DEFAULT_MAX_PREFETCHING, STALE_REPLY_TTL, UPSTREAM_UDP_PAYLOAD, CachePolicy, Config, Zone
from nodecache.counters import Activity, Histogram, counted_rcode, counted_type
from nodecache.errors import UpstreamError
from nodecache.forwarder import Done, Exchange, Forwarder, Overloaded, Result
from nodecache.logs import QueryLog, Throttle
from nodecache.names import at_or_below, name_to_wire
from nodecache.timers import Ticket, Timers
from nodecache.upstream import Upstream

log: Final = logging.getLogger(__name__)

TCP_LIMIT: Final = 65535
# Names remembered for zone matching before a reset. Not in the cache budget, so kept small:
# at 100,000 it held 7.8 MiB with 80,000 distinct names, at 16,384 about 1.6 MiB once every
# cache is full. Repeated hits are answered by the reply memo before it is asked, so it mostly
# serves a name's first hits and its misses, and a name it forgot costs one dict lookup per label.
ZONE_MEMO_LIMIT: Final = 4_096
WARN_INTERVAL: Final = 5.0  # an upstream outage logs once per zone per interval, not per query

# The agent's own zone (RFC 6761 reserves .invalid): answered from memory.
LOCAL_ZONE: Final = "nodecache.invalid."
PROBE_NAME: Final = "ready.nodecache.invalid."
PROBE_TYPE: Final = 16  # TXT
PROBE_TEXT: Final = b"ready"
LOCAL_TTL: Final = 86400  # the probe's answer stays cached; refetched from memory if flushed or expired
_LOCAL_POLICY: Final = CachePolicy(success_capacity=4, success_max_ttl=LOCAL_TTL, denial_capacity=0)

# Loop detection (Corefile `loop`): a probe for RANDOM.nodecache-loop-check.ZONE goes to
# each upstream; if it reaches our own listener, that upstream forwards to us.
LOOP_LABEL: Final = "nodecache-loop-check"
_LOOP_WIRE: Final = bytes((len(LOOP_LABEL),)) + LOOP_LABEL.encode()
LOOP_PROBE_TYPE: Final = 13  # HINFO, as CoreDNS's loop plugin asks
LOOP_PROBE_TIMEOUT: Final = 2.0

# Types a miss may wait on, in flight for its name, to be answered from their NXDOMAIN (RFC 8020):
# getaddrinfo asks A and AAAA at the same moment. As they sit in cache keys (see wire.scan_query).
SIBLING_TYPES: Final = (struct.pack("!H", 1), struct.pack("!H", 28))
_SIBLING_OF: Final = {SIBLING_TYPES[0]: SIBLING_TYPES[1], SIBLING_TYPES[1]: SIBLING_TYPES[0]}

DEADLINE_SLACK: Final = 0.002  # waiters due within this of a deadline timer are answered with it
DRAIN_POLL: Final = 0.01  # seconds between checks while shutdown waits for the last answers

# How a listener gets a miss's answer: deliver(token, reply, outcome).
Deliver = Callable[[Any, bytes, str], None]
# A client waiting on a miss: (query bytes, Query, via, deadline on the resolver's clock,
# deliver, token, perf_counter at arrival). A plain tuple: thousands may wait at once.
Waiter = tuple[bytes, wire.Query, int, float, Deliver, Any, float]


@dataclass(eq=False)
class ZoneStats:
    """Per-zone counters of the miss path (hits live on the cache's tallies).

    Plain ints and small dicts; `requests` and `responses` have the keys the
    metrics need: (qtype << 2 | via) and (rcode, plugin that answered).
    """

    misses: int = 0
    coalesced: int = 0
    stale: int = 0
    servfail: int = 0
    overloaded: int = 0  # client queries answered REFUSED because max_concurrent was reached
    deadline: int = 0  # client queries answered (stale or SERVFAIL) at the answer deadline
    fast_failed: int = 0  # misses answered at once because every upstream was marked down
    waiters_refused: int = 0  # SERVFAIL at once: too many clients already waiting (--max-waiting*)
    nxdomain_cut: int = 0  # misses answered from a cached NXDOMAIN of the name or a parent (RFC 8020)
    sibling_waits: int = 0  # misses held behind an in-flight query for another type of their name
    nxdomain_waited: int = 0  # clients of those answered from its NXDOMAIN, with no query of their own
    prefetches: int = 0  # refreshes started before expiry (prefetch.py)
    prefetches_refused: int = 0  # prefetches not started: DEFAULT_MAX_PREFETCHING already in flight
    rcodes: dict[int, int] = field(default_factory=dict)  # upstream replies by rcode
    requests: dict[int, int] = field(default_factory=dict)
    responses: dict[tuple[int, str], int] = field(default_factory=dict)
    duration: Histogram = field(default_factory=Histogram)  # misses, measured
    hit_seconds: float = 0.0  # hits' estimated time, added once a second (see Resolver.tick)
    hits_accounted: int = 0


class Flight:
    """One upstream query in flight for a cache key, and the clients waiting on it."""

    __slots__ = ("zone", "key", "waiters", "timer", "exchange", "prefetch")

    def __init__(self, zone: ZoneRuntime, q: wire.Query) -> None:
        self.zone = zone
        self.key = q.key
        # A list, not a deque: most flights have one waiter, and an empty deque alone is ten times a
        # one-item list; only the rare deadline path takes waiters off the front.
        self.waiters: list[Waiter] = []
        self.timer: Ticket | None = None  # the answer deadline of the oldest waiter (Resolver.deadlines)
        self.exchange: Exchange | None = None  # the forwarder's tries; None until started, or for LocalAnswers
        self.prefetch = False  # started by a prefetch (Resolver._prefetch), not by a client


class ZoneRuntime:
    """A configured zone with its live cache and upstream group."""

    def __init__(self, zone: Zone, clock: Callable[[], float]) -> None:
        self.zone = zone
        self.name = zone.name
        self.wire = name_to_wire(zone.name)  # lowercased apex, for the NXDOMAIN cut
        self.forward_tcp = zone.forward.force_tcp
        self.cache = ZoneCache(zone.cache, clock)
        self.forwarder = Forwarder(zone.forward)
        self.stats = ZoneStats()
        self.throttle = Throttle(WARN_INTERVAL)

    @property
    def hits(self) -> int:
        return self.cache.hits

    def warn_failure(self, exc: Exception, now: float) -> None:
        """Log an upstream failure, at most once per WARN_INTERVAL."""
        self.throttle.warning(log, "upstream", now, "zone %s: no upstream answered: %s", self.name, exc)


class LocalAnswers(Forwarder):
    """Stands in for the upstreams of the agent's own zone: answers from memory.

    TXT for PROBE_NAME says "ready"; other types of it are NODATA; other
    names under the zone are NXDOMAIN. Neither negative answer carries an
    SOA, so only the probe's answer is ever cached.

    A Forwarder subclass rather than a look-alike, so a zone's forwarder has one
    type: the compiled resolver (docs/performance.md, "Compiled modules") checks it.
    It has no servers, so Forwarder's other state (policy, timers) is never set or read.
    """

    def __init__(self) -> None:  # no super().__init__: that needs a ForwardPolicy, which needs servers
        self.upstreams = []
        self.active = []
        self.inflight = 0
        self.rejected = 0
        self.all_down = 0

    def fetch(self, lname: bytes, qtc: bytes, do: bool, cd: bool, done: Done) -> None:
        """As Forwarder.fetch: `done` is called later, with the answer made here; there are no tries to cancel."""
        msg = self.reply(lname, qtc)
        asyncio.get_running_loop().call_soon(done, (msg, wire.scan_reply(msg, lname, qtc), None), None)

    @staticmethod
    def reply(lname: bytes, qtc: bytes) -> bytes:
        probe = lname == name_to_wire(PROBE_NAME)
        answer = probe and qtc == struct.pack("!HH", PROBE_TYPE, 1)
        rcode = wire.NOERROR if probe else wire.NXDOMAIN
        head = struct.pack("!HBBHHHH", 0, wire.QR | wire.AA | wire.RD, wire.RA | rcode, 1, 1 if answer else 0, 0, 0)
        rr = b""
        if answer:  # the name by pointer to the question (offset 12), TXT IN, TTL, one string
            rr = struct.pack("!HHHIHB", 0xC00C, PROBE_TYPE, 1, LOCAL_TTL, len(PROBE_TEXT) + 1, len(PROBE_TEXT))
            rr += PROBE_TEXT
        return head + lname + qtc + rr

    def close(self) -> None:
        pass


class LocalZone(ZoneRuntime):
    """The agent's own zone: a cache like any zone's, LocalAnswers for upstreams."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.zone = None  # type: ignore[assignment]  # not configured: no Zone, no upstreams
        self.name = LOCAL_ZONE
        self.cache = ZoneCache(_LOCAL_POLICY, clock)
        self.forwarder = LocalAnswers()
        self.stats = ZoneStats()
        self.throttle = Throttle(WARN_INTERVAL)
        qtc = struct.pack("!HH", PROBE_TYPE, 1)
        key = name_to_wire(PROBE_NAME) + qtc + b"\x00"
        msg = LocalAnswers.reply(name_to_wire(PROBE_NAME), qtc)
        self.cache.store(key, wire.scan_reply(msg, name_to_wire(PROBE_NAME), qtc), False, wire.MIN_UDP_PAYLOAD)


class LoopCheck:
    """Forwarding-loop detection (Corefile `loop`), as CoreDNS's loop plugin does it.

    A probe with a random name under LOOP_LABEL goes to each upstream of the
    checked zones; if one comes back to this agent, that upstream forwards to
    us, and the zones using it stop asking it. Resolver.answer hands such a
    probe to `came_back`, testing `probes` first (empty: nothing to look for).
    """

    def __init__(self, zones: Callable[[], list[ZoneRuntime]]) -> None:
        self.zones = zones  # the resolver's zones as of now (a reload swaps them)
        self.probes: dict[bytes, tuple[ZoneRuntime, Upstream]] = {}  # probe name -> who was asked
        self.loops: list[str] = []  # "zone upstream" pairs found looping

    def came_back(self, q: wire.Query) -> wire.Query | None:
        """Our own loop probe came back: the upstream it went to forwards to us. Stop using it.

        The probe is dropped, so the loop ends here. A probe of another agent passing
        through is an ordinary query.
        """
        probe = self.probes.pop(q.lname, None)
        if probe is None:
            return q
        zone, up = probe
        # Sub-zones split off the same server block (a `cache ... ZONE` or `disable` below it)
        # have the same upstreams in a Forwarder of their own: they loop too.
        for z in self.zones():
            if z is zone or (z.zone.forward == zone.zone.forward and at_or_below(z.zone.wire, zone.zone.wire)):
                for other in z.forwarder.upstreams:
                    if other.address == up.address:
                        z.forwarder.exclude(other)
        self.loops.append(f"{zone.name} {up.address}")
        log.error(
            "zone %s: upstream %s sends queries back to this agent (a forwarding loop, e.g. the node's resolv.conf "
            "naming this agent); no longer forwarding to it. Point the zone at the real resolvers and restart",
            zone.name, up.address,
        )  # fmt: skip
        return None

    async def run(self, zone_names: Sequence[str]) -> None:
        """Send one probe per upstream of each named zone, all at once; loops are caught in `came_back`.

        Only the probe that comes back to us counts: an upstream's answer, error or silence says nothing.
        """
        probes = []
        sent: list[bytes] = []
        for zone in self.zones():
            if zone.name not in zone_names:
                continue
            for up in list(zone.forwarder.upstreams):
                name = f"{os.urandom(8).hex()}.{LOOP_LABEL}.{'' if zone.name == '.' else zone.name}"
                lname = name_to_wire(name.rstrip(".") + ".")
                self.probes[lname] = (zone, up)
                sent.append(lname)
                probes.append(self._probe(zone, up, lname))
        try:
            if probes:
                await asyncio.gather(*probes)
        finally:
            for lname in sent:
                self.probes.pop(lname, None)

    async def _probe(self, zone: ZoneRuntime, up: Upstream, lname: bytes) -> None:
        qtc = struct.pack("!HH", LOOP_PROBE_TYPE, 1)

        def build(qid: int) -> bytes:
            return wire.make_query(qid, lname + qtc, False, False, UPSTREAM_UDP_PAYLOAD)

        try:
            await up.query(build, lambda msg: wire.scan_reply(msg, lname, qtc), zone.forward_tcp, LOOP_PROBE_TIMEOUT)
        except UpstreamError:
            pass  # silence or an error is not a loop; only our probe arriving back is


class Resolver:
    """Answers queries from the cache, or from the zone's upstreams on a miss."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.zones = [ZoneRuntime(z, clock) for z in config.zones]
        self.local = LocalZone(clock)
        self.budget = MemoryBudget(config.cache_memory)  # --cache-memory, over the configured zones' caches
        self.budget.attach([z.cache for z in self.zones])
        self._by_wire = {z.zone.wire: z for z in self.zones}
        self._by_wire[name_to_wire(LOCAL_ZONE)] = self.local
        self._longest = max(map(len, self._by_wire))  # the longest zone name, in wire bytes (see zone_for)
        self._memo: dict[bytes, ZoneRuntime | None] = {}
        self._inflight: dict[bytes, Flight] = {}
        self.deadlines = Timers()  # the flights' answer deadlines, on one loop timer
        self._held: dict[Flight, list[tuple[Flight, wire.Query]]] = {}  # in flight -> flights waiting on it
        self.waiting = 0  # clients waiting on misses, all keys
        self._deadline = config.answer_deadline
        self._max_waiting = config.max_waiting
        self._max_per_name = config.max_waiting_per_name
        self.malformed = 0
        self.dropped = 0
        self.refused = 0  # names outside every zone (or whose zone a reload removed)
        self.transfers = 0  # AXFR/IXFR queries refused: a cache has no zone to transfer
        self._udp_cap = config.max_udp_payload
        self.activity = Activity(time.monotonic)  # sampled top-N, query rate; listeners feed it
        self.query_log: QueryLog | None = None  # set by the server when --query-log is on
        self.loop_check = LoopCheck(lambda: self.zones)
        self._loop_probes = self.loop_check.probes  # the same dict: `answer` tests it without a hop
        self.loops = self.loop_check.loops  # "zone upstream" pairs found looping
        self.prefetching = 0  # prefetches in flight, all zones
        self.replies = ReplyMemo()  # recent hits' replies by query bytes (cache.ReplyMemo)
        self._replies = self.replies.by_via  # what `answer` reads first
        self._arm_prefetch([*self.zones, self.local])

    def reconfigure(self, config: Config) -> list[ZoneRuntime]:
        """Swap in a new Config's zones; return the ZoneRuntimes no longer used.

        A zone whose Zone (name, upstreams, forward and cache policy) is unchanged
        keeps its ZoneRuntime, so its cache entries, counters and upstream health
        survive. It runs synchronously on the event loop, between two callbacks, so
        every query sees either the old zones or the new ones. Misses already in
        flight finish on the zone they started in; the caller closes the returned
        zones' upstreams only once those have had time to finish.
        """
        old = {z.zone: z for z in self.zones}
        zones = [old.pop(z) if z in old else ZoneRuntime(z, self.clock) for z in config.zones]
        by_wire = {z.zone.wire: z for z in zones}
        by_wire[name_to_wire(LOCAL_ZONE)] = self.local
        self.config = config
        self.zones = zones
        self.budget.attach([z.cache for z in zones], config.cache_memory)
        self._by_wire = by_wire
        self._longest = max(map(len, by_wire))
        self._memo = {}
        self.replies.invalidate()  # removed zones' entries, a new --max-udp-payload
        self._udp_cap = config.max_udp_payload
        self._deadline = config.answer_deadline
        self._max_waiting = config.max_waiting
        self._max_per_name = config.max_waiting_per_name
        self._arm_prefetch(zones)
        return list(old.values())

    def zone_for(self, lname: bytes) -> ZoneRuntime | None:
        """The zone with the longest suffix of `lname` (a lowercased wire name)."""
        zone = self._memo.get(lname, self)
        if zone is not self:
            return zone  # type: ignore[return-value]
        found = None
        by_wire = self._by_wire
        i, end = 0, len(lname)
        while end - i > self._longest:  # labels no zone is that long from: skipped without a lookup
            i += lname[i] + 1
        while i < end:
            found = by_wire.get(lname[i:])
            if found is not None or lname[i] == 0:
                break
            i += lname[i] + 1
        if len(self._memo) >= ZONE_MEMO_LIMIT:
            self._memo.clear()
        self._memo[lname] = found
        return found

    def answer(self, data: bytes, via: int) -> bytes | wire.Query | None:
        """The reply for a cache hit or an error; a Query to resolve; None to drop.

        `via` says how the query came: bit 0 for TCP, bit 1 for IPv6 (cache.VIA_*).
        Query bytes answered from the cache this second are replayed (cache.ReplyMemo).
        """
        replay = self._replies[via].get(data[2:])
        if replay is not None and self.clock() < replay[1]:  # the same query bytes as a recent hit: its reply
            replay[2][via] += 1
            return data[:2] + replay[0]
        try:
            q = wire.scan_query(data)
        except wire.Malformed as exc:
            return self._malformed(data, exc, via)
        zone = self._memo.get(q.lname)
        if zone is None:
            zone = self.zone_for(q.lname)
            if zone is None:
                self.refused += 1
                return wire.error_reply(data, wire.REFUSED, q.qend, q.edns, q.do, self._udp_cap)
        entry = zone.cache.get(q.key)
        if entry is not None:
            now = self.clock()
            if now < entry.expires:
                entry.tally[via] += 1
                limit = TCP_LIMIT if via & 1 else (q.payload if q.payload < self._udp_cap else self._udp_cap)
                reply = entry.reply(data, q.qend, q.edns, limit, now)
                if zone.cache.memo is not None:
                    zone.cache.memo.keep(via, data, reply, entry.replay_until(), entry.tally)
                return reply
        if self._loop_probes and _LOOP_WIRE in q.lname:  # only while probes are out: one truthiness test
            return self.loop_check.came_back(q)
        return q

    async def check_loops(self, zone_names: Sequence[str]) -> None:
        """Probe the named zones' upstreams for forwarding loops; see LoopCheck."""
        await self.loop_check.run(zone_names)

    def _malformed(self, data: bytes, exc: wire.Malformed, via: int) -> bytes | None:
        """Count a bad packet; FORMERR/NOTIMP/BADVERS when its header is readable.

        AXFR/IXFR are refused apart (never forwarded, never cached): NOTIMP over
        UDP, where no transfer can run, REFUSED over TCP.
        """
        if exc.rcode is None:
            self.dropped += 1
            return None
        if isinstance(exc, wire.ZoneTransfer):
            self.transfers += 1
            rcode = wire.REFUSED if via & 1 else wire.NOTIMP
            return wire.error_reply(data, rcode, exc.qend, exc.edns, exc.do, self._udp_cap)
        self.malformed += 1
        return wire.error_reply(data, exc.rcode, exc.qend, 0, False, self._udp_cap)

    def submit(self, data: bytes, q: wire.Query, via: int, deliver: Deliver, token: Any) -> None:
        """Answer a miss, later: `deliver(token, reply, outcome)` is called exactly once.

        One upstream query per key however many clients wait (coalescing). No
        Task per client: a waiter is one small tuple on its key's flight, and
        one timer per flight answers waiters whose deadline passed with a stale
        answer or SERVFAIL while the refresh goes on. `outcome` (miss, stale,
        refused) is for the query log.
        """
        started = time.perf_counter()
        zone = self._memo.get(q.lname) or self.zone_for(q.lname)  # `answer` memoised it, unless a reload reset the memo
        if zone is None:  # a reload removed its zone after `answer` saw it
            self.refused += 1
            deliver(token, wire.error_reply(data, wire.REFUSED, q.qend, q.edns, q.do, self._udp_cap), "refused")
            return
        stats = zone.stats
        if self._nxdomain_cut(zone, data, q, via, deliver, token):
            return
        stats.misses += 1
        kind = counted_type(q.key[-5] << 8 | q.key[-4]) << 2 | via  # bounded keys: see counters.COUNTED_TYPES
        stats.requests[kind] = stats.requests.get(kind, 0) + 1
        if zone.forwarder.unreachable:
            # Every upstream is marked down and being probed: waiting would only burn the client's time.
            stats.fast_failed += 1
            zone.forwarder.all_down += 1
            return self._fall_back(zone, (data, q, via, 0.0, deliver, token, started))
        flight = self._inflight.get(q.key)
        if flight is None:
            stale = zone.cache.policy.stale_mode == "immediate" and self._stale(zone, q.key)
            if not stale and self.waiting >= self._max_waiting:  # full: not even an upstream query for it
                return self._over_cap(zone, (data, q, via, 0.0, deliver, token, started))
            flight = Flight(zone, q)
            self._inflight[q.key] = flight
            if stale:  # serve_stale immediate: answer now, the refresh goes on alone
                self._fall_back(zone, (data, q, via, 0.0, deliver, token, started))
                return self._fetch(flight, q)
            flight.waiters.append((data, q, via, self.clock() + self._deadline, deliver, token, started))
            self.waiting += 1
            flight.timer = self.deadlines.at(time.monotonic() + self._deadline, self._deadline_passed, flight)
            if not self._hold_for_sibling(zone, flight, q):
                self._fetch(flight, q)  # may answer that waiter at once (no upstream may be asked)
            return
        stats.coalesced += 1
        if self.waiting >= self._max_waiting or len(flight.waiters) >= self._max_per_name:
            return self._over_cap(zone, (data, q, via, 0.0, deliver, token, started))
        flight.waiters.append((data, q, via, self.clock() + self._deadline, deliver, token, started))
        self.waiting += 1
        if flight.timer is None:
            flight.timer = self.deadlines.at(time.monotonic() + self._deadline, self._deadline_passed, flight)

    def _hold_for_sibling(self, zone: ZoneRuntime, flight: Flight, q: wire.Query) -> bool:
        """Hold a new flight behind an in-flight A or AAAA query for the same name; True if held.

        getaddrinfo sends A and AAAA at the same moment, so the second arrives
        while the first is still upstream and the NXDOMAIN cut cannot answer it
        yet. Held, it is answered from the first one's NXDOMAIN (RFC 8020), or
        sends its own query once that answer turns out not to be NXDOMAIN
        (`_release_held`). Same zone and same key tail (class, DO and CD).
        Its clients wait as any miss does (deadline, waiting caps). Not held
        when the cache says the name had a non-NXDOMAIN answer lately: then
        waiting would only add a round trip.
        """
        key = q.key
        other = _SIBLING_OF.get(key[-5:-3])
        if other is None:
            return False
        sibling = self._inflight.get(key[:-5] + other + key[-3:])
        if sibling is None or sibling.exchange is None or sibling.zone is not zone:
            return False
        for known in (zone.cache.get(key), zone.cache.get(sibling.key)):
            if known is not None and known.kind is not Kind.SERVFAIL and known.rcode != wire.NXDOMAIN:
                return False
        self._held.setdefault(sibling, []).append((flight, q))
        zone.stats.sibling_waits += 1
        return True

    def _release_held(self, flight: Flight, entry: Entry | None, exc: BaseException | None) -> None:
        """`flight` landed: flights held behind it are answered from its NXDOMAIN, or send their own queries."""
        held = self._held.pop(flight, None)
        if held is None:
            return
        cancelled = isinstance(exc, asyncio.CancelledError)
        nxdomain = entry is not None and entry.rcode == wire.NXDOMAIN
        for waiting, q in held:
            zone = waiting.zone
            entry = zone.cache.nxdomain_above(q.key, len(zone.wire)) if nxdomain else None
            if entry is None and not cancelled:
                self._fetch(waiting, q)
            else:
                self._answer_held(waiting, entry)

    def _answer_held(self, flight: Flight, entry: Entry | None) -> None:
        """End a held flight without a query of its own: its clients get `entry` (an NXDOMAIN), or
        SERVFAIL when the flight it waited on was cancelled (shutting down)."""
        zone = flight.zone
        if self._inflight.get(flight.key) is flight:
            del self._inflight[flight.key]
        if flight.timer is not None:
            self.deadlines.cancel(flight.timer)
        waiters, flight.waiters = flight.waiters, []
        self.waiting -= len(waiters)
        now = self.clock()
        for w in waiters:
            data, q, via = w[0], w[1], w[2]
            if entry is None:
                self._finish(zone, w, _servfail(data, q, self._udp_cap), "miss", "")
                continue
            zone.stats.nxdomain_waited += 1
            limit = TCP_LIMIT if via & 1 else min(q.payload, self._udp_cap)
            self._finish(zone, w, entry.reply(data, q.qend, q.edns, limit, now), "miss", "forward")

    def _nxdomain_cut(self, zone: ZoneRuntime, data: bytes, q: wire.Query, via: int, deliver: Deliver, token: Any) -> bool:
        """Answer from a cached NXDOMAIN of this name or one above it (RFC 8020); True if answered.

        Counted as a hit of that entry (coredns_cache_hits_total) and in the
        zone's `nxdomain_cut`. The entry's body does not depend on the
        question, so it renders for this client's question as is.
        """
        entry = zone.cache.nxdomain_above(q.key, len(zone.wire))
        if entry is None:
            return False
        zone.stats.nxdomain_cut += 1
        entry.tally[via] += 1
        limit = TCP_LIMIT if via & 1 else min(q.payload, self._udp_cap)
        deliver(token, entry.reply(data, q.qend, q.edns, limit, self.clock()), "hit")
        return True

    def _arm_prefetch(self, zones: list[ZoneRuntime]) -> None:
        """Give the zones with prefetch on their prefetching cache lookup (see prefetch.py); others are untouched."""
        for zone in zones:
            prefetch.arm(zone.cache, functools.partial(self._prefetch, zone))
            # A replayed hit skips the cache's `get`, so a prefetching zone's hits must not be replayed.
            zone.cache.watch(None if prefetch.armed(zone.cache) else self.replies)

    def _prefetch(self, zone: ZoneRuntime, key: bytes, entry: Entry) -> None:
        """Refresh `key` in the background, as a miss with nobody waiting (called from a hit, see prefetch.py).

        A key already being asked is left to that flight (the refresh coalesces with it). At most
        DEFAULT_MAX_PREFETCHING run at once; one more is refused and counted. The answer replaces the
        entry when it lands (`_fetch` stores it); a failure leaves the entry, and serve-stale, as they were.
        """
        if key in self._inflight:
            return
        if self.prefetching >= DEFAULT_MAX_PREFETCHING:
            zone.stats.prefetches_refused += 1
            return
        zone.stats.prefetches += 1
        self.prefetching += 1
        q = wire.Query(key, key[:-5], 0, 0, 0, bool(key[-1] & wire.KEY_DO))
        flight = Flight(zone, q)
        flight.prefetch = True  # `_landed` counts it out; clients that join it meanwhile get its answer
        self._inflight[key] = flight
        self._fetch(flight, q)

    def _stale(self, zone: ZoneRuntime, key: bytes) -> Entry | None:
        """The entry for `key` if it may be served stale now (expired, within its stale window)."""
        entry = zone.cache.get(key)
        if entry is not None and entry.kind is not None and entry.kind is not Kind.SERVFAIL:
            if entry.expires <= self.clock() < entry.stale_until:
                return entry
        return None

    def _over_cap(self, zone: ZoneRuntime, w: Waiter) -> None:
        """Too many clients wait already (--max-waiting, --max-waiting-per-name): SERVFAIL now, counted."""
        zone.stats.waiters_refused += 1
        self._finish(zone, w, _servfail(w[0], w[1], self._udp_cap), "miss", "")

    def _finish(self, zone: ZoneRuntime, w: Waiter, reply: bytes, outcome: str, plugin: str) -> None:
        """Count one answered miss and hand it to its listener."""
        stats = zone.stats
        answered = (reply[3] & 0x0F, plugin)
        stats.responses[answered] = stats.responses.get(answered, 0) + 1
        stats.duration.observe(time.perf_counter() - w[6])
        w[4](w[5], reply, outcome)

    def _fall_back(self, zone: ZoneRuntime, w: Waiter) -> None:
        """No fresh answer in time: the stale one (RFC 8767) if there is one, else SERVFAIL."""
        data, q, via = w[0], w[1], w[2]
        stale = self._stale(zone, q.key)
        if stale is not None:
            zone.stats.stale += 1
            limit = TCP_LIMIT if via & 1 else min(q.payload, self._udp_cap)
            self._finish(zone, w, stale.stale_reply(data, q.qend, q.edns, limit, STALE_REPLY_TTL), "stale", "cache")
            return
        zone.stats.servfail += 1
        self._finish(zone, w, _servfail(data, q, self._udp_cap), "miss", "")

    def _deadline_passed(self, flight: Flight) -> None:
        """The oldest waiters reached the answer deadline: answer them from what we have."""
        flight.timer = None
        now = self.clock()
        waiters = flight.waiters
        due = 0
        while due < len(waiters) and waiters[due][3] <= now + DEADLINE_SLACK:
            due += 1
        passed = waiters[:due]
        del waiters[:due]
        for w in passed:
            self.waiting -= 1
            flight.zone.stats.deadline += 1
            self._fall_back(flight.zone, w)
        if waiters:
            delay = max(waiters[0][3] - now, 0.0)
            flight.timer = self.deadlines.at(time.monotonic() + delay, self._deadline_passed, flight)

    def _fetch(self, flight: Flight, q: wire.Query) -> None:
        """Ask the zone's upstreams for `flight`'s key: no Task, the forwarder calls `_fetched` back."""
        zone = flight.zone
        qtc = q.key[len(q.lname) : len(q.lname) + 4]
        done = functools.partial(self._fetched, flight, q.do)
        try:
            flight.exchange = zone.forwarder.fetch(q.lname, qtc, q.do, bool(q.key[-1] & wire.KEY_CD), done)
        except UpstreamError as exc:  # nothing went out (max_concurrent, every upstream excluded)
            done(None, exc)

    def _fetched(self, flight: Flight, do: bool, result: Result | None, exc: BaseException | None) -> None:
        """The forwarder's answer (or failure) for `flight`: store what is cacheable, then answer the waiters."""
        zone = flight.zone
        if result is None:
            if isinstance(exc, UpstreamError) and not isinstance(exc, Overloaded):
                zone.warn_failure(exc, self.clock())
            return self._landed(flight, None, exc)
        try:
            scan = result[1]
            rcode = counted_rcode(scan.rcode)
            zone.stats.rcodes[rcode] = zone.stats.rcodes.get(rcode, 0) + 1
            entry = zone.cache.store(flight.key, scan, do, self._udp_cap)
        except Exception as err:  # a bug, not the upstream's fault: the waiters still get an answer
            return self._landed(flight, None, err)
        self._landed(flight, entry, None)

    def _landed(self, flight: Flight, entry: Entry | None, exc: BaseException | None) -> None:
        """The upstream answered (or failed): answer every waiter; the next miss asks again."""
        # The exchange's `done` holds this flight: dropping the link back ends the cycle, so the pair
        # (and all they hold: about 20 objects a miss) is freed at once by reference counting rather
        # than by the cyclic GC, which cost a sixth of a miss's CPU when it had to (docs/performance.md).
        flight.exchange = None
        if self._inflight.get(flight.key) is flight:
            del self._inflight[flight.key]
        if flight.prefetch:
            self.prefetching -= 1
            flight.prefetch = False  # counted out once, however often it ends
        if self._held:
            self._release_held(flight, entry, exc)
        if flight.timer is not None:
            self.deadlines.cancel(flight.timer)
        waiters, flight.waiters = flight.waiters, []
        self.waiting -= len(waiters)
        zone = flight.zone
        if exc is not None:
            if isinstance(exc, asyncio.CancelledError):  # the resolver is closing
                for w in waiters:
                    self._finish(zone, w, _servfail(w[0], w[1], self._udp_cap), "miss", "")
                return
            if isinstance(exc, Overloaded):
                zone.stats.overloaded += len(waiters)
                for w in waiters:
                    q = w[1]
                    self._finish(zone, w, wire.error_reply(w[0], wire.REFUSED, q.qend, q.edns, q.do, self._udp_cap),
                                 "refused", "")  # fmt: skip
                return
            if not isinstance(exc, UpstreamError):
                log.error("zone %s: resolving failed unexpectedly", zone.name, exc_info=exc)
        if entry is None:
            for w in waiters:  # no answer: stale or SERVFAIL
                self._fall_back(zone, w)
            return
        # The upstream's own SERVFAIL goes out only when no stale answer can (RFC 8767).
        stale = self._stale(zone, flight.key) if entry.kind is Kind.SERVFAIL else None
        now = self.clock()
        for w in waiters:
            if stale is not None:
                self._fall_back(zone, w)
                continue
            data, q, via = w[0], w[1], w[2]
            limit = TCP_LIMIT if via & 1 else (q.payload if q.payload < self._udp_cap else self._udp_cap)
            self._finish(zone, w, entry.reply(data, q.qend, q.edns, limit, now), "miss", "forward")

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) until every waiting client has its answer; at shutdown."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.waiting and loop.time() < end:
            await asyncio.sleep(DRAIN_POLL)

    def purge_steps(self, step: int = PURGE_STEP) -> Iterator[int]:
        """Drop entries past their stale window in every zone, `step` entries looked at a time, zone after zone:
        what each step dropped (ZoneCache.purge_steps; PeriodicTasks.purge yields to the loop between them)."""
        for zone in self.zones:
            yield from zone.cache.purge_steps(step)

    def flush(self, name: str | None = None, suffix: str | None = None, qtype: int | None = None) -> int:
        """Remove cached answers; return how many. No argument: everything.

        `name` (canonical, trailing dot) removes that name's entries, `suffix`
        those at or below it, `qtype` narrows either (or alone, every name of
        that type). It runs synchronously on the event loop, between two
        callbacks, so no query sees a half-flushed cache: the flush is atomic
        with respect to queries.
        """
        match = flush_match(name, suffix, qtype)
        return sum(z.cache.flush(match) for z in self.zones)

    def total_queries(self) -> int:
        """Every query received so far (hits, misses, refused, malformed), the agent's own probes excepted."""
        return (
            sum(z.hits + z.stats.misses for z in self.zones) + self.refused + self.malformed + self.dropped + self.transfers
        )

    def tick(self) -> None:
        """Once a second: the query rate, the sampling interval, the hits' duration sum.

        A hit is not timed on its own (that would cost two clock reads per
        hit); listeners time the hits they sample, and each second every
        zone's new hits are added to its duration sum at that mean.
        """
        self.activity.tick(self.total_queries())
        mean = self.activity.hit_mean
        for z in self.zones:
            hits = z.hits
            z.stats.hit_seconds += (hits - z.stats.hits_accounted) * mean
            z.stats.hits_accounted = hits

    def close(self) -> None:
        for z in self.zones:
            z.forwarder.close()
        for flight in list(self._inflight.values()):
            if flight.exchange is not None:
                flight.exchange.cancel()
            self._landed(flight, None, asyncio.CancelledError())
        self.deadlines.close()


def _servfail(data: bytes, q: wire.Query, udp_cap: int) -> bytes:
    return wire.error_reply(data, wire.SERVFAIL, q.qend, q.edns, q.do, udp_cap)


def flush_match(name: str | None, suffix: str | None, qtype: int | None) -> Callable[[bytes], bool] | None:
    """A predicate on cache keys (name wire + type + class + flags) for `Resolver.flush`."""
    if name is None and suffix is None and qtype is None:
        return None
    exact = name_to_wire(name) if name is not None else None
    below = name_to_wire(suffix) if suffix is not None else None
    tbytes = struct.pack("!H", qtype) if qtype is not None else None

    def match(key: bytes) -> bool:
        lname = key[:-5]
        if tbytes is not None and key[-5:-3] != tbytes:
            return False
        if exact is not None and lname != exact:
            return False
        return below is None or at_or_below(lname, below)

    return match
