"""Bounded client TCP connections (RFC 7766 section 10): back-pressure, pipelining cap, resets, caps.

Real loopback sockets throughout. The mechanics tests serve a stub resolver
through the real TcpConnection and listening socket on the test's own event
loop (the stock asyncio loop), so each can decide exactly which query is a
hit, which a miss and when a miss is answered. The caps tests run the real
agent in-process; the memory test runs `nodecache run` as a subprocess (on
uvloop when installed) and reads its RSS from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import pytest

from nodecache import wire
from nodecache.cli import build_config, run
from nodecache.counters import Activity
from nodecache.errors import ConfigError
from nodecache.listeners import (
    MAX_DNS_MESSAGE,
    MAX_PIPELINED,
    TCP_CONNECTION_BUDGET,
    TCP_WRITE_HIGH,
    TcpClients,
    TcpConnection,
    make_socket,
)
from nodecache.stats import render
from tests.conftest import AgentProcess, make_config, running
from tests.dnsmsg import query
from tests.support.clients import raw_tcp, read_framed
from tests.support.fakeupstream import FakeUpstream
from tests.support.http import scrape, value
from tests.support.net import free_port
from tests.support.tcpabuse import (
    HUGE_NAME,
    framed,
    huge_records,
    open_never_readers,
    settled_rss_kib,
)

REPLY_SIZE = 15_000  # the stub's answers: as big as the ~15 KB headless-service answer of the memory test
SMALL_RCVBUF = 4096
WAIT = 5.0  # bound on every wait for something the agent does


# ---------------------------------------------------------------------------- a stub resolver


class StubResolver:
    """Answers every query itself: a hit of REPLY_SIZE bytes, or (misses=True) a miss answered on `release`."""

    def __init__(self, misses: bool = False) -> None:
        self.misses = misses
        self.activity = Activity(time.monotonic)
        self.query_log = None
        self.seen = 0  # queries the listener handed over: read and acted on
        self.release = asyncio.Event()
        self.waiting: set[asyncio.Task[None]] = set()

    def answer(self, data: bytes, via: int) -> bytes | wire.Query:
        self.seen += 1
        return wire.scan_query(data) if self.misses else self.reply(data)

    def submit(self, data: bytes, q: wire.Query, via: int, deliver: Any, token: Any) -> None:
        """As Resolver.submit: the answer goes to `deliver` later, here once `release` is set."""

        async def later() -> None:
            await self.release.wait()
            deliver(token, self.reply(data), "miss")

        task = asyncio.get_running_loop().create_task(later())
        self.waiting.add(task)
        task.add_done_callback(self.waiting.discard)

    @staticmethod
    def reply(data: bytes) -> bytes:
        """The query's ID, QR set, then padding: the client only checks the ID and the size."""
        return data[:2] + b"\x81\x80" + bytes(REPLY_SIZE - 4)


class Listening:
    """A real TCP listening socket serving TcpConnection for a stub resolver; `conns` are the connections made."""

    def __init__(self, resolver: StubResolver, clients: TcpClients, port: int) -> None:
        self.resolver, self.clients, self.port = resolver, clients, port
        self.conns: list[TcpConnection] = []


@contextlib.asynccontextmanager
async def listening(resolver: StubResolver, idle: float = 30.0) -> AsyncIterator[Listening]:
    clients = TcpClients(100, 100)
    loop = asyncio.get_running_loop()
    sock = make_socket("127.0.0.1", 0, socket.SOCK_STREAM)
    out = Listening(resolver, clients, sock.getsockname()[1])

    def made() -> TcpConnection:
        conn = TcpConnection(resolver, idle, clients)  # type: ignore[arg-type]
        out.conns.append(conn)
        return conn

    server = await loop.create_server(made, sock=sock)
    try:
        yield out
    finally:
        resolver.release.set()
        server.close()
        for conn in out.conns:
            if conn.transport is not None:
                conn.transport.abort()
        if resolver.waiting:
            await asyncio.wait(set(resolver.waiting), timeout=1.0)


