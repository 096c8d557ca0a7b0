"""Many deadlines, one event-loop timer.

Every miss has two deadlines that almost never fire: its flight's answer
deadline (1.8 s) and its exchange's retransmission timer (a few round trips).
An event-loop timer each, made when the miss starts and cancelled when the
answer lands a millisecond later, cost more than the rest of the bookkeeping.
Here a deadline is a small ticket in a heap; one loop timer is armed for the
earliest; cancelling a ticket only marks it. Marked tickets are dropped when
they reach the top, or all at once when they outnumber the live ones, so the
heap stays within about twice the deadlines still pending.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable
from itertools import count
from typing import Any, Final

# Deadlines due within this of the one the loop timer fired for run with it: uvloop's clock counts whole
# milliseconds, so its timers may fire up to one early.
SLACK: Final = 0.002
COMPACT_MIN = 256  # cancelled tickets tolerated in the heap before a rebuild is considered

Ticket = list[Any]  # [callback or None once cancelled or run, its argument]
_clock: Final = time.monotonic


class Timers:
    """Deadlines on the `time.monotonic` clock, each calling `callback(arg)` once unless cancelled."""

    __slots__ = ("_heap", "_seq", "_handle", "_armed", "_dead")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Ticket]] = []
        self._seq = count()
        self._handle: asyncio.TimerHandle | None = None
        self._armed = float("inf")  # when the loop timer fires
        self._dead = 0  # cancelled tickets still in the heap

    def __len__(self) -> int:
        """Deadlines pending (not cancelled, not run)."""
        return len(self._heap) - self._dead

    def at(self, when: float, callback: Callable[[Any], None], arg: Any) -> Ticket:
        """Call `callback(arg)` at `when` (time.monotonic); returns the ticket to cancel it with."""
        ticket = [callback, arg]
        heapq.heappush(self._heap, (when, next(self._seq), ticket))
        if when < self._armed:
            self._arm(when)
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Forget a deadline; a ticket already run or cancelled is left alone."""
        if ticket[0] is None:
            return
        ticket[0] = ticket[1] = None
        self._dead += 1
        if self._dead > COMPACT_MIN and self._dead * 2 > len(self._heap):
            self._heap = [e for e in self._heap if e[2][0] is not None]
            heapq.heapify(self._heap)
            self._dead = 0

    def close(self) -> None:
        """Drop every deadline and the loop timer (at shutdown)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._heap.clear()
        self._dead = 0
        self._armed = float("inf")

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        loop = asyncio.get_running_loop()
        self._armed = when
        self._handle = loop.call_at(loop.time() + max(when - _clock(), 0.0), self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed = float("inf")
        heap = self._heap
        due = _clock() + SLACK
        while heap and heap[0][0] <= due:
            ticket = heapq.heappop(heap)[2]
            callback, arg = ticket
            if callback is None:
                self._dead -= 1
                continue
            ticket[0] = ticket[1] = None
            callback(arg)  # may add deadlines (and arm the timer): the loop sees them
        if heap and heap[0][0] < self._armed:
            self._arm(heap[0][0])
