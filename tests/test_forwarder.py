"""Upstream choice: policies, health ordering and the per-try/overall deadline."""

from __future__ import annotations

import asyncio
import time

from nodecache.config import DEFAULT_TIMEOUT, DEFAULT_TRY_TIMEOUT, Address, ForwardPolicy
from nodecache.config import name_to_wire as wire_name
from nodecache.errors import UpstreamError
from nodecache.forwarder import Forwarder
from tests.support.fakeupstream import Behaviour, FakeUpstream

THREE = tuple(Address("192.0.2.10", 53 + i) for i in range(3))
A_IN = b"\x00\x01\x00\x01"


def ports(order: list) -> list[int]:
    return [u.address.port for u in order]


def test_defaults_match_coredns_forward() -> None:
    policy = ForwardPolicy(upstreams=THREE[:1])
    assert (DEFAULT_TRY_TIMEOUT, DEFAULT_TIMEOUT) == (2.0, 5.0)
    assert (policy.try_timeout, policy.timeout, policy.max_fails, policy.policy) == (2.0, 5.0, 2, "random")


def test_sequential_always_starts_with_the_first() -> None:
    fwd = Forwarder(ForwardPolicy(upstreams=THREE, policy="sequential"))
    assert {tuple(ports(fwd.order())) for _ in range(10)} == {(53, 54, 55)}


def test_round_robin_rotates_the_first_choice() -> None:
    fwd = Forwarder(ForwardPolicy(upstreams=THREE, policy="round_robin"))
    assert [ports(fwd.order())[0] for _ in range(6)] == [53, 54, 55, 53, 54, 55]


def test_random_spreads_the_first_choice() -> None:
    fwd = Forwarder(ForwardPolicy(upstreams=THREE, policy="random"))
    firsts = {ports(fwd.order())[0] for _ in range(200)}
    assert firsts == {53, 54, 55}


def test_servers_marked_down_are_tried_last() -> None:
    fwd = Forwarder(ForwardPolicy(upstreams=THREE, policy="sequential", max_fails=1))
    fwd.upstreams[0].fails = 1  # as if its last query failed
    assert ports(fwd.order()) == [54, 55, 53]


async def test_overall_deadline_bounds_the_tries() -> None:
    with FakeUpstream() as up:
        up.set_behaviour(None, Behaviour.drop())
        fwd = Forwarder(ForwardPolicy(upstreams=(Address("127.0.0.1", up.port),), try_timeout=0.2, timeout=0.5))
        started = time.monotonic()
        try:
            await fwd.query(wire_name("a.example."), A_IN, False, False)
        except UpstreamError as exc:
            assert "did not answer within" in str(exc)
        else:
            raise AssertionError("a silent upstream must fail the query")
        elapsed = time.monotonic() - started
        fwd.close()
    assert up.count("a.example.") == 3  # 0.2 + 0.2 + the 0.1 left
    assert elapsed < 2.0


async def answered_after(fwd: Forwarder, name: str) -> float:
    started = time.monotonic()
    _msg, scan, _up = await fwd.query(wire_name(name + "."), A_IN, False, False)
    assert scan.rcode == 0 and scan.answers == 1
    return time.monotonic() - started


async def test_a_lost_datagram_is_retried_after_a_few_round_trips_not_the_try_timeout() -> None:
    with FakeUpstream() as up:
        fwd = Forwarder(ForwardPolicy(upstreams=(Address("127.0.0.1", up.port),), try_timeout=2.0, timeout=5.0))
        for _ in range(5):  # round trips measured: the retransmission timer drops to its floor
            await answered_after(fwd, "web.default.svc.cluster.local")
        up.set_behaviour("kubernetes.default.svc.cluster.local", Behaviour.drop(), times=1)
        took = await answered_after(fwd, "kubernetes.default.svc.cluster.local")
        retries = fwd.upstreams[0].retries
        failures = fwd.upstreams[0].failures
        fwd.close()
    assert took < 0.5, f"answered after {took:.2f}s"
    assert up.count("kubernetes.default.svc.cluster.local") == 2
    assert (retries, failures) == (1, 0)  # a retry is not a failure: the first try was only slow


async def test_a_silent_tcp_connection_is_bypassed_on_another_connection() -> None:
    """A server sitting on one reply (as NSD did under pipelining) costs a retransmission timer, not a loss."""
    with FakeUpstream() as up:
        policy = ForwardPolicy(upstreams=(Address("127.0.0.1", up.port),), force_tcp=True, try_timeout=2.0, timeout=5.0)
        fwd = Forwarder(policy)
        for _ in range(5):
            await answered_after(fwd, "web.default.svc.cluster.local")
        up.set_behaviour("kubernetes.default.svc.cluster.local", Behaviour.drop(), times=1)
        took = await answered_after(fwd, "kubernetes.default.svc.cluster.local")
        connections = up.tcp_connections
        fwd.close()
    assert took < 0.5, f"answered after {took:.2f}s"
    assert connections == 2  # the retry went out on a second connection


async def test_a_slow_server_sees_at_most_two_tries_at_once() -> None:
    with FakeUpstream() as up:
        fwd = Forwarder(ForwardPolicy(upstreams=(Address("127.0.0.1", up.port),), try_timeout=2.0, timeout=5.0))
        await answered_after(fwd, "web.default.svc.cluster.local")
        up.set_behaviour("kubernetes.default.svc.cluster.local", Behaviour.delay(0.6))
        took = await answered_after(fwd, "kubernetes.default.svc.cluster.local")
        fwd.close()
    assert 0.55 < took < 1.5
    assert up.count("kubernetes.default.svc.cluster.local") == 2


async def test_early_retries_stop_when_their_budget_is_spent() -> None:
    """When everything is slow, retrying early would only double the load that made it slow."""
    from nodecache.forwarder import RETRY_BUDGET_MAX

    with FakeUpstream() as up:
        fwd = Forwarder(ForwardPolicy(upstreams=(Address("127.0.0.1", up.port),), try_timeout=2.0, timeout=5.0))
        await answered_after(fwd, "web.default.svc.cluster.local")
        up.set_behaviour(None, Behaviour.delay(0.4))
        await asyncio.gather(*(answered_after(fwd, "kubernetes.default.svc.cluster.local") for _ in range(40)))
        retries = fwd.upstreams[0].retries
        fwd.close()
    assert retries <= RETRY_BUDGET_MAX + 1
    assert up.count("kubernetes.default.svc.cluster.local") == 40 + retries