def client(port: int, rcvbuf: int | None = SMALL_RCVBUF) -> socket.socket:
    """A blocking client socket; a small receive buffer makes unread replies back up into the agent at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(WAIT)
    sock.connect(("127.0.0.1", port))
    return sock


def read_replies(sock: socket.socket, n: int, timeout: float = WAIT) -> list[bytes]:
    """Up to `n` framed replies, read until they are all in, EOF, or `timeout` (blocking; run it in a thread)."""
    return read_framed(sock, n, time.monotonic() + timeout)


async def until(predicate: object, timeout: float = WAIT) -> bool:
    """Let the loop run until `predicate()` holds (bounded); returns whether it did."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def queries(n: int, name: str = "web.default.svc.cluster.local") -> bytes:
    return b"".join(framed(query(name, qid=i)) for i in range(n))


# ---------------------------------------------------------------------------- back-pressure mechanics


def test_the_per_connection_bound_holds_with_the_largest_answers() -> None:
    """The arithmetic of the comment in listeners.py: the write bound, the answer that crosses it,
    and every miss in flight answering with a 64 KiB message stay within the budget of about 1 MiB."""
    worst = TCP_WRITE_HIGH + MAX_DNS_MESSAGE + MAX_PIPELINED * MAX_DNS_MESSAGE
    assert worst <= TCP_CONNECTION_BUDGET == 1 << 20
    assert MAX_PIPELINED >= 8  # still room for a pipelining resolver's misses


async def test_unread_replies_pause_reading_and_every_reply_comes_once_the_client_reads() -> None:
    sent = 300  # 300 answers of 15 KB: 4.5 MB, far beyond the kernel buffers of a 4 KiB-receive-buffer client
    async with listening(StubResolver()) as srv:
        sock = client(srv.port)
        with sock:
            sock.sendall(queries(sent))
            assert await until(lambda: srv.conns and srv.conns[0].writing_paused)
            conn = srv.conns[0]
            assert conn.stalled and srv.clients.paused_unread == 1
            assert conn.transport is not None
            assert conn.transport.get_write_buffer_size() <= TCP_WRITE_HIGH + REPLY_SIZE + 2
            assert srv.resolver.seen < sent  # the queries after the one that filled the buffer wait unread
            replies = await asyncio.to_thread(read_replies, sock, sent)
        assert [int.from_bytes(r[:2], "big") for r in replies] == list(range(sent))  # all, in order, whole
        assert {len(r) for r in replies} == {REPLY_SIZE}
        assert srv.resolver.seen == sent
        assert srv.clients.aborted_blocked == 0


async def test_misses_in_flight_per_connection_are_capped_and_reading_resumes_at_half() -> None:
    sent = 5 * MAX_PIPELINED
    async with listening(StubResolver(misses=True)) as srv:
        sock = client(srv.port, rcvbuf=None)
        with sock:
            sock.sendall(queries(sent))  # one small write: the agent reads it all in one go
            assert await until(lambda: srv.conns and srv.conns[0].outstanding == MAX_PIPELINED)
            conn = srv.conns[0]
            await asyncio.sleep(0.2)  # the loop gets time to read and act on more, if it wrongly would
            assert (conn.outstanding, srv.resolver.seen) == (MAX_PIPELINED, MAX_PIPELINED)
            assert conn.stalled and conn.pipeline_full and srv.clients.paused_pipelined == 1
            srv.resolver.release.set()
            replies = await asyncio.to_thread(read_replies, sock, sent)
        assert sorted(int.from_bytes(r[:2], "big") for r in replies) == list(range(sent))
        assert srv.clients.paused_pipelined >= 2  # once per batch the cap let through


async def test_a_connection_whose_replies_stay_unread_is_reset_after_the_idle_timeout() -> None:
    idle = 0.5
    async with listening(StubResolver(), idle=idle) as srv:
        sock = client(srv.port)
        with sock:
            sock.sendall(queries(100))
            assert await until(lambda: srv.conns and srv.conns[0].writing_paused)
            started = time.monotonic()
            assert await until(lambda: srv.clients.open == 0)
            assert time.monotonic() - started >= idle / 2  # not at once: after the idle timeout (less polling delay)
            assert srv.clients.aborted_blocked == 1
            assert srv.conns[0].transport is None  # connection_lost ran: timers gone, slot released
            with pytest.raises(ConnectionResetError):
                await asyncio.to_thread(lambda: [sock.recv(1 << 16) for _ in range(1000)])


