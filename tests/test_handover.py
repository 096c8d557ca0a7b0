"""nodecache.handover: a cache dumped by one agent and loaded by another keeps what is left of each answer.

Caches on fake clocks; the dump's wall-clock time is given, so transit time is exact.
Answers are built and read with dnslib.
"""

from __future__ import annotations

import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from dnslib import DNSRecord

from nodecache import cli, handover
from nodecache.cache import ZoneCache
from nodecache.config import CachePolicy
from nodecache.control import call
from nodecache.errors import HandoverError
from nodecache.names import name_to_wire
from tests.conftest import AGENT_START_TIMEOUT, AgentProcess
from tests.dnsmsg import a, parse, query, reply, soa, ttls_of
from tests.support.fakeupstream import FakeUpstream
from tests.support.net import free_port
from tests.test_cache import ZONE, key_for, make_clock, replay, scanned

WALL = 1_700_000_000.0
LIMIT = 1 << 20
POLICY = CachePolicy(success_max_ttl=300, denial_max_ttl=300, stale_window=600)


def filled(names: int = 3, ttl: int = 60) -> tuple[ZoneCache, object]:
    clock = make_clock()
    cache = ZoneCache(POLICY, clock.now)
    for i in range(names):
        name = f"n{i}.{ZONE}"
        cache.store(key_for(name), scanned(reply(name, answers=[a(name, ttl)]), name), False, 1232)
    return cache, clock


def loaded_into(
    data: bytes, policy: CachePolicy = POLICY, wall: float = WALL, zone: str = ZONE
) -> tuple[ZoneCache, handover.Counts]:
    target = ZoneCache(policy, make_clock(5000.0).now)
    caches = {name_to_wire(zone): target}
    counts = handover.load(handover.parse(data, LIMIT), caches.get, 1232, wall=wall)
    return target, counts


def served_ttl(cache: ZoneCache, name: str) -> int:
    entry = cache.get(key_for(name))
    assert entry is not None, f"{name} was not loaded"
    return ttls_of(parse(replay(entry, query(name), cache.clock())))[0]


def test_answers_arrive_with_what_is_left_of_their_ttl() -> None:
    cache, clock = filled(ttl=60)
    clock.advance(20)  # type: ignore[attr-defined]
    data, counts = handover.dump([(ZONE, cache)], LIMIT, cache.clock(), wall=WALL)
    target, loaded = loaded_into(data)
    assert (counts.dumped, loaded.loaded) == (3, 3)
    assert served_ttl(target, f"n0.{ZONE}") == 40
    entry = target.get(key_for(f"n1.{ZONE}"))
    assert entry is not None and entry.expires - target.clock() == pytest.approx(40, abs=0.01)


def test_transit_time_is_taken_off_and_an_answer_expired_in_transit_is_never_fresh() -> None:
    cache, _ = filled(ttl=10)
    data, _ = handover.dump([(ZONE, cache)], LIMIT, cache.clock(), wall=WALL)
    target, counts = loaded_into(data, wall=WALL + 3.5)
    assert counts.loaded == 3 and served_ttl(target, f"n0.{ZONE}") == 6
    late, counts = loaded_into(data, wall=WALL + 12)  # expired 2 s ago: stale only
    entry = late.get(key_for(f"n0.{ZONE}"))
    assert entry is not None and entry.expires <= late.clock() < entry.stale_until
    gone, counts = loaded_into(data, wall=WALL + 10 + 600 + 1)  # past the stale window too
    assert counts.expired == 3 and not list(gone.entries())


def test_a_denial_travels_with_its_soa() -> None:
    clock = make_clock()
    cache = ZoneCache(POLICY, clock.now)
    name = f"gone.{ZONE}"
    cache.store(key_for(name), scanned(reply(name, rcode=3, authority=[soa(ZONE, 30, 30)]), name), False, 1232)
    data, _ = handover.dump([(ZONE, cache)], LIMIT, clock.now(), wall=WALL)
    target, counts = loaded_into(data)
    assert counts.loaded == 1
    assert parse(replay(target.get(key_for(name)), query(name), target.clock())).header.rcode == 3  # type: ignore[arg-type]
    assert target.nxdomain_above(key_for(f"x.{name}"), len(name_to_wire(ZONE))) is not None  # RFC 8020 cut kept


def test_answers_of_zones_not_served_here_are_skipped_and_counted() -> None:
    cache, _ = filled()
    data, _ = handover.dump([(ZONE, cache)], LIMIT, cache.clock(), wall=WALL)
    target, counts = loaded_into(data, zone="other.example.")
    assert (counts.loaded, counts.no_zone) == (0, 3)


def test_a_dump_over_the_limit_leaves_answers_out_and_counts_them() -> None:
    cache, _ = filled(names=10)
    whole, _ = handover.dump([(ZONE, cache)], LIMIT, cache.clock(), wall=WALL)
    part, counts = handover.dump([(ZONE, cache)], 300, cache.clock(), wall=WALL)
    assert counts.left_out > 0 and counts.dumped + counts.left_out == 10
    target, loaded = loaded_into(part)
    assert loaded.loaded == counts.dumped
    with pytest.raises(HandoverError, match="more than 300 bytes"):
        handover.parse(whole, 300)


@pytest.mark.parametrize("spoil", [
    pytest.param(lambda d: b"NOTADUMP" + d[8:], id="foreign"),
    pytest.param(lambda d: d[:7] + b"\x09" + d[8:], id="other-version"),
    pytest.param(lambda d: d[: len(d) - 9], id="cut-short"),
    pytest.param(lambda d: d[:30] + bytes([d[30] ^ 0xFF]) + d[31:], id="corrupt"),
    pytest.param(lambda d: d[:5], id="too-short"),
])  # fmt: skip
def test_a_bad_dump_is_refused_whole_and_loads_nothing(spoil: object) -> None:
    cache, _ = filled()
    data, _ = handover.dump([(ZONE, cache)], LIMIT, cache.clock(), wall=WALL)
    target = ZoneCache(POLICY, make_clock().now)
    with pytest.raises(HandoverError):
        dump = handover.parse(spoil(data), LIMIT)  # type: ignore[operator]
        handover.load(dump, {name_to_wire(ZONE): target}.get, 1232, wall=WALL)
    assert not list(target.entries())


