"""One upstream server: its retransmission timer (RFC 6298's estimator), its UDP socket pool, its pipelined TCP."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter

import pytest

from nodecache import upstream as upstream_module
from nodecache import wire
from nodecache.config import Address, ForwardPolicy
from nodecache.errors import UpstreamError
from nodecache.forwarder import Forwarder
from nodecache.names import name_to_wire
from nodecache.upstream import INITIAL_RTO, MIN_RTO, UDP_SOCKET_USES, Build, Check, RttEstimator, Upstream
from tests.support.fakeupstream import Behaviour, FakeUpstream


def estimator(*samples: float) -> RttEstimator:
    rtt = RttEstimator()
    for s in samples:
        rtt.add(s)
    return rtt


def test_before_any_answer_the_initial_timer_applies_within_the_cap() -> None:
    assert estimator().timeout(cap=2.0) == INITIAL_RTO
    assert estimator().timeout(cap=0.3) == 0.3


def test_a_fast_server_is_retried_after_the_floor() -> None:
    assert estimator(*[0.0005] * 20).timeout(cap=2.0) == MIN_RTO


def test_a_steady_slow_server_is_not_retried_before_twice_its_round_trip() -> None:
    rtt = estimator(*[0.2] * 50)
    assert rtt.rttvar < 0.01
    assert rtt.timeout(cap=2.0) == pytest.approx(0.4, rel=0.05)


def test_a_jittery_server_gets_room_for_its_variation() -> None:
    rtt = estimator(*[0.05, 0.3] * 20)
    assert 0.4 < rtt.timeout(cap=2.0) < 1.2
    assert rtt.timeout(cap=0.5) == 0.5


def test_the_first_sample_sets_the_smoothed_time_and_half_as_variation() -> None:
    rtt = estimator(0.1)
    assert (rtt.srtt, rtt.rttvar) == (0.1, 0.05)


# -- the UDP socket pool and pipelined TCP, against the programmable upstream

A_IN = b"\x00\x01\x00\x01"


def _tries(name: str) -> tuple[Build, Check]:
    lname = name_to_wire(name)

    def build(qid: int) -> bytes:
        return wire.make_query(qid, lname + A_IN, False, False, 1232)

    def check(msg: bytes) -> wire.ReplyScan:
        return wire.scan_reply(msg, lname, A_IN)

    return build, check


def _upstream(port: int, tcp: bool = False) -> Upstream:
    return Upstream(Address("127.0.0.1", port), expire=10.0, health_check=0.5, max_fails=2, tcp=tcp)


async def test_udp_sockets_are_reused_for_a_bounded_number_of_queries() -> None:
    with FakeUpstream() as fake:
        up = _upstream(fake.port)
        build, check = _tries("web.default.svc.cluster.local.")
        for _ in range(UDP_SOCKET_USES + 1):
            await up.start(build, check, False)
        up.close()
    ports = Counter(r.src_port for r in fake.received())
    assert sorted(ports.values()) == [1, UDP_SOCKET_USES]  # the first socket retired; a new port took over


async def test_udp_pool_exhaustion_fails_at_once_and_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream_module, "UDP_SOCKETS_MAX", 2)
    with FakeUpstream() as fake:
        fake.set_behaviour(None, Behaviour.drop())
        up = _upstream(fake.port)
        build, check = _tries("web.default.svc.cluster.local.")
        open_tries = [up.start(build, check, False) for _ in range(2)]
        refused = up.start(build, check, False)
        assert refused.done() and isinstance(refused.exception(), UpstreamError)
        assert (up.udp_exhausted, len(up.udp_sockets)) == (1, 2)
        for fut in open_tries:  # giving up on a try closes its socket: room again
            fut.cancel()
        await asyncio.sleep(0)
        assert len(up.udp_sockets) == 0
        up.close()


async def test_a_udp_socket_that_errs_is_closed_not_reused() -> None:
    with FakeUpstream() as fake:
        dead = fake.port
    up = _upstream(dead)  # nothing listens there any more: ICMP port unreachable
    build, check = _tries("web.default.svc.cluster.local.")
    with pytest.raises(UpstreamError, match="refused"):
        await asyncio.wait_for(up.start(build, check, False), 2.0)
    await asyncio.sleep(0)
    assert up.udp_sockets == {} and up.udp_idle == []
    up.close()


async def test_a_reply_from_another_port_with_the_right_id_is_ignored() -> None:
    with FakeUpstream() as fake:
        name = "web.default.svc.cluster.local."
        fake.set_behaviour(name, Behaviour.delay(0.3))
        up = _upstream(fake.port)
        build, check = _tries(name)
        fut = up.start(build, check, False)
        (us,) = up.udp_sockets.values()
        forged = bytearray(build(us.qid))
        forged[2] |= 0x80  # a "reply" with the right ID and question, from an address that is not the upstream's
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as spoofer:
            spoofer.sendto(bytes(forged), us.sock.getsockname())
        msg, scan = await asyncio.wait_for(fut, 2.0)
        up.close()
    assert scan.answers == 1  # the real answer; the connected socket never saw the forged one


async def test_a_reply_with_another_id_is_ignored_and_counted() -> None:
    with FakeUpstream() as fake:
        name = "web.default.svc.cluster.local."
        fake.set_behaviour(name, Behaviour.wrong_id(), times=1)
        up = _upstream(fake.port)
        build, check = _tries(name)
        first = up.start(build, check, False)
        for _ in range(200):  # until the wrong-ID reply has been read (bounded: 2 s)
            if up.mismatched:
                break
            await asyncio.sleep(0.01)
        second = up.start(build, check, False)  # answered normally, on another socket
        await asyncio.wait_for(second, 2.0)
        assert not first.done()  # still waiting for its real answer
        first.cancel()
        mismatched = up.mismatched
        up.close()
    assert mismatched == 1


async def test_a_tcp_connection_closed_mid_pipeline_has_its_queries_retried_elsewhere() -> None:
    with FakeUpstream() as fake:
        policy = ForwardPolicy(upstreams=(Address("127.0.0.1", fake.port),), force_tcp=True, try_timeout=2.0,
                               timeout=5.0)  # fmt: skip
        fwd = Forwarder(policy)
        names = [f"t{i}.wild.cluster.local." for i in range(6)] + ["close.wild.cluster.local."]
        fake.set_behaviour(None, Behaviour.delay(0.2))  # all still pending when the connection goes
        fake.set_behaviour("close.wild.cluster.local.", Behaviour.close(), times=1)
        started = time.monotonic()
        answers = await asyncio.gather(*(fwd.query(name_to_wire(n), A_IN, False, False) for n in names))
        took = time.monotonic() - started
        connections = fake.tcp_connections
        fwd.close()
    assert [scan.answers for _msg, scan, _up in answers] == [1] * len(names)
    assert connections >= 2
    assert took < 1.5  # retried when the connection closed, not after a try timeout


async def test_a_tcp_try_given_up_frees_its_pipeline_slot_and_its_late_reply_is_ignored() -> None:
    with FakeUpstream() as fake:
        name = "web.default.svc.cluster.local."
        up = _upstream(fake.port, tcp=True)
        build, check = _tries(name)
        await asyncio.wait_for(up.start(build, check, True), 2.0)  # the connection is open
        fake.set_behaviour(name, Behaviour.delay(0.3))
        given_up = up.start(build, check, True)
        await asyncio.sleep(0.05)  # on the wire, its reply not yet sent
        (conn,) = up._conns
        assert len(conn.pending) == 1
        given_up.cancel()
        await asyncio.sleep(0)
        assert conn.pending == {}  # freed at once, not when the reply comes
        await asyncio.sleep(0.4)  # the late reply arrives on the connection and is dropped
        fake.set_behaviour(name, Behaviour.normal())
        _msg, scan = await asyncio.wait_for(up.start(build, check, True), 2.0)
        still = list(up._conns)
        up.close()
    assert scan.answers == 1 and still == [conn]  # the same connection carried on
    assert up._conns == [] and given_up.cancelled()


def test_a_connection_closed_with_no_loop_running_fails_its_tries_at_once() -> None:
    class Owner:
        def __init__(self) -> None:
            self.failures: list[str] = []

        def answered(self, t: object, msg: bytes, scan: object) -> None:
            raise AssertionError("nothing was answered")

        def failed(self, t: object, exc: UpstreamError) -> None:
            self.failures.append(str(exc))

    up = _upstream(53, tcp=True)
    owner = Owner()
    build, check = _tries("web.default.svc.cluster.local.")
    conn = upstream_module._TcpConnection(10.0, up._forget)
    up._conns.append(conn)
    t = upstream_module.Try(owner, up, build, check, True, time.monotonic())
    conn.pending[7] = t
    t.conn, t.qid = conn, 7
    up.close()  # at the very end of shutdown: no event loop to report on later
    assert owner.failures == ["upstream closed the TCP connection"]
    assert up._conns == [] and t.done
