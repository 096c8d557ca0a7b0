"""Reload: SIGHUP or a changed ConfigMap swaps the configuration in without losing a query.

In-process tests check what is kept (zone caches, listener sockets) and that an
invalid configuration keeps the old one; subprocess tests drive the real signals
and the `..data` symlink swap of a ConfigMap volume, under load.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from nodecache.config import CachePolicy, Config
from nodecache.errors import ConfigError
from nodecache.server import Server, watch_signature
from tests.conftest import AgentProcess, ask_udp, make_config, with_zone
from tests.dnsmsg import query
from tests.support.clients import raw_udp
from tests.support.fakeupstream import Behaviour, FakeUpstream
from tests.support.http import scrape, value
from tests.support.net import free_port

NAME = "kubernetes.default.svc.cluster.local"


async def test_reload_keeps_unchanged_zones_and_their_cache(upstream: FakeUpstream) -> None:
    first = replace(make_config([f"127.0.0.1:{upstream.port}"]), port=free_port())
    holder: list[Config | Exception] = [first]

    def rebuild() -> Config:
        if isinstance(holder[0], Exception):
            raise holder[0]
        return holder[0]

    server = Server(first, rebuild)
    await server.startup()
    try:
        port = server.bound[0][1]
        assert await ask_udp(port, query(NAME, qid=1))
        asked = len(upstream.log)
        cluster, root = server.resolver.zones[0], server.resolver.zones[3]
        transport = server._listeners["127.0.0.1"][0]
        holder[0] = with_zone(first, ".", cache=CachePolicy(success_max_ttl=60))
        assert await server.reload()
        assert server.resolver.zones[0] is cluster and server.resolver.zones[3] is not root
        assert server._listeners["127.0.0.1"][0] is transport  # same address and port: same socket
        assert await ask_udp(port, query(NAME, qid=2))
        assert len(upstream.log) == asked  # answered from the kept cache
        # An invalid configuration: the old one keeps running, and the failure is counted.
        running_config = server.config
        holder[0] = ConfigError("Corefile:3: unknown directive")
        assert not await server.reload()
        assert server.reload_failed == 1 and server.config is running_config
        assert await ask_udp(port, query(NAME, qid=3))
    finally:
        server.request_stop()
        await server.shutdown()


async def test_a_miss_in_flight_finishes_across_a_reload_that_replaces_its_zone(upstream: FakeUpstream) -> None:
    """The zone's upstreams are retired by the reload, yet the query already waiting on them is answered."""
    first = replace(make_config([f"127.0.0.1:{upstream.port}"]), port=free_port())
    second = with_zone(first, "cluster.local.", cache=CachePolicy(success_max_ttl=10))
    server = Server(first, lambda: second)
    await server.startup()
    try:
        upstream.set_behaviour(NAME, Behaviour.delay(0.3))  # within the 0.5 s try timeout
        pending = asyncio.ensure_future(ask_udp(server.bound[0][1], query(NAME, qid=9)))
        await asyncio.sleep(0.1)  # the miss is now waiting on the upstream
        old_zone = server.resolver.zones[0]
        assert await server.reload()
        assert server.resolver.zones[0] is not old_zone
        reply = await pending
        assert reply is not None and reply[3] & 0x0F == 0 and reply[7] == 1  # NOERROR with its answer
    finally:
        server.request_stop()
        await server.shutdown()


async def test_reload_opens_and_closes_only_the_listeners_that_changed(upstream: FakeUpstream) -> None:
    first = replace(make_config([f"127.0.0.1:{upstream.port}"]), port=free_port())
    second = replace(first, listen=("127.0.0.1", "127.0.0.2"))
    configs = iter([second, first])
    server = Server(first, lambda: next(configs))
    await server.startup()
    try:
        port = first.port
        kept = server._listeners["127.0.0.1"]
        assert await server.reload()
        assert server._listeners["127.0.0.1"] is kept
        assert sorted(server.bound) == [("127.0.0.1", port), ("127.0.0.2", port)]
        assert await ask_udp(port, query(NAME, qid=4), host="127.0.0.2")
        assert await server.reload()
        assert server.bound == [("127.0.0.1", port)] and server._listeners["127.0.0.1"] is kept
        assert await ask_udp(port, query(NAME, qid=5), host="127.0.0.2", timeout=0.5) is None
    finally:
        server.request_stop()
        await server.shutdown()


