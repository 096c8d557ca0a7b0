"""HeapTrimmer: freed heap goes back to the kernel once a burst of misses is over, rate-limited."""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from dnslib import DNSRecord

from nodecache.control import call
from nodecache.heap import BURST_MISSES, MIN_TRIM_INTERVAL, QUIET_MISSES, HeapTrimmer, malloc_trim
from nodecache.resolver import Resolver
from nodecache.stats import render, report
from tests.conftest import AgentProcess, make_config
from tests.support.fakeupstream import FakeUpstream
from tests.support.net import free_port


class FakeTrim:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, pad: int) -> int:
        self.calls.append(pad)
        return 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _trimmer() -> tuple[HeapTrimmer, FakeTrim, Clock]:
    trim, clock = FakeTrim(), Clock()
    return HeapTrimmer(trim, clock), trim, clock


def test_a_quiet_agent_never_trims() -> None:
    heap, trim, clock = _trimmer()
    for _ in range(60):
        clock.now += 1
        assert heap.tick(0) is False
    assert trim.calls == []


def test_no_trim_while_a_burst_goes_on_then_one_when_it_is_over() -> None:
    heap, trim, clock = _trimmer()
    misses = 0
    for _ in range(5):  # 5 s of a fill: many misses every second
        clock.now += 1
        misses += 5000
        assert heap.tick(misses) is False
    clock.now += 1
    assert heap.tick(misses + QUIET_MISSES) is True
    assert trim.calls == [0] and heap.trims == 1


def test_a_few_misses_never_trigger_a_trim() -> None:
    heap, trim, clock = _trimmer()
    misses = 0
    for _ in range(100):
        clock.now += 1
        misses += 5
        heap.tick(misses)
    assert misses < BURST_MISSES and trim.calls == []


def test_trims_are_rate_limited_and_a_deferred_one_still_happens() -> None:
    heap, trim, clock = _trimmer()
    clock.now += 1
    heap.tick(BURST_MISSES * 2)
    clock.now += 1
    assert heap.tick(BURST_MISSES * 2) is True  # the first burst is over
    clock.now += 1
    heap.tick(BURST_MISSES * 4)  # another one, right after
    clock.now += 1
    assert heap.tick(BURST_MISSES * 4) is False  # over, but too soon after the last trim
    clock.now += MIN_TRIM_INTERVAL
    assert heap.tick(BURST_MISSES * 4) is True
    assert len(trim.calls) == 2


def test_without_malloc_trim_nothing_is_trimmed() -> None:
    heap = HeapTrimmer(None, Clock())  # as on musl, where the C library has none
    assert heap.available is False
    assert heap.tick(BURST_MISSES * 10) is False and heap.tick(BURST_MISSES * 10) is False
    assert heap.trims == 0


def test_glibc_trim_is_found_and_runs() -> None:
    heap = HeapTrimmer(malloc_trim())
    assert heap.available  # this machine's libc is glibc
    heap.tick(BURST_MISSES)
    assert heap.tick(BURST_MISSES) is True


def test_an_agent_trims_once_a_burst_of_misses_is_over_and_shows_it(node_resolv_conf: Path) -> None:
    """End to end: a burst of unique names, then quiet; `nodecache stats` and /metrics show the trim."""
    if malloc_trim() is None:
        pytest.skip("this C library has no malloc_trim (musl): the agent never trims")
    with FakeUpstream() as up, AgentProcess(["--listen", "127.0.0.1", "--port", str(free_port()),
                                             "--upstream", f"127.0.0.1:{up.port}",
                                             "--node-resolv-conf", str(node_resolv_conf)]) as agent:  # fmt: skip
        port = int(agent.args[agent.args.index("--port") + 1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(3.0)
            for start in range(0, BURST_MISSES + 200, 100):  # paced: 100 in flight at most
                for i in range(start, start + 100):
                    q = DNSRecord.question(f"burst-{i}.default.svc.cluster.local")
                    q.header.id = i & 0xFFFF
                    sock.sendto(bytes(q.pack()), ("127.0.0.1", port))
                for _ in range(100):
                    sock.recv(4096)
        deadline = time.monotonic() + MIN_TRIM_INTERVAL + 5
        heap = call(str(agent.control_socket), "stats", {})["heap"]
        while heap["trims"] == 0 and time.monotonic() < deadline:
            time.sleep(0.25)
            heap = call(str(agent.control_socket), "stats", {})["heap"]
        assert heap["available"] is True
        assert heap["trims"] == 1  # one burst, one trim: it does not trim again while quiet
        assert heap["seconds"] > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{agent.metrics_port}/metrics", timeout=5) as page:
            assert "nodecache_heap_trims_total 1.0" in page.read().decode()
    text = render({**_empty_report(), "heap": heap})
    assert "heap        1 trims after miss bursts" in text


def _empty_report() -> dict[str, Any]:
    """A stats report of an agent that has seen nothing (to render one line of it)."""
    return report(Resolver(make_config(["127.0.0.1:9"])), started=time.monotonic(), listen=[], ready=True,
                  not_ready=None)  # fmt: skip


def test_the_stats_line_says_when_this_c_library_cannot_trim() -> None:
    text = render({**_empty_report(), "heap": HeapTrimmer(None).counts()})
    assert "not trimmed: this C library has no malloc_trim" in text
