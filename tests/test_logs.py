"""Logs: one line per event (text or JSON), the query log, and rate-limited errors."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import random
from pathlib import Path

import pytest
from dnslib import DNSRecord

from nodecache.listeners import UdpListener
from nodecache.logs import JsonFormatter, QueryLog, TextFormatter, Throttle, setup
from nodecache.resolver import Resolver
from tests.conftest import AgentProcess, ask_udp, make_config, running
from tests.support.clients import raw_tcp, raw_udp
from tests.support.fakeupstream import Behaviour, FakeUpstream
from tests.support.net import free_port

SVC = "kubernetes.default.svc.cluster.local"
MISSING = "nothere.default.svc.cluster.local"


def _record(msg: str = "hello", fields: dict | None = None, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    record = logging.LogRecord("nodecache.test", logging.WARNING, __file__, 1, msg, (), exc_info)
    if fields is not None:
        record.fields = fields
    return record


def test_json_lines_carry_fields_and_tracebacks_on_one_line() -> None:
    line = JsonFormatter().format(_record("zone down", {"zone": "cluster.local.", "n": 3}, exc=True))
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["level"] == "warning" and obj["logger"] == "nodecache.test" and obj["msg"] == "zone down"
    assert obj["zone"] == "cluster.local." and obj["n"] == 3
    assert "ValueError: boom" in obj["error"] and obj["time"].endswith("Z")


def test_text_lines_are_one_line_with_key_values() -> None:
    line = TextFormatter().format(_record("flushed", {"name": "a b", "type": 28}, exc=True))
    assert "\n" not in line
    assert ' WARNING nodecache.test: flushed name="a b" type=28' in line
    assert "ValueError: boom\\nsecond line" in line


def test_setup_switches_format_and_level() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        setup("warning", "json", stream)
        logging.getLogger("nodecache.x").info("hidden")
        logging.getLogger("nodecache.x").error("shown")
    finally:
        root.handlers[:], root.level = saved
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["msg"] for line in lines] == ["shown"]


def test_throttle_lets_one_through_per_interval_and_counts_the_rest() -> None:
    t = Throttle(5.0)
    assert t.allow("up", 100.0) == (True, 0)
    assert [t.allow("up", 100.0 + i)[0] for i in range(1, 5)] == [False] * 4
    assert t.allow("other", 101.0) == (True, 0)  # keys are independent
    assert t.allow("up", 105.0) == (True, 4)


def test_query_log_sampling_and_errors_only() -> None:
    noerror = b"\x00\x01\x81\x80" + b"\x00" * 8
    nxdomain = b"\x00\x01\x81\x83" + b"\x00" * 8
    servfail = b"\x00\x01\x81\x82" + b"\x00" * 8
    errors = QueryLog(errors_only=True)
    assert not errors.wants(noerror) and errors.wants(nxdomain) and errors.wants(servfail)
    sampled = QueryLog(sample=0.25)
    sampled._rng = random.Random(7)
    kept = sum(sampled.wants(noerror) for _ in range(4000))
    assert 800 < kept < 1200


def test_without_the_query_log_the_hit_path_is_untouched() -> None:
    resolver = Resolver(make_config(["127.0.0.1:9"]))
    plain = UdpListener(resolver)
    assert plain.datagram_received.__name__ == "datagram_received"  # the class's: no flag tested per query
    resolver.query_log = QueryLog()
    logged = UdpListener(resolver)
    assert logged.datagram_received.__name__ == "_logged"


def _agent_args(up: FakeUpstream, conf: Path, port: int, *extra: str) -> list[str]:
    return ["--listen", "127.0.0.1", "--port", str(port), "--upstream", f"127.0.0.1:{up.port}",
            "--node-resolv-conf", str(conf), *extra]  # fmt: skip


def _queries(agent: AgentProcess) -> list[dict]:
    out = []
    for line in agent.log.splitlines():
        obj = json.loads(line)  # every line is JSON, startup lines too
        if obj["logger"] == "nodecache.query":
            out.append(obj)
    return out


def test_query_log_lines_say_who_asked_what_and_how_it_was_answered(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.254\n")
    port = free_port()
    with FakeUpstream() as up:
        with AgentProcess(_agent_args(up, conf, port, "--query-log", "--log-format", "json")) as agent:
            for _ in range(2):
                assert raw_udp("127.0.0.1", port, bytes(DNSRecord.question(SVC).pack()))
            assert raw_tcp("127.0.0.1", port, [bytes(DNSRecord.question(MISSING, "AAAA").pack())])
        lines = _queries(agent)
    assert [(q["name"], q["type"], q["rcode"], q["cache"], q["proto"]) for q in lines] == [
        (SVC + ".", "A", "NOERROR", "miss", "udp"),
        (SVC + ".", "A", "NOERROR", "hit", "udp"),
        (MISSING + ".", "AAAA", "NXDOMAIN", "miss", "tcp"),
    ]
    assert all(q["client"] == "127.0.0.1" and q["port"] > 0 and q["duration_ms"] >= 0 for q in lines)
    assert lines[1]["duration_ms"] < lines[0]["duration_ms"]  # a hit does not wait for the upstream


def test_query_log_errors_only(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.254\n")
    port = free_port()
    with FakeUpstream() as up:
        args = _agent_args(up, conf, port, "--query-log", "--query-log-errors-only", "--log-format", "json")
        with AgentProcess(args) as agent:
            for name in (SVC, MISSING, SVC, MISSING):
                assert raw_udp("127.0.0.1", port, bytes(DNSRecord.question(name).pack()))
        lines = _queries(agent)
    assert [(q["name"], q["rcode"], q["cache"]) for q in lines] == [
        (MISSING + ".", "NXDOMAIN", "miss"), (MISSING + ".", "NXDOMAIN", "hit")]  # fmt: skip


def test_query_log_off_by_default(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.254\n")
    port = free_port()
    with FakeUpstream() as up, AgentProcess(_agent_args(up, conf, port)) as agent:
        assert raw_udp("127.0.0.1", port, bytes(DNSRecord.question(SVC).pack()))
    assert "nodecache.query" not in agent.log


async def test_an_upstream_outage_logs_one_warning_not_one_per_query(
    upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.set_behaviour(None, Behaviour.drop())
    cfg = make_config([f"127.0.0.1:{upstream.port}"], try_timeout=0.1, timeout=0.2, max_fails=0)
    caplog.set_level(logging.WARNING, logger="nodecache")
    async with running(cfg) as srv:
        port = srv.bound[0][1]
        names = [f"o{i}.wild.cluster.local" for i in range(30)]
        await asyncio.gather(*(ask_udp(port, bytes(DNSRecord.question(n).pack())) for n in names))
        assert srv.resolver.zones[0].stats.servfail == 30
    warnings = [r for r in caplog.records if "no upstream answered" in r.getMessage()]
    assert len(warnings) == 1


async def test_with_the_query_log_on_hits_are_still_sampled_and_timed(
    upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    from dataclasses import replace

    caplog.set_level(logging.INFO, logger="nodecache.query")
    cfg = replace(make_config([f"127.0.0.1:{upstream.port}"]), query_log=True)
    async with running(cfg) as srv:
        port = srv.bound[0][1]
        for _ in range(5):
            assert await ask_udp(port, bytes(DNSRecord.question(SVC).pack()))
        srv.resolver.tick()
        assert srv.resolver.activity.hit_mean > 0  # feeds the hits' share of the duration histogram
        assert srv.resolver.activity.names.counts  # and the top names
    assert [r.fields["cache"] for r in caplog.records if r.name == "nodecache.query"] == ["miss"] + ["hit"] * 4
