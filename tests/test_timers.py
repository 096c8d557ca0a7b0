"""Many deadlines on one loop timer: order, cancellation, and a heap that does not keep what was cancelled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from nodecache import timers as timers_module
from nodecache.timers import Timers


async def until(predicate: Callable[[], object], limit: float = 2.0) -> None:
    """Wait (bounded) until predicate() holds."""
    end = time.monotonic() + limit
    while not predicate() and time.monotonic() < end:
        await asyncio.sleep(0.005)


async def test_deadlines_run_in_time_order_whatever_order_they_were_set_in() -> None:
    t = Timers()
    ran: list[str] = []
    now = time.monotonic()
    t.at(now + 0.06, ran.append, "late")
    t.at(now + 0.02, ran.append, "early")  # earlier than the armed one: the loop timer moves
    t.at(now + 0.04, ran.append, "middle")
    await until(lambda: len(ran) == 3)
    assert ran == ["early", "middle", "late"]
    assert len(t) == 0


async def test_a_cancelled_deadline_never_runs_and_cancelling_twice_is_harmless() -> None:
    t = Timers()
    ran: list[str] = []
    now = time.monotonic()
    gone = t.at(now + 0.01, ran.append, "cancelled")
    t.at(now + 0.03, ran.append, "kept")
    t.cancel(gone)
    t.cancel(gone)
    assert len(t) == 1
    await until(lambda: ran)
    assert ran == ["kept"]


async def test_a_deadline_set_while_others_run_is_kept() -> None:
    t = Timers()
    ran: list[str] = []

    def again(_arg: object) -> None:
        ran.append("first")
        t.at(time.monotonic() + 0.01, ran.append, "second")

    t.at(time.monotonic(), again, None)
    await until(lambda: len(ran) == 2)
    assert ran == ["first", "second"]


async def test_cancelled_deadlines_do_not_pile_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timers_module, "COMPACT_MIN", 10)
    t = Timers()
    far = time.monotonic() + 60
    for i in range(1000):  # misses answered long before their deadline
        t.cancel(t.at(far + i, print, i))
    assert len(t) == 0
    assert len(t._heap) <= 2 * 10 + 1
    t.close()
