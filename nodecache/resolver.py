"""The query pipeline: zone match, cache, coalescing, forwarding, fallbacks.

`answer` is the hot path and runs inside the listener's receive callback:
it scans the bytes, finds the zone (memoised by name), looks the key up and
replays the cached reply. Only a miss leaves it, through `resolve`, which is
a coroutine. Everything `answer` touches is a dict, a slice or an int.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nodecache import wire
from nodecache.cache import Entry, ZoneCache
from nodecache.config import STALE_REPLY_TTL, Config, Zone
from nodecache.errors import UpstreamError
from nodecache.forwarder import Forwarder, Overloaded

log = logging.getLogger(__name__)

TCP_LIMIT = 65535
ZONE_MEMO_LIMIT = 100_000  # names remembered for zone matching before a reset
WARN_INTERVAL = 5.0  # an upstream outage logs once per zone per interval, not per query


@dataclass(eq=False)
class ZoneStats:
    """Per-zone counters; plain ints so the hot path pays an add, no more."""

    requests: int = 0
    hits: int = 0
    misses: int = 0
    coalesced: int = 0
    stale: int = 0
    servfail: int = 0
    rcodes: dict[int, int] = field(default_factory=dict)


class ZoneRuntime:
    """A configured zone with its live cache and upstream group."""

    def __init__(self, zone: Zone, clock: Callable[[], float]) -> None:
        self.zone = zone
        self.cache = ZoneCache(zone.cache, clock)
        self.forwarder = Forwarder(zone.forward)
        self.stats = ZoneStats()
        self._warned_at = -WARN_INTERVAL
        self._suppressed = 0

    def warn_failure(self, exc: Exception, now: float) -> None:
        """Log an upstream failure, at most once per WARN_INTERVAL."""
        if now - self._warned_at < WARN_INTERVAL:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more failures since the last message)" if self._suppressed else ""
        log.warning("zone %s: no upstream answered: %s%s", self.zone.name, exc, more)
        self._warned_at = now
        self._suppressed = 0


class Resolver:
    """Answers queries from the cache, or from the zone's upstreams on a miss."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.zones = [ZoneRuntime(z, clock) for z in config.zones]
        self._by_wire = {z.zone.wire: z for z in self.zones}
        self._memo: dict[bytes, ZoneRuntime | None] = {}
        self._inflight: dict[bytes, asyncio.Task[Entry]] = {}
        self.malformed = 0
        self.dropped = 0
        self.refused = 0
        self._udp_cap = config.max_udp_payload

    def zone_for(self, lname: bytes) -> ZoneRuntime | None:
        """The zone with the longest suffix of `lname` (a lowercased wire name)."""
        zone = self._memo.get(lname, self)
        if zone is not self:
            return zone  # type: ignore[return-value]
        found = None
        i = 0
        for _ in range(128):
            found = self._by_wire.get(lname[i:])
            if found is not None or i >= len(lname) or lname[i] == 0:
                break
            i += lname[i] + 1
        if len(self._memo) >= ZONE_MEMO_LIMIT:
            self._memo.clear()
        self._memo[lname] = found
        return found

    def answer(self, data: bytes, tcp: bool) -> bytes | wire.Query | None:
        """The reply for a cache hit or an error; a Query to resolve; None to drop."""
        try:
            q = wire.scan_query(data)
        except wire.Malformed as exc:
            return self._malformed(data, exc)
        zone = self._memo.get(q.lname)
        if zone is None:
            zone = self.zone_for(q.lname)
            if zone is None:
                self.refused += 1
                return wire.error_reply(data, wire.REFUSED, q.qend, q.edns, q.do, self._udp_cap)
        zone.stats.requests += 1
        entry = zone.cache.get(q.key)
        if entry is not None:
            now = self.clock()
            if now < entry.expires:
                zone.stats.hits += 1
                limit = TCP_LIMIT if tcp else (q.payload if q.payload < self._udp_cap else self._udp_cap)
                return entry.reply(data, q.qend, q.edns, limit, now)
        zone.stats.misses += 1
        return q

    def _malformed(self, data: bytes, exc: wire.Malformed) -> bytes | None:
        """Count a bad packet; FORMERR/NOTIMP/BADVERS when its header is readable."""
        if exc.rcode is None:
            self.dropped += 1
            return None
        self.malformed += 1
        return wire.error_reply(data, exc.rcode, exc.qend, 0, False, self._udp_cap)

    async def resolve(self, data: bytes, q: wire.Query, tcp: bool) -> bytes:
        """Answer a miss: one upstream query per key, however many clients wait."""
        zone = self.zone_for(q.lname)
        assert zone is not None  # `answer` refused queries outside every zone
        task = self._inflight.get(q.key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(zone, q))
            self._inflight[q.key] = task
            task.add_done_callback(functools.partial(self._landed, q.key))
        else:
            zone.stats.coalesced += 1
        limit = TCP_LIMIT if tcp else min(q.payload, self._udp_cap)
        try:
            entry = await asyncio.shield(task)
        except Overloaded:
            self.refused += 1
            return wire.error_reply(data, wire.REFUSED, q.qend, q.edns, q.do, self._udp_cap)
        except UpstreamError:
            stale = zone.cache.get(q.key)
            if stale is not None and stale.kind is not None and self.clock() < stale.stale_until:
                zone.stats.stale += 1
                return stale.stale_reply(data, q.qend, q.edns, limit, STALE_REPLY_TTL)
            zone.stats.servfail += 1
            return wire.error_reply(data, wire.SERVFAIL, q.qend, q.edns, q.do, self._udp_cap)
        return entry.reply(data, q.qend, q.edns, limit, self.clock())

    def _landed(self, key: bytes, _task: asyncio.Task[Entry]) -> None:
        """An upstream answer arrived (or failed): the next miss asks again."""
        self._inflight.pop(key, None)

    async def _fetch(self, zone: ZoneRuntime, q: wire.Query) -> Entry:
        """Ask the zone's upstreams and store what they say (when cacheable)."""
        qtc = q.key[len(q.lname) : len(q.lname) + 4]
        cd = bool(q.key[-1] & wire.KEY_CD)
        try:
            _msg, scan, _up = await zone.forwarder.query(q.lname, qtc, q.do, cd)
        except UpstreamError as exc:
            if not isinstance(exc, Overloaded):
                zone.warn_failure(exc, self.clock())
            raise
        zone.stats.rcodes[scan.rcode] = zone.stats.rcodes.get(scan.rcode, 0) + 1
        return zone.cache.store(q.key, scan, q.do, self._udp_cap)

    def purge(self) -> int:
        """Drop entries past their stale window in every zone."""
        return sum(z.cache.purge() for z in self.zones)

    def close(self) -> None:
        for z in self.zones:
            z.forwarder.close()
        for task in self._inflight.values():
            task.cancel()