async def test_a_reload_that_changes_only_the_port_moves_every_listener_to_it(upstream: FakeUpstream) -> None:
    first = replace(make_config([f"127.0.0.1:{upstream.port}"]), port=free_port())
    second = replace(first, port=free_port())
    server = Server(first, lambda: second)
    await server.startup()
    try:
        assert await server.reload()
        assert server.bound == [("127.0.0.1", second.port)]
        assert await ask_udp(second.port, query(NAME, qid=6))
        assert await ask_udp(first.port, query(NAME, qid=7), timeout=0.5) is None
    finally:
        server.request_stop()
        await server.shutdown()


def test_watch_signature_follows_the_configmap_data_symlink(tmp_path: Path) -> None:
    mount = configmap(tmp_path, "one")
    before = watch_signature([str(mount / "Corefile"), str(mount)])
    assert watch_signature([str(mount / "Corefile"), str(mount)]) == before
    swap(mount, "two")
    assert watch_signature([str(mount / "Corefile"), str(mount)]) != before


# ---------------------------------------------------------------------- a real agent


def configmap(root: Path, text: str) -> Path:
    """A ConfigMap volume as kubelet lays it out: Corefile -> ..data/Corefile, ..data -> a timestamped dir."""
    mount = root / "config"
    mount.mkdir()
    version = mount / "..v1"
    version.mkdir()
    (version / "Corefile").write_text(text)
    (mount / "..data").symlink_to("..v1")
    (mount / "Corefile").symlink_to("..data/Corefile")
    return mount


def swap(mount: Path, text: str) -> None:
    """Publish a new version the way kubelet does: a new directory, then an atomic rename of ..data."""
    n = len([p for p in mount.iterdir() if p.name.startswith("..v")]) + 1
    version = mount / f"..v{n}"
    version.mkdir()
    (version / "Corefile").write_text(text)
    (mount / "..data_tmp").symlink_to(version.name)
    os.replace(mount / "..data_tmp", mount / "..data")


def corefile(upstream_port: int, extra_zone: str = "", reload: str = "reload 2s") -> str:
    text = (
        f"cluster.local:53 in-addr.arpa:53 {{\n    {reload}\n    cache 30\n    bind 127.0.0.1\n"
        f"    forward . 127.0.0.1:{upstream_port} {{\n        force_tcp\n    }}\n}}\n"
    )
    if extra_zone:
        text += f"{extra_zone}:53 {{\n    cache 5\n    bind 127.0.0.1\n    forward . 127.0.0.1:{upstream_port}\n}}\n"
    return text


def wait_for(agent: AgentProcess, pattern: str, count: int = 1, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(re.findall(pattern, agent.log)) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} x{count} not logged within {timeout}s:\n{agent.log}")


def test_configmap_swap_reloads_and_an_invalid_one_is_kept_out(tmp_path: Path, node_resolv_conf: Path) -> None:
    port = free_port()
    with FakeUpstream() as up:
        mount = configmap(tmp_path, corefile(up.port))
        args = ["--config", str(mount / "Corefile"), "--port", str(port), "--node-resolv-conf", str(node_resolv_conf)]
        with AgentProcess(args) as agent:
            assert raw_udp("127.0.0.1", port, query("x.example.test", qid=1))[3] & 0x0F == 5  # REFUSED: no zone
            swap(mount, corefile(up.port, extra_zone="example.test"))
            wait_for(agent, r"reloaded: 3 zones \(2 kept with their cache\)")
            assert raw_udp("127.0.0.1", port, query("x.example.test", qid=2)) is not None
            assert asked(up, "x.example.test.") == 1  # the new zone forwards
            swap(mount, corefile(up.port, extra_zone="example.test") + "bogus {\n}\n")
            wait_for(agent, r"reload failed, still running the previous configuration: .*Corefile:\d+")
            assert agent.metrics_port is not None
            metrics = scrape("127.0.0.1", agent.metrics_port)
            assert value(metrics, "coredns_reload_failed_total") == 1
            assert raw_udp("127.0.0.1", port, query("y.example.test", qid=3)) is not None
            assert asked(up, "y.example.test.") == 1  # still the previous, valid configuration


