"""/health and /ready on a running agent, and the order of things on SIGTERM.

/ready must answer 200 only when a real query through the agent's own UDP and
TCP listeners succeeds; these tests break the listeners and watch it flip.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from dnslib import DNSRecord

from nodecache.config import Config
from nodecache.errors import ListenError
from tests.conftest import NO_NODE_SETUP, AgentProcess, make_config, running
from tests.support.clients import raw_udp
from tests.support.fakeupstream import Behaviour, FakeUpstream
from tests.support.http import http_get
from tests.support.net import free_port

SVC = "kubernetes.default.svc.cluster.local"


def with_health(config: Config) -> tuple[Config, int]:
    port = free_port()
    return replace(config, health_address=f"127.0.0.1:{port}"), port


async def get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    return await asyncio.to_thread(http_get, "127.0.0.1", port, path, method)


async def test_health_and_ready_answer_200_on_a_working_agent(upstream: FakeUpstream) -> None:
    cfg, hport = with_health(make_config([f"127.0.0.1:{upstream.port}"]))
    async with running(cfg) as srv:
        assert await get(hport, "/health") == (200, "OK\n")
        assert await get(hport, "/ready") == (200, "ready\n")
        # The probe asked the agent's own zone over both transports, as hits, and nothing upstream.
        assert sum(srv.resolver.local.cache.tallies[next(iter(srv.resolver.local.cache.tallies))]) == 2
    assert upstream.count() == 0


async def test_ready_needs_no_upstream(upstream: FakeUpstream) -> None:
    upstream.set_behaviour(None, Behaviour.drop())
    cfg, hport = with_health(make_config([f"127.0.0.1:{upstream.port}"]))
    async with running(cfg):
        assert (await get(hport, "/ready"))[0] == 200


@pytest.mark.parametrize("broken, what", [(0, "udp"), (1, "tcp")], ids=["udp", "tcp"])
async def test_ready_flips_to_503_naming_the_broken_listener(upstream: FakeUpstream, broken: int, what: str) -> None:
    cfg, hport = with_health(make_config([f"127.0.0.1:{upstream.port}"]))
    async with running(cfg) as srv:
        port = srv.bound[0][1]
        srv.readiness.cache_seconds = 0.1  # the 1 s cache has its own test
        assert (await get(hport, "/ready"))[0] == 200
        srv._closers[broken].close()  # the UDP transport, or the TCP server
        await asyncio.sleep(srv.readiness.cache_seconds + 0.05)
        status, body = await get(hport, "/ready")
        assert (await get(hport, "/health"))[0] == 200  # alive all the same
    assert status == 503
    assert body.startswith(f"not ready: {what} 127.0.0.1 port {port}: ")
    other = "tcp" if what == "udp" else "udp"
    assert f"{other} 127.0.0.1" not in body


async def test_ready_includes_the_node_check(upstream: FakeUpstream) -> None:
    cfg, hport = with_health(make_config([f"127.0.0.1:{upstream.port}"]))
    async with running(cfg) as srv:
        srv.node_ready = lambda: "interface nodelocaldns has no address 169.254.20.10"  # type: ignore[method-assign]
        status, body = await get(hport, "/ready")
    assert (status, body) == (503, "not ready: interface nodelocaldns has no address 169.254.20.10\n")


async def test_ready_result_is_cached_for_a_second(upstream: FakeUpstream) -> None:
    cfg, hport = with_health(make_config([f"127.0.0.1:{upstream.port}"]))
    async with running(cfg) as srv:
        local = srv.resolver.local.cache

        def probes() -> int:
            return local.hits + srv.resolver.local.stats.misses

        await asyncio.gather(*(get(hport, "/ready") for _ in range(10)))
        assert probes() == 2  # one UDP and one TCP query for ten probes
        await asyncio.sleep(1.05)
        await get(hport, "/ready")
        assert probes() == 4


async def test_http_methods_paths_and_bad_requests(upstream: FakeUpstream) -> None:
    cfg, hport = with_health(make_config([f"127.0.0.1:{upstream.port}"]))
    cfg = replace(cfg, metrics_address=cfg.health_address)  # one server for all three paths
    async with running(cfg):
        assert await get(hport, "/health", "HEAD") == (200, "")
        assert (await get(hport, "/ready", "POST"))[0] == 405
        status, body = await get(hport, "/nope")
        assert status == 404 and "/health /metrics /ready" in body
        assert (await get(hport, "/metrics"))[0] == 200

        def raw() -> bytes:
            with socket.create_connection(("127.0.0.1", hport), timeout=5) as s:
                s.sendall(b"NONSENSE\r\n\r\n")
                return s.recv(1024)

        assert (await asyncio.to_thread(raw)).startswith(b"HTTP/1.1 400 ")


async def test_a_busy_port_is_a_clear_startup_error(upstream: FakeUpstream) -> None:
    with socket.socket() as taken:  # no SO_REUSEPORT: a real conflict
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = replace(make_config([f"127.0.0.1:{upstream.port}"]), metrics_address=f"127.0.0.1:{port}")
        with pytest.raises(ListenError, match=f"cannot serve /metrics: cannot listen on 127.0.0.1 port {port}/tcp: .*--metrics"):
            async with running(cfg):
                pass


def test_sigterm_turns_ready_off_first_then_answers_through_the_lameduck(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.254\n")
    port = free_port()
    with FakeUpstream() as up:
        agent = AgentProcess(["--listen", "127.0.0.1", "--port", str(port), "--upstream", f"127.0.0.1:{up.port}",
                              "--node-resolv-conf", str(conf), "--lameduck", "1.5"]).start()  # fmt: skip
        assert agent.health_port is not None and agent.proc is not None
        try:
            assert http_get("127.0.0.1", agent.health_port, "/ready") == (200, "ready\n")
            started = time.monotonic()
            agent.proc.send_signal(signal.SIGTERM)
            status, body = 200, ""
            for _ in range(50):  # bounded: readiness must flip within a fraction of the lameduck
                status, body = http_get("127.0.0.1", agent.health_port, "/ready")
                if status == 503:
                    break
                time.sleep(0.02)
            flipped = time.monotonic() - started
            assert status == 503 and "shutting down" in body
            assert flipped < 1.0
            reply = raw_udp("127.0.0.1", port, bytes(DNSRecord.question(SVC).pack()), timeout=1)
            assert reply is not None and DNSRecord.parse(reply).rr  # still answering
            assert http_get("127.0.0.1", agent.health_port, "/health")[0] == 200  # and alive
            agent.proc.wait(10)
            elapsed = time.monotonic() - started
        finally:
            code = agent.stop()
    assert code == 0
    assert 1.5 <= elapsed < 6
    log = agent.log
    assert log.index("stopping") < log.index("not ready now; still answering for 1.5s (lameduck)")


def test_a_second_signal_cuts_the_lameduck_short(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.254\n")
    with FakeUpstream() as up:
        agent = AgentProcess(["--listen", "127.0.0.1", "--port", str(free_port()), "--upstream", f"127.0.0.1:{up.port}",
                              "--node-resolv-conf", str(conf), "--lameduck", "30"]).start()  # fmt: skip
        assert agent.proc is not None
        try:
            started = time.monotonic()
            agent.proc.send_signal(signal.SIGTERM)
            for _ in range(100):
                if "lameduck" in agent.log:
                    break
                time.sleep(0.02)
            agent.proc.send_signal(signal.SIGTERM)
            agent.proc.wait(10)
        finally:
            code = agent.stop()
    assert code == 0 and time.monotonic() - started < 10
    assert "lameduck cut short by a second signal" in agent.log


def test_run_with_a_busy_metrics_port_exits_2_with_one_line(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.254\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "nodecache", "run", *NO_NODE_SETUP, "--listen", "127.0.0.1", "--port",
             str(free_port()), "--upstream", "127.0.0.1:9", "--node-resolv-conf", str(conf), "--control-socket", "off",
             "--health-address", "off", "--metrics-address", f"127.0.0.1:{busy}", "--lameduck", "5"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "INFO" not in line]
    assert errors == [f"nodecache: cannot serve /metrics: cannot listen on 127.0.0.1 port {busy}/tcp: Address already in "
                      "use; is the address configured on this host, and is the port free? (--metrics-address, "
                      "--health-address)"]  # fmt: skip