def test_a_reply_that_does_not_answer_its_key_stops_the_whole_load() -> None:
    cache, _ = filled(names=2)
    data, _ = handover.dump([(ZONE, cache)], LIMIT, cache.clock(), wall=WALL)
    dump = handover.parse(data, LIMIT)
    first = dump.records[0]
    dump.records.append(handover.Record(first.zone, key_for(f"other.{ZONE}"), first.reply, 10.0, 10.0))
    target = ZoneCache(POLICY, make_clock().now)
    with pytest.raises(HandoverError, match="nothing was loaded"):
        handover.load(dump, {name_to_wire(ZONE): target}.get, 1232, wall=WALL)
    assert not list(target.entries())


def test_the_loading_zone_rules_cap_what_it_keeps() -> None:
    cache, _ = filled(ttl=60)
    data, _ = handover.dump([(ZONE, cache)], LIMIT, cache.clock(), wall=WALL)
    target, counts = loaded_into(data, policy=CachePolicy(success_max_ttl=30, stale_window=0))
    assert counts.loaded == 3 and served_ttl(target, f"n0.{ZONE}") == 30
    entry = target.get(key_for(f"n0.{ZONE}"))
    assert entry is not None and entry.stale_until == entry.expires
    off, counts = loaded_into(data, policy=CachePolicy(success_capacity=0))
    assert counts.not_kept == 3 and not list(off.entries())


# ---------------------------------------------------------------------------- between agents (processes)

SVC = "kubernetes.default.svc.cluster.local."


def ask(port: int, name: str = SVC) -> DNSRecord:
    """One UDP query to the agent on 127.0.0.1:`port`, answered within 3 s."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3.0)
        sock.sendto(query(name, qid=7), ("127.0.0.1", port))
        return DNSRecord.parse(sock.recv(65535))


def agent_args(up: FakeUpstream, resolv: Path, *extra: str) -> list[str]:
    return ["--listen", "127.0.0.1", "--port", str(free_port()), "--upstream", f"127.0.0.1:{up.port}",
            "--node-resolv-conf", str(resolv), *extra]  # fmt: skip


def port_of(agent: AgentProcess) -> int:
    return int(agent.args[agent.args.index("--port") + 1])


@pytest.fixture
def resolv(tmp_path: Path) -> Path:
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 127.0.0.254\n")
    return path


@pytest.mark.slow
def test_a_new_agent_starts_with_the_live_agents_cache(resolv: Path) -> None:
    with FakeUpstream() as up, AgentProcess(agent_args(up, resolv)) as old:
        assert ask(port_of(old)).rr
        assert up.count(SVC) == 1
        with AgentProcess(agent_args(up, resolv, "--control-socket", str(old.control_socket))) as new:
            assert "cache handed over from the live agent" in new.log
            reply = ask(port_of(new))
            assert [str(r.rdata) for r in reply.rr] == ["192.0.2.1"] and 0 < reply.rr[0].ttl <= 30
            assert up.count(SVC) == 1  # answered from the handed-over cache: nothing went upstream


@pytest.mark.slow
def test_a_hung_live_agent_delays_startup_by_the_handover_timeout_only(resolv: Path) -> None:
    with FakeUpstream() as up, AgentProcess(agent_args(up, resolv)) as old:
        assert old.proc is not None
        old.proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with AgentProcess(agent_args(up, resolv, "--control-socket", str(old.control_socket),
                                         "--handover-timeout", "1")) as new:  # fmt: skip
                assert time.monotonic() - started < AGENT_START_TIMEOUT
                assert "no cache handed over" in new.log
                assert ask(port_of(new)).rr  # serving, with an empty cache
        finally:
            old.proc.send_signal(signal.SIGCONT)


def test_without_a_live_agent_the_agent_starts_empty_and_counts_it(resolv: Path) -> None:
    with FakeUpstream() as up, AgentProcess(agent_args(up, resolv)) as agent:
        assert "no cache handed over" in agent.log
        stats = call(str(agent.control_socket), "stats", {})
        assert stats["handover"]["failed"] == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{agent.metrics_port}/metrics", timeout=5) as page:
            assert "nodecache_cache_handover_failed_total 1.0" in page.read().decode()


@pytest.mark.slow
def test_dump_and_load_commands_copy_a_cache_between_agents(resolv: Path, tmp_path: Path) -> None:
    file = tmp_path / "cache.dump"
    with FakeUpstream() as up, AgentProcess(agent_args(up, resolv)) as first:
        ask(port_of(first))
        out = CliRunner().invoke(cli.main, ["dump", "--control-socket", str(first.control_socket), str(file)])
        assert out.exit_code == 0, out.output
        assert "1 dumped" in out.output
        with AgentProcess(agent_args(up, resolv, "--handover-timeout", "0")) as second:
            out = CliRunner().invoke(cli.main, ["load", "--control-socket", str(second.control_socket), str(file)])
            assert out.exit_code == 0 and "1 loaded" in out.output, out.output
            ask(port_of(second))
            assert up.count(SVC) == 1
            file.write_bytes(file.read_bytes()[:-4])
            out = CliRunner().invoke(cli.main, ["load", "--control-socket", str(second.control_socket), str(file)])
            assert out.exit_code == 1 and "cut short" in out.output
