"""Shared fixtures: a programmable upstream, in-process and subprocess agents."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from nodecache import PURE_PYTHON, PURE_PYTHON_ENV, build
from nodecache.config import Address, CachePolicy, Config, ForwardPolicy, Zone, default_zones
from nodecache.server import Server
from tests.support import compiled
from tests.support.fakeupstream import FakeUpstream
from tests.support.net import free_port

AGENT_START_TIMEOUT = 15.0


def pytest_report_header() -> str:
    return f"nodecache hot path: {build()}" + (f" ({PURE_PYTHON_ENV} is set)" if PURE_PYTHON else "")


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to test compiled modules older than their sources: the edit would not be what runs."""
    old = [] if PURE_PYTHON else compiled.stale()
    if old:
        pytest.exit(
            f"{', '.join(old)} changed since it was compiled, and the compiled module is what would run: "
            f"run `make venv` to compile again, or set {PURE_PYTHON_ENV}=1 to test the sources",
            returncode=4,
        )


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    """A fake authoritative upstream for the sample cluster zone on 127.0.0.1."""
    with FakeUpstream() as up:
        yield up


@pytest.fixture
def node_resolv_conf(tmp_path: Path) -> Path:
    """A resolv.conf naming a loopback address where nothing answers.

    Tests must never let the agent forward to this machine's own resolvers.
    """
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 127.0.0.254\n")
    return path


def make_config(cluster: list[str], node: list[str] | None = None, **forward: Any) -> Config:
    """The default four zones with short timeouts, listening on 127.0.0.1 port 0."""
    ups = tuple(Address.parse(u) for u in cluster)
    nodes = tuple(Address.parse(u) for u in (node or ["127.0.0.254"]))
    zones = default_zones("cluster.local", ups, nodes, CachePolicy(30, 30, 0, 9984, 5), CachePolicy())
    forward.setdefault("try_timeout", 0.5)
    forward.setdefault("timeout", 1.5)
    zones = tuple(Zone(z.name, replace(z.forward, **forward), z.cache) for z in zones)
    return Config(listen=("127.0.0.1",), port=0, zones=zones)


def with_zone(config: Config, name: str, forward: ForwardPolicy | None = None, cache: CachePolicy | None = None) -> Config:
    """`config` with zone `name` replaced (its forward and/or cache policy)."""
    zones = tuple(
        Zone(z.name, forward or z.forward, cache or z.cache) if z.name == name else z for z in config.zones
    )
    return replace(config, zones=zones)


@contextlib.asynccontextmanager
async def running(config: Config) -> AsyncIterator[Server]:
    """An agent served by the test's own event loop; `server.bound[0][1]` is its port."""
    server = Server(config)
    await server.startup()
    try:
        yield server
    finally:
        server.request_stop()
        await server.shutdown()


class _OneReply(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.reply.done():
            self.reply.set_result(data)


async def ask_udp(port: int, query: bytes, timeout: float = 3.0, host: str = "127.0.0.1") -> bytes | None:
    """One UDP exchange with an in-process agent, on the agent's own loop."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(_OneReply, remote_addr=(host, port))
    try:
        transport.sendto(query)
        return await asyncio.wait_for(proto.reply, timeout)
    except TimeoutError:
        return None
    finally:
        transport.close()


async def ask_tcp(port: int, queries: list[bytes], timeout: float = 3.0) -> list[bytes]:
    """Pipelined TCP exchange with an in-process agent."""
    from tests.support.clients import raw_tcp

    return await asyncio.to_thread(raw_tcp, "127.0.0.1", port, queries, timeout)


# The CLI defaults are a node agent's (create the interface, install iptables rules);
# an agent started by a test must not touch the host, so it is told not to.
NO_NODE_SETUP = ["--no-setup-interface", "--no-setup-iptables"]
ENDPOINT_FLAGS = ("--control-socket", "--metrics-address", "--health-address", "--lameduck")
STARTED_WAIT = 10.0  # after "serving DNS on": node setup, then the operator endpoints


def safe_endpoints(args: list[str]) -> tuple[list[str], str | None, int | None, int | None]:
    """Test-safe operator endpoints for `nodecache run`, for those `args` leaves to the CLI defaults.

    The defaults are a node agent's (/run/nodecache/control.sock, 0.0.0.0:9253,
    LOCAL_IP:8080, 5 s lameduck): a test gets a control socket in a fresh short
    temporary directory (sun_path is 108 bytes), metrics and health on free
    loopback ports, and no lameduck. Returns (extra flags, socket, metrics port, health port).
    """
    given = {a.split("=", 1)[0] for a in args}
    extra: list[str] = []
    sock = metrics = health = None
    if "--control-socket" not in given:
        sock = os.path.join(tempfile.mkdtemp(prefix="nc-"), "control.sock")
        extra += ["--control-socket", sock]
    if "--metrics-address" not in given:
        metrics = free_port()
        extra += ["--metrics-address", f"127.0.0.1:{metrics}"]
    if "--health-address" not in given:
        health = free_port()
        extra += ["--health-address", f"127.0.0.1:{health}"]
    if "--lameduck" not in given:
        extra += ["--lameduck", "0"]
    return extra, sock, metrics, health


class AgentProcess:
    """`nodecache run` as a real subprocess, stopped by its PID.

    Without `node_setup` it gets NO_NODE_SETUP. `command_prefix` wraps the
    command (tests/node runs it with `ip netns exec NAME`, which execs, so
    the PID is still the agent's).
    """

    def __init__(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        node_setup: bool = False,
        command_prefix: list[str] | None = None,
    ) -> None:
        self.args = args if node_setup else [*NO_NODE_SETUP, *args]
        extra, self.control_socket, self.metrics_port, self.health_port = safe_endpoints(self.args)
        self.args = [*self.args, *extra]
        self.command_prefix = command_prefix or []
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self) -> AgentProcess:
        self.proc = subprocess.Popen(
            [*self.command_prefix, sys.executable, "-m", "nodecache", "run", *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + AGENT_START_TIMEOUT
        while time.monotonic() < deadline:
            if any("serving DNS on" in line for line in self.lines):
                return self._endpoints_up()
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("agent did not start:\n" + self.log)

    def _endpoints_up(self) -> AgentProcess:
        """Operator endpoints open last: wait (bounded) for the agent's "started in" line."""
        deadline = time.monotonic() + STARTED_WAIT
        while not any("started in " in line for line in self.lines) and time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.02)
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal the agent (by PID) and wait; returns its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._reader is not None:
            self._reader.join(2)
        if self.control_socket:
            shutil.rmtree(os.path.dirname(self.control_socket), ignore_errors=True)
        return self.proc.returncode

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def agent_port() -> int:
    return free_port()
