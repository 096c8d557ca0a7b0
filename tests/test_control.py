"""`nodecache stats` and `nodecache flush` through the real control socket of a running agent.

The CLI runs as a separate process, as an operator (or `kubectl exec`) runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnslib import EDNS0, RCODE, DNSRecord

from nodecache import build
from nodecache.control import call
from nodecache.errors import ControlError
from nodecache.resolver import flush_match
from tests.conftest import AgentProcess, ask_udp, make_config, running
from tests.support.clients import raw_udp
from tests.support.fakeupstream import FakeUpstream
from tests.support.net import free_port

SVC = "kubernetes.default.svc.cluster.local"
WEB = "web.default.svc.cluster.local"
WILD = "a.wild.cluster.local"
STATS_KEYS = {"schema", "version", "build", "uptime_seconds", "ready", "not_ready_because", "listen", "queries", "cache",
              "zones", "upstreams", "top_names", "top_clients", "sampling", "misses", "tcp", "handover", "heap",
              "udp"}  # fmt: skip
NOBODY = 65534


def query(name: str, qtype: str = "A", qid: int = 1) -> bytes:
    q = DNSRecord.question(name, qtype)
    q.header.id = qid
    q.add_ar(EDNS0(udp_len=1232))
    return bytes(q.pack())


def nodecache(*args: str, user: int | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    if user is not None:
        return _as_user(list(args), user, timeout)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NODECACHE_")}
    return subprocess.run([sys.executable, "-m", "nodecache", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip


def _as_user(args: list[str], user: int, timeout: float) -> subprocess.CompletedProcess[str]:
    """The CLI run as another user, in a forked child that already has nodecache imported.

    A new process as that user would have to read the checkout and its venv, which a
    private clone (a 0700 temporary directory, say) does not let it do.
    """
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)  # noqa: SIM115
            os.setgroups([])
            os.setgid(user)
            os.setuid(user)
            from nodecache.cli import main

            try:
                main.main(args=args, prog_name="nodecache")
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(out_w)
    os.close(err_w)
    deadline = time.monotonic() + timeout
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            done = os.waitpid(pid, 0)
            break
        time.sleep(0.02)
    with open(out_r, errors="replace") as out, open(err_r, errors="replace") as err:
        stdout, stderr = out.read(), err.read()
    return subprocess.CompletedProcess(args, os.waitstatus_to_exitcode(done[1]), stdout, stderr)


def short_dir() -> str:
    """A temporary directory with a short path: sun_path holds 107 bytes."""
    return tempfile.mkdtemp(prefix="nc-")


class Agent:
    """A running agent with its upstream, and helpers to ask it things."""

    def __init__(self, upstream: FakeUpstream, proc: AgentProcess, port: int) -> None:
        self.upstream, self.proc, self.port = upstream, proc, port
        assert proc.control_socket is not None
        self.sock = proc.control_socket

    def ask(self, name: str, qtype: str = "A") -> DNSRecord:
        reply = raw_udp("127.0.0.1", self.port, query(name, qtype))
        assert reply is not None, f"no answer for {name} {qtype}"
        return DNSRecord.parse(reply)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return nodecache(args[0], "--control-socket", self.sock, *args[1:])

    def stats(self, *args: str) -> dict:
        done = self.cli("stats", "--json", *args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.254\n")
    port = free_port()
    with FakeUpstream() as up, AgentProcess(["--listen", "127.0.0.1", "--port", str(port), "--upstream",
                                             f"127.0.0.1:{up.port}", "--node-resolv-conf", str(conf)]) as proc:
        yield Agent(up, proc, port)


# ---------------------------------------------------------------------------- stats


def test_stats_summarises_queries_cache_zones_upstreams_and_top_lists(agent: Agent) -> None:
    for _ in range(4):
        agent.ask(SVC)
    agent.ask(WEB, "AAAA")
    agent.ask("nothere.default.svc.cluster.local")
    done = agent.cli("stats")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith(f"nodecache 0.1.0 ({build()})  up ")
    assert "queries     6 total" in out
    assert "3 hits, 3 misses, hit ratio 50.0%" in out
    assert "2 success / 39936, 1 denial / 39936" in out  # four zones of 9984 each
    zone_line = next(line for line in out.splitlines() if line.startswith("cluster.local."))
    assert zone_line.split()[1:5] == ["6", "3", "3", "50.0%"]
    upstream_line = next(line for line in out.splitlines() if line.startswith(f"127.0.0.1:{agent.upstream.port} tcp"))
    assert upstream_line.split()[2:5] == ["cluster.local.", "up", "3"]
    top = out.split("top names and clients")[1].splitlines()
    assert top[1:3] == ["  names:", f"{4:>10}  {SVC}."]  # sampled, but a quiet agent samples every query
    assert top[top.index("  clients:") + 1].split() == ["6", "127.0.0.1"]


def test_stats_json_is_stable_and_consistent(agent: Agent) -> None:
    for _ in range(3):
        agent.ask(SVC)
    agent.ask(WEB)
    report = agent.stats()
    assert set(report) == STATS_KEYS
    assert report["schema"] == 1
    assert report["misses"] == {"waiting_now": 0, "early_answers": {"deadline": 0, "upstreams_down": 0, "waiting_cap": 0}}
    q = report["queries"]
    assert (q["total"], q["hits"], q["misses"], q["hit_ratio"]) == (4, 2, 2, 0.5)
    cluster = next(z for z in report["zones"] if z["zone"] == "cluster.local.")
    assert cluster["entries"] == {"success": 2, "denial": 0}
    assert cluster["capacity"] == {"success": 9984, "denial": 9984}
    assert cluster["bytes"] > 0 and report["cache"]["bytes"] == sum(z["bytes"] for z in report["zones"])
    up = next(u for u in report["upstreams"] if u["zone"] == "cluster.local.")
    assert (up["state"], up["queries"], up["failures"], up["transport"]) == ("up", 2, 0, "tcp")
    assert up["latency_ms"]["samples"] == 2 and 0 < up["latency_ms"]["p50"] <= up["latency_ms"]["p99"]
    assert report["top_names"][0] == {"name": SVC + ".", "queries": 3}
    assert report["top_clients"][0]["client"] == "127.0.0.1"
    assert report["listen"] == [f"127.0.0.1:{agent.port}"]


def test_stats_top_limits_the_lists(agent: Agent) -> None:
    for name in (SVC, WEB, WILD):
        agent.ask(name)
    assert len(agent.stats("--top", "2")["top_names"]) == 2
    assert agent.stats("--top", "0")["top_names"] == []


def test_stats_watch_refreshes_until_interrupted(agent: Agent) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "nodecache", "stats", "--control-socket", agent.sock, "--json",
                             "--watch", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        time.sleep(1.2)
        agent.ask(SVC)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    reports = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(reports) >= 4, err
    assert reports[0]["queries"]["total"] == 0 and reports[-1]["queries"]["total"] == 1
    assert reports[-1]["uptime_seconds"] > reports[0]["uptime_seconds"]
    assert proc.returncode == 0 and "Traceback" not in err


# ---------------------------------------------------------------------------- flush


def _warm(agent: Agent) -> None:
    for name, qtype in ((SVC, "A"), (SVC, "AAAA"), (WEB, "A"), (WILD, "A")):
        assert agent.ask(name, qtype).header.rcode == RCODE.NOERROR


def test_flush_name_removes_every_type_of_that_name_only(agent: Agent) -> None:
    _warm(agent)
    done = agent.cli("flush", "--name", "KUBERNETES.default.svc.cluster.local.")  # any case, dot or not
    assert done.returncode == 0 and done.stdout.startswith("removed 2 cached answers"), done
    before = agent.upstream.count(SVC), agent.upstream.count(WEB)
    agent.ask(SVC)
    agent.ask(WEB)
    assert agent.upstream.count(SVC) == before[0] + 1  # gone: asked upstream again
    assert agent.upstream.count(WEB) == before[1]  # still cached


def test_flush_name_and_type(agent: Agent) -> None:
    _warm(agent)
    done = agent.cli("flush", "--name", SVC, "--type", "aaaa")
    assert done.stdout.strip() == f"removed 1 cached answer (--name {SVC}. --type aaaa)"
    n = agent.upstream.count(SVC)
    agent.ask(SVC, "A")
    assert agent.upstream.count(SVC) == n
    agent.ask(SVC, "AAAA")
    assert agent.upstream.count(SVC) == n + 1


def test_flush_suffix_respects_label_boundaries(agent: Agent) -> None:
    _warm(agent)
    done = agent.cli("flush", "--suffix", "default.svc.cluster.local")
    assert done.stdout.startswith("removed 3 cached answers")
    assert agent.stats()["cache"]["entries"]["success"] == 1  # only the wildcard name is left


def test_flush_type_alone_and_flush_all(agent: Agent) -> None:
    _warm(agent)
    assert agent.cli("flush", "--type", "AAAA").stdout.startswith("removed 1 cached answer")
    left = agent.stats()["cache"]["entries"]
    assert left == {"success": 3, "denial": 0}
    assert agent.cli("flush").stdout.strip() == "removed 3 cached answers"
    assert agent.stats()["cache"]["entries"] == {"success": 0, "denial": 0}
    assert "flushed 3 cached answers" in agent.proc.log


@pytest.mark.parametrize(
    "args, message",
    [
        (["--type", "BOGUS"], "'BOGUS' is not a DNS record type"),
        (["--name", "a" * 64 + ".example"], "is not a valid domain name"),
        (["--suffix", "bücher.example"], "xn--"),
    ],
    ids=["type", "label-too-long", "not-ascii"],
)
def test_flush_bad_arguments_are_one_line_and_exit_2(agent: Agent, args: list[str], message: str) -> None:
    done = agent.cli("flush", *args)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


async def test_flush_is_atomic_with_respect_to_queries(upstream: FakeUpstream) -> None:
    """Flushes between queries never yield a broken or wrong answer: each reply is whole."""
    cfg = make_config([f"127.0.0.1:{upstream.port}"])
    async with running(cfg) as srv:
        port = srv.bound[0][1]
        for round_ in range(30):
            replies = [ask_udp(port, query(SVC, qid=round_ * 10 + i)) for i in range(5)]
            removed = srv.resolver.flush()
            for i, raw in enumerate([await r for r in replies]):
                assert raw is not None
                reply = DNSRecord.parse(raw)
                assert reply.header.id == round_ * 10 + i and [str(r.rdata) for r in reply.rr] == ["192.0.2.1"]
            assert removed in (0, 1)


def test_flush_match_unit() -> None:
    from nodecache.config import name_to_wire

    def key(name: str, qtype: int = 1) -> bytes:
        return name_to_wire(name) + qtype.to_bytes(2, "big") + b"\x00\x01\x00"

    below = flush_match(None, "svc.cluster.local.", None)
    assert below is not None
    assert below(key("svc.cluster.local.")) and below(key("a.b.svc.cluster.local."))
    assert not below(key("xsvc.cluster.local.")) and not below(key("cluster.local."))
    typed = flush_match("a.example.", None, 28)
    assert typed is not None and typed(key("a.example.", 28)) and not typed(key("a.example.", 1))
    assert flush_match(None, None, None) is None


# ---------------------------------------------------------------------------- the socket itself


def test_control_socket_is_0600_in_a_created_directory_and_removed_at_exit(tmp_path: Path) -> None:
    base = short_dir()
    sock = os.path.join(base, "run", "nodecache", "control.sock")
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.254\n")
    with FakeUpstream() as up:
        proc = AgentProcess(["--listen", "127.0.0.1", "--port", str(free_port()), "--upstream", f"127.0.0.1:{up.port}",
                             "--node-resolv-conf", str(conf), "--control-socket", sock]).start()  # fmt: skip
        try:
            for _ in range(100):
                if os.path.exists(sock):
                    break
                time.sleep(0.05)
            st = os.stat(sock)
            assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
            assert stat.S_IMODE(os.stat(os.path.dirname(sock)).st_mode) == 0o700
            assert call(sock, "stats")["version"] == "0.1.0"
        finally:
            assert proc.stop() == 0
    assert not os.path.exists(sock)
    shutil.rmtree(base)


def test_a_stale_socket_file_is_replaced_at_start(tmp_path: Path) -> None:
    base = short_dir()
    sock = os.path.join(base, "c.sock")
    with socket.socket(socket.AF_UNIX) as dead:  # bound, then closed: a crashed agent's leftover
        dead.bind(sock)
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.254\n")
    with FakeUpstream() as up, AgentProcess(["--listen", "127.0.0.1", "--port", str(free_port()), "--upstream",
                                             f"127.0.0.1:{up.port}", "--node-resolv-conf", str(conf),
                                             "--control-socket", sock]):  # fmt: skip
        for _ in range(100):
            try:
                assert call(sock, "stats", {"top": 1})["schema"] == 1
                break
            except ControlError:
                time.sleep(0.05)
        else:
            pytest.fail("the agent never answered on the replaced socket")
    shutil.rmtree(base)


def test_unknown_and_malformed_requests_get_an_error_reply(agent: Agent) -> None:
    with pytest.raises(ControlError, match="unknown command 'reboot'; this agent knows: dump, flush, load, stats"):
        call(agent.sock, "reboot")
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(5)
        raw.connect(agent.sock)
        raw.sendall(b"this is not json\n")
        reply = json.loads(raw.recv(65536))
    assert reply["ok"] is False and "malformed request" in reply["error"]
    with pytest.raises(ControlError, match="top must be a whole number"):
        call(agent.sock, "stats", {"top": "ten"})


# ---------------------------------------------------------------------------- CLI error lines


def _one_line_exit_1(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    for fragment in fragments:
        assert fragment in done.stderr, done.stderr


@pytest.mark.parametrize("command", ["stats", "flush"])
def test_no_socket_says_the_agent_is_not_running(command: str) -> None:
    base = short_dir()
    path = os.path.join(base, "control.sock")
    _one_line_exit_1(nodecache(command, "--control-socket", path),
                     f"no control socket at {path}", "not running", "--control-socket")  # fmt: skip
    missing_dir = os.path.join(base, "gone", "control.sock")
    _one_line_exit_1(nodecache(command, "--control-socket", missing_dir), "directory does not exist")
    shutil.rmtree(base)


def test_env_var_names_the_socket_and_errors_name_it() -> None:
    base = short_dir()
    path = os.path.join(base, "x.sock")
    env = {**os.environ, "NODECACHE_CONTROL_SOCKET": path}
    done = subprocess.run([sys.executable, "-m", "nodecache", "stats"], capture_output=True, text=True, env=env,
                          timeout=30)  # fmt: skip
    _one_line_exit_1(done, path)
    shutil.rmtree(base)


def test_a_stale_socket_and_a_plain_file_are_told_apart() -> None:
    base = short_dir()
    stale = os.path.join(base, "stale.sock")
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(stale)
    _one_line_exit_1(nodecache("stats", "--control-socket", stale), f"nothing is listening on {stale}", "not running")
    plain = os.path.join(base, "plain")
    Path(plain).write_text("")
    _one_line_exit_1(nodecache("flush", "--control-socket", plain), f"{plain} is not a socket")
    shutil.rmtree(base)


def test_permission_denied_says_so(agent: Agent) -> None:
    if os.geteuid() == 0:
        done = nodecache("stats", "--control-socket", agent.sock, user=NOBODY)
    else:
        os.chmod(agent.sock, 0)  # even its owner may not connect now
        done = nodecache("stats", "--control-socket", agent.sock)
    _one_line_exit_1(done, f"permission denied on {agent.sock}", "root")


def test_the_agent_refuses_other_users_even_if_the_socket_mode_is_loosened(agent: Agent) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to connect as another user")
    os.chmod(os.path.dirname(agent.sock), 0o755)
    os.chmod(agent.sock, 0o666)
    done = nodecache("flush", "--control-socket", agent.sock, user=NOBODY)
    _one_line_exit_1(done, "the agent refused: permission denied: uid 65534")
    assert agent.stats()["queries"]["total"] == 0  # and nothing was flushed or changed


def test_an_agent_that_does_not_answer_times_out_with_one_line() -> None:
    base = short_dir()
    path = os.path.join(base, "mute.sock")
    with socket.socket(socket.AF_UNIX) as mute:  # accepts (backlog) but never replies: a stopped agent
        mute.bind(path)
        mute.listen(1)
        started = time.monotonic()
        with pytest.raises(ControlError, match=r"did not answer within 0.3s; is it stopped or overloaded"):
            call(path, "stats", timeout=0.3)
        assert time.monotonic() - started < 3
    shutil.rmtree(base)


def test_only_the_socket_flag_reads_the_environment(agent: Agent) -> None:
    """A NODECACHE_TYPE or NODECACHE_NAME left in a pod's environment must not narrow a flush."""
    _warm(agent)
    env = {**os.environ, "NODECACHE_CONTROL_SOCKET": agent.sock, "NODECACHE_TYPE": "AAAA", "NODECACHE_NAME": WEB,
           "NODECACHE_JSON": "1"}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "nodecache", "flush"], capture_output=True, text=True, env=env,
                          timeout=30)  # fmt: skip
    assert done.stdout.strip() == "removed 4 cached answers", done.stderr
    shown = subprocess.run([sys.executable, "-m", "nodecache", "stats"], capture_output=True, text=True, env=env,
                           timeout=30)  # fmt: skip
    assert shown.stdout.startswith("nodecache 0.1.0")  # text, not JSON
