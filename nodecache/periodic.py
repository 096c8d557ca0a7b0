"""The agent's background tasks: the once-a-second tick, the purge sweep, forwarding-loop probes.

Each runs on the agent's loop until cancelled at shutdown; none of them is on
the query path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from nodecache.heap import HeapTrimmer, malloc_trim
from nodecache.resolver import Resolver

log = logging.getLogger(__name__)

PURGE_INTERVAL = 10.0  # seconds between sweeps of entries past their stale window
TICK_INTERVAL = 1.0  # seconds between query-rate samples (stats, sampling interval, hit durations)


class PeriodicTasks:
    """Starts and cancels the background tasks that keep the resolver's state current."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.heap = HeapTrimmer(malloc_trim())
        self._purge: asyncio.Task[None] | None = None
        self._tick: asyncio.Task[None] | None = None
        self._loop_checks: set[asyncio.Task[None]] = set()

    def start_purge(self) -> None:
        self._purge = asyncio.get_running_loop().create_task(self._purge_forever())

    def start_tick(self) -> None:
        self._tick = asyncio.get_running_loop().create_task(self._tick_forever())

    def check_loops(self, zone_names: Sequence[str]) -> None:
        """Probe these zones' upstreams for forwarding loops (Corefile `loop`), in the background.

        The listeners must already serve: a looping probe is caught when it reaches them.
        Other zones answer meanwhile; see Resolver.check_loops.
        """
        if zone_names:
            task = asyncio.get_running_loop().create_task(self.resolver.check_loops(zone_names))
            self._loop_checks.add(task)
            task.add_done_callback(self._loop_checks.discard)

    def stop_tick(self) -> None:
        if self._tick is not None:
            self._tick.cancel()

    def stop(self) -> None:
        """Cancel the purge and the loop probes (the tick stops with the operator endpoints)."""
        if self._purge is not None:
            self._purge.cancel()
        for task in list(self._loop_checks):
            task.cancel()

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            self.resolver.tick()
            self.heap.tick(sum(z.stats.misses for z in self.resolver.zones))

    async def _purge_forever(self) -> None:
        while True:
            await asyncio.sleep(PURGE_INTERVAL)
            await self.purge()

    async def purge(self) -> int:
        """One sweep, a step of entries at a time with queries answered in between; how many it dropped.

        In one piece, a sweep over a full cache held every query back: 15-33 ms every
        10 s with 60,000 entries (docs/performance.md, "The purge sweep in steps").
        """
        dropped = 0
        for n in self.resolver.purge_steps():
            dropped += n
            await asyncio.sleep(0)
        if dropped:
            log.debug("purged %d expired entries", dropped)
        return dropped