async def test_a_slow_reader_that_drains_in_time_is_not_reset_and_is_closed_cleanly_when_idle() -> None:
    idle = 2.0
    async with listening(StubResolver(), idle=idle) as srv:
        sock = client(srv.port)
        with sock:
            sock.sendall(queries(50))
            assert await until(lambda: srv.conns and srv.conns[0].writing_paused)
            replies = await asyncio.to_thread(read_replies, sock, 50)
            assert len(replies) == 50
            eof = await asyncio.to_thread(read_replies, sock, 1, idle + WAIT)  # the idle close: a clean end
            assert eof == []
        assert srv.clients.aborted_blocked == 0 and srv.clients.open == 0


# ---------------------------------------------------------------------------- connection caps


def closed_at_once(sock: socket.socket) -> bool:
    """True when the agent ends the connection without a word (EOF or reset)."""
    sock.settimeout(WAIT)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def connect_from(source: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(WAIT)
    sock.connect(("127.0.0.1", port))
    return sock


def answered(sock: socket.socket) -> bool:
    sock.sendall(framed(query("kubernetes.default.svc.cluster.local", qid=99)))
    replies = read_replies(sock, 1)
    return len(replies) == 1 and replies[0][:2] == (99).to_bytes(2, "big")


async def test_connections_beyond_the_per_client_and_total_caps_are_closed_at_once_and_counted(
    upstream: FakeUpstream,
) -> None:
    cfg = replace(make_config([f"127.0.0.1:{upstream.port}"]), max_tcp_connections=3, max_tcp_per_client=2)
    async with running(cfg) as srv:
        port = srv.bound[0][1]
        tcp = srv.tcp
        a1, a2 = connect_from("127.0.0.1", port), connect_from("127.0.0.1", port)
        assert await until(lambda: tcp.open == 2)
        a3 = connect_from("127.0.0.1", port)  # a third from 127.0.0.1: over the per-client cap
        assert await asyncio.to_thread(closed_at_once, a3)
        b1 = connect_from("127.0.0.2", port)  # another address: admitted, three open in all
        assert await until(lambda: tcp.open == 3)
        c1 = connect_from("127.0.0.3", port)  # over the total cap
        assert await asyncio.to_thread(closed_at_once, c1)
        assert (tcp.refused_per_client, tcp.refused_total) == (1, 1)
        for sock in (a1, a2, b1):
            assert await asyncio.to_thread(answered, sock)  # the admitted ones are served
        report = srv._stats({})["tcp"]
        assert report["connections"] == 3 and report["clients"] == 2
        assert report["refused"] == {"total": 1, "per_client": 1}
        text = render(srv._stats({}))  # what `nodecache stats` prints
        assert "\ntcp         3 open / 3 (2 per client), refused 1 at the cap, 1 per client; 0 reset unread" in text
        a1.close()
        assert await until(lambda: tcp.open == 2)
        c2 = connect_from("127.0.0.3", port)  # a slot is free again
        assert await asyncio.to_thread(answered, c2)
        for sock in (a2, a3, b1, c1, c2):
            sock.close()
        assert await until(lambda: tcp.open == 0)
        assert tcp.by_address == {}  # the per-address map keeps only addresses with connections open


async def test_tcp_counters_are_exported_as_metrics(upstream: FakeUpstream) -> None:
    mport = free_port()
    cfg = replace(
        make_config([f"127.0.0.1:{upstream.port}"]), max_tcp_per_client=1, metrics_address=f"127.0.0.1:{mport}"
    )
    async with running(cfg) as srv:
        port = srv.bound[0][1]
        first = connect_from("127.0.0.1", port)
        assert await until(lambda: srv.tcp.open == 1)
        second = connect_from("127.0.0.1", port)
        assert await asyncio.to_thread(closed_at_once, second)
        m = await asyncio.to_thread(scrape, "127.0.0.1", mport)
        first.close()
        second.close()
    assert value(m, "nodecache_tcp_connections") == 1
    assert value(m, "nodecache_tcp_refused_total", reason="per_client") == 1
    assert value(m, "nodecache_tcp_refused_total", reason="total") == 0
    assert value(m, "nodecache_tcp_aborted_total", reason="blocked") == 0
    assert {dict(k)["reason"] for k in m["nodecache_tcp_read_paused_total"]} == {"unread", "pipelined"}


# ---------------------------------------------------------------------------- configuration


def test_tcp_caps_are_flags_with_variables_and_reach_the_config_with_or_without_a_corefile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_cli_corefile import opts_with, stock_opts

    flags = {o.name: o for o in run.params if isinstance(o, click.Option)}
    assert flags["max_tcp_connections"].envvar == "NODECACHE_MAX_TCP_CONNECTIONS"
    assert flags["max_tcp_per_client"].envvar == "NODECACHE_MAX_TCP_PER_CLIENT"
    assert (flags["max_tcp_connections"].default, flags["max_tcp_per_client"].default) == (1024, 128)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 203.0.113.1\n")
    plain = build_config(opts_with(upstream=("192.0.2.10",), node_resolv_conf=str(resolv), max_tcp_connections=50,
                                   max_tcp_per_client=5))  # fmt: skip
    assert (plain.max_tcp_connections, plain.max_tcp_per_client) == (50, 5)
    monkeypatch.setenv("KUBE_DNS_UPSTREAM_SERVICE_HOST", "192.0.2.53")
    corefile = build_config(stock_opts(resolv, max_tcp_connections=60, max_tcp_per_client=6))
    assert (corefile.max_tcp_connections, corefile.max_tcp_per_client) == (60, 6)


@pytest.mark.parametrize("caps", [{"max_tcp_connections": 0}, {"max_tcp_per_client": 0}])
def test_a_tcp_cap_below_one_is_refused(caps: dict[str, int]) -> None:
    with pytest.raises(ConfigError, match="TCP connection caps"):
        replace(make_config(["192.0.2.10"]), **caps)


def test_a_reload_applies_new_caps_to_new_connections() -> None:
    from nodecache.server import Server

    server = Server(make_config(["192.0.2.10"]))
    new = replace(server.config, max_tcp_connections=7, max_tcp_per_client=3)
    asyncio.run(server._apply(new))
    assert (server.tcp.max_total, server.tcp.max_per_client) == (7, 3)


# ---------------------------------------------------------------------------- the agent's memory


NEVER_READERS = 4
IDLE = 8.0  # long enough to measure RSS while the never-readers are held, short enough for a test
PIPELINED_GOOD = 20


def stats(sock: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "nodecache", "stats", "--json", "--control-socket", sock],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow
def test_never_reading_clients_cost_at_most_about_a_mib_each_are_reset_and_others_are_served(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.254\n")
    port = free_port()
    args = ["--listen", "127.0.0.1", "--port", str(port), "--node-resolv-conf", str(conf),
            "--tcp-idle-timeout", str(IDLE)]  # fmt: skip
    with FakeUpstream(huge_records()) as up, AgentProcess([*args, "--upstream", f"127.0.0.1:{up.port}"]) as agent:
        assert agent.proc is not None and agent.control_socket is not None and agent.metrics_port is not None
        big = raw_tcp("127.0.0.1", port, [query(HUGE_NAME, "TXT")], timeout=WAIT)
        assert len(big) == 1 and len(big[0]) > 14_000  # cached now: the never-readers' queries are all hits
        before = settled_rss_kib(agent.proc.pid)
        readers = open_never_readers("127.0.0.1", port, NEVER_READERS)
        after = settled_rss_kib(agent.proc.pid)
        assert all(r.sent > 1000 for r in readers)  # each asked for over 15 MB of answers
        # (b) a well-behaved client pipelining on the same agent gets every answer, in full.
        good = raw_tcp("127.0.0.1", port, [query(HUGE_NAME, "TXT", qid=i) for i in range(PIPELINED_GOOD)], timeout=WAIT)
        assert sorted(int.from_bytes(r[:2], "big") for r in good) == list(range(PIPELINED_GOOD))
        assert {len(r) for r in good} == {len(big[0])}
        held = stats(agent.control_socket)["tcp"]
        assert held["connections"] == NEVER_READERS, "RSS must be read while the never-readers are held; raise IDLE"
        assert held["paused"]["unread"] >= NEVER_READERS
        grown = after - before
        assert grown <= NEVER_READERS * 1024, f"RSS grew {grown} KiB for {NEVER_READERS} never-reading clients"
        # (a) each is reset once its replies went unread for the idle timeout, and counted.
        assert all(r.closed_by_peer(IDLE + WAIT) for r in readers)
        for r in readers:
            r.close()
        deadline = time.monotonic() + WAIT
        while (report := stats(agent.control_socket)["tcp"])["connections"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert report["connections"] == 0
        assert report["aborted"]["blocked"] == NEVER_READERS
        m = scrape("127.0.0.1", agent.metrics_port)
        assert value(m, "nodecache_tcp_aborted_total", reason="blocked") == NEVER_READERS
        assert value(m, "nodecache_tcp_connections") == 0