def asked(up: FakeUpstream, name: str) -> int:
    return sum(1 for r in up.log if r.qname.lower() == name)


class Load(threading.Thread):
    """A bounded stream of UDP queries, one at a time; counts those never answered."""

    def __init__(self, port: int, count: int) -> None:
        super().__init__(daemon=True)
        self.port, self.count = port, count
        self.sent = self.lost = 0

    def run(self) -> None:
        for i in range(self.count):
            self.sent += 1
            if raw_udp("127.0.0.1", self.port, query(NAME, qid=i & 0xFFFF), timeout=2.0) is None:
                self.lost += 1


def test_sighup_reload_under_load_loses_no_query(tmp_path: Path, node_resolv_conf: Path) -> None:
    port = free_port()
    with FakeUpstream() as up:
        path = tmp_path / "Corefile"
        path.write_text(corefile(up.port, reload=""))
        args = ["--config", str(path), "--port", str(port), "--node-resolv-conf", str(node_resolv_conf)]
        with AgentProcess(args) as agent:
            assert agent.proc is not None
            load = Load(port, 1500)
            load.start()
            for i in range(4):  # alternate between two valid configurations while queries flow
                path.write_text(corefile(up.port, extra_zone="example.test" if i % 2 == 0 else "", reload=""))
                agent.proc.send_signal(signal.SIGHUP)
                wait_for(agent, r"reloaded: ", count=i + 1)
                time.sleep(0.2)
            load.join(60)
            assert not load.is_alive() and load.sent == 1500
            assert load.lost == 0
            assert "Traceback" not in agent.log


@pytest.mark.skipif(shutil.which("dnsperf") is None, reason="dnsperf is not installed (Debian package dnsperf)")
def test_reload_under_dnsperf_loses_no_query(tmp_path: Path, node_resolv_conf: Path) -> None:
    """Six reloads during 5 s of dnsperf at 2,000 q/s; not one query may go unanswered.

    The names are asked once before the load, so each dnsperf query is a cache hit and
    a loss can only be the reload's doing (a miss in flight across a reload has its own
    test above). Without this the first query was a miss on a fresh TCP connection, and
    on a busy machine it once took longer than dnsperf's 3 s.
    """
    port = free_port()
    names = (NAME, "web.default.svc.cluster.local", "nope.cluster.local")
    with FakeUpstream() as up:
        path = tmp_path / "Corefile"
        path.write_text(corefile(up.port, reload=""))
        data = tmp_path / "queries"
        data.write_text("".join(f"{n} A\n" for n in names))
        args = ["--config", str(path), "--port", str(port), "--node-resolv-conf", str(node_resolv_conf)]
        with AgentProcess(args) as agent:
            assert agent.proc is not None
            for qid, name in enumerate(names, 1):
                assert raw_udp("127.0.0.1", port, query(name, qid=qid), timeout=10.0) is not None, agent.log
            perf = subprocess.Popen(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(data), "-l", "5",
                                     "-Q", "2000", "-t", "3"], stdout=subprocess.PIPE, text=True)  # fmt: skip
            try:
                for i in range(6):
                    time.sleep(0.6)
                    path.write_text(corefile(up.port, extra_zone="example.test" if i % 2 == 0 else "", reload=""))
                    agent.proc.send_signal(signal.SIGHUP)
                out, _ = perf.communicate(timeout=30)
            finally:
                if perf.poll() is None:
                    perf.kill()
                    perf.wait(5)
            wait_for(agent, r"reloaded: ", count=6)
    sent = int(re.search(r"Queries sent:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    lost = int(re.search(r"Queries lost:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    assert sent > 1000 and lost == 0, out + "\nagent log:\n" + agent.log
