"""The command line as an operator meets it: help, errors, env vars, `make run`."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from nodecache.cli import main, run
from tests.conftest import NO_NODE_SETUP
from tests.support.clients import dig
from tests.support.net import free_port
from tests.support.samplezone import CHECKOUT, RUN_MODULE

RUN_FLAGS = [
    "--local-ip", "--port", "--upstream", "--cluster-domain", "--node-resolv-conf", "--success-capacity",
    "--denial-capacity", "--cluster-success-ttl", "--cluster-denial-ttl", "--other-ttl", "--servfail-ttl",
    "--serve-stale", "--serve-stale-mode", "--prefetch", "--answer-deadline", "--max-waiting", "--max-waiting-per-name",
    "--policy", "--try-timeout", "--timeout", "--tcp-idle-timeout", "--max-udp-payload", "--loop", "--log-level",
    "--setup-interface", "--setup-iptables", "--interface-name", "--sync-interval", "--skip-teardown",
    "--iptables-backend",
    "--node-lock",
    "--log-format", "--control-socket", "--handover-timeout", "--metrics-address", "--health-address", "--lameduck",
    "--query-log",
    "--query-log-sample", "--query-log-errors-only",
    "--config", "--corefile", "--upstream-svc", "--kube-dns-config-dir",
    "--max-tcp-connections", "--max-tcp-per-client",
    "--cache-memory",
    "--udp-batch", "--udp-rcvbuf", "--udp-sndbuf",
]  # fmt: skip


def nodecache(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    if args[:1] == ("run",):  # never touch this host's interfaces or iptables
        args = ("run", *NO_NODE_SETUP, *args[1:])
    return subprocess.run([sys.executable, "-m", "nodecache", *args], capture_output=True, text=True,
                          timeout=30, env=env)


def test_every_run_flag_has_help_and_an_env_var() -> None:
    options = {o.opts[0]: o for o in run.params if isinstance(o, click.Option)}
    assert sorted(options) == sorted(RUN_FLAGS)
    for flag, opt in options.items():
        assert opt.help and len(opt.help.split()) >= 4, f"{flag} has no real help text"
        assert opt.envvar == "NODECACHE_" + flag[2:].replace("-", "_").upper()
    shown = CliRunner().invoke(main, ["run", "--help"], terminal_width=200).output
    assert all(flag in shown for flag in RUN_FLAGS)
    assert "NODECACHE_UPSTREAM" in shown


@pytest.mark.parametrize(
    "given, interface, lock",
    [(None, "nodelocaldns", "/run/nodecache-node/nodelocaldns.lock"), (None, "nodecache2", "/run/nodecache-node/nodecache2.lock"),
     ("/var/lock/nc.lock", "nodelocaldns", "/var/lock/nc.lock"), ("off", "nodelocaldns", None)],
    ids=["default", "per-interface", "given", "off"],
)  # fmt: skip
def test_the_node_lock_defaults_to_one_per_interface_name(tmp_path: Path, given: str | None, interface: str,
                                                          lock: str | None) -> None:  # fmt: skip
    """Agents that manage the same interface share a lock; another interface name, another lock."""
    from nodecache.cli import build_config

    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.254\n")
    opts = {o.name: o.default for o in run.params if isinstance(o, click.Option)}
    opts.update(upstream=("192.0.2.10",), node_resolv_conf=str(conf), node_lock=given, interface_name=interface)
    assert build_config(opts).node_lock == lock


@pytest.mark.parametrize(
    "args, message",
    [
        (["--upstream", "kube-dns"], "'kube-dns' is not an IP address"),
        (["--upstream", "192.0.2.10:99999"], "port must be a number"),
        (["--upstream", "192.0.2.10", "--listen", "localhost"], "'localhost' is not an IP address"),
        (["--upstream", "192.0.2.10", "--listen", "[2001:db8::10]"], "'[2001:db8::10]' is not an IP address"),
        ([], "no cluster DNS upstream"),
        (["--upstream", "192.0.2.10", "--node-resolv-conf", "/nonexistent/resolv.conf"], "/nonexistent/resolv.conf"),
        (["--upstream", "192.0.2.10", "--cache-memory", "lots"], "--cache-memory: 'lots' is not a size"),
        (["--upstream", "192.0.2.10", "--cache-memory", "4k"], "at least 1Mi"),
    ],
    ids=["upstream-hostname", "upstream-port", "listen-hostname", "listen-bracketed", "no-upstream", "resolv-conf-missing",
         "cache-memory-word", "cache-memory-too-small"],
)
def test_bad_input_is_one_clear_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.254\n")
    if "--node-resolv-conf" not in args:
        args = [*args, "--node-resolv-conf", str(conf)]
    done = nodecache("run", "--listen", "127.0.0.1", *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_resolv_conf_pointing_only_at_ourselves_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 169.254.20.10\n")
    done = nodecache("run", "--upstream", "192.0.2.10", "--node-resolv-conf", str(conf))
    assert done.returncode == 2
    assert "own address" in done.stderr


def test_environment_variables_configure_run(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.254\n")
    env = {"NODECACHE_UPSTREAM": "not-an-ip", "NODECACHE_NODE_RESOLV_CONF": str(conf), "PATH": "/usr/bin:/bin"}
    done = nodecache("run", "--listen", "127.0.0.1", env=env)
    assert done.returncode == 2 and "'not-an-ip' is not an IP address" in done.stderr


def test_a_port_in_use_by_another_program_is_reported(tmp_path: Path) -> None:
    import socket

    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.254\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:  # no SO_REUSEPORT: a real conflict
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        done = nodecache("run", "--listen", "127.0.0.1", "--port", str(port), "--upstream", "192.0.2.10",
                         "--node-resolv-conf", str(conf))
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1 port {port}/udp" in done.stderr
    assert "Traceback" not in done.stderr


def test_local_ip_has_listen_as_an_alias_and_node_setup_is_on_by_default(tmp_path: Path) -> None:
    from nodecache.cli import build_config

    local_ip = next(o for o in run.params if o.name == "local_ip")
    assert local_ip.opts == ["--local-ip", "--listen"] and local_ip.envvar == "NODECACHE_LOCAL_IP"
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.254\n")
    opts = {o.name: o.default for o in run.params if isinstance(o, click.Option)}
    opts.update(local_ip=("169.254.20.10,192.0.2.53", "2001:db8::a"), upstream=("192.0.2.10",),
                node_resolv_conf=str(conf))  # fmt: skip
    config = build_config(opts)
    assert config.listen == ("169.254.20.10", "192.0.2.53", "2001:db8::a")
    assert config.setup_interface and config.setup_iptables and not config.skip_teardown  # a node agent's defaults
    assert (config.interface_name, config.sync_interval, config.iptables_backend) == ("nodelocaldns", 60.0, "auto")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--local-ip", "localhost"], "'localhost' is not an IP address"),
        (["--interface-name", "much-too-long-name"], "is not usable"),
        (["--iptables-backend", "ebtables"], "Invalid value for '--iptables-backend'"),
    ],
    ids=["local-ip", "interface-name", "backend"],
)
def test_teardown_refuses_bad_input_before_touching_anything(args: list[str], message: str) -> None:
    done = nodecache("teardown", *args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_version() -> None:
    done = nodecache("--version")
    assert done.returncode == 0 and "nodecache" in done.stdout


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed (Debian package bind9-dnsutils)")
def test_make_run_serves_the_sample_zone_through_the_agent(tmp_path: Path) -> None:
    """What `make run` starts: the sample zone plus the agent, ready for dig."""
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.254\n")
    port, zone_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", RUN_MODULE, "--run-agent", "--port", str(port),
         "--zone-port", str(zone_port), "--node-resolv-conf", str(conf)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=CHECKOUT,
    )  # fmt: skip
    seen: list[str] = []
    try:
        answer = None
        for _ in range(100):  # up to ~10 s for both servers to come up
            answer = dig("127.0.0.1", port, "kubernetes.default.svc.cluster.local", timeout=1)
            if answer.rcode == "NOERROR":
                break
            time.sleep(0.1)
        assert answer is not None and answer.rdatas("A") == ["192.0.2.1"]
        srv = dig("127.0.0.1", port, "_http._tcp.web.default.svc.cluster.local", "SRV")
        assert srv.rdatas("SRV") == ["0 100 80 web.default.svc.cluster.local."]
        assert dig("127.0.0.1", port, "1.2.0.192.in-addr.arpa", "PTR").rdatas("PTR")
        sock = None
        assert proc.stdout is not None
        for _ in range(60):  # the banner also says how to look inside, with no root needed
            line = proc.stdout.readline()
            seen.append(line)
            if "stats --control-socket" in line:
                sock = line.split("--control-socket", 1)[1].split()[0].rstrip(")")
                break
        assert sock is not None
        stats = nodecache("stats", "--control-socket", sock, "--json")
        assert stats.returncode == 0, stats.stderr
        assert json.loads(stats.stdout)["queries"]["total"] >= 3
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=15)
    output = "".join(seen) + output
    assert f"dig @127.0.0.1 -p {port}" in output  # the banner shows what to try
    assert proc.returncode == 0
    assert not Path(sock).parent.exists()  # the private socket directory is gone


def test_stock_asyncio_loop_is_a_working_fallback(tmp_path: Path) -> None:
    from tests.conftest import AgentProcess
    from tests.support.fakeupstream import FakeUpstream

    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.254\n")
    port = free_port()
    with FakeUpstream() as up, AgentProcess(["--listen", "127.0.0.1", "--port", str(port), "--upstream",
                                             f"127.0.0.1:{up.port}", "--node-resolv-conf", str(conf),
                                             "--loop", "asyncio"]) as agent:
        assert dig("127.0.0.1", port, "kubernetes.default.svc.cluster.local").rdatas("A") == ["192.0.2.1"]
    assert "event loop: asyncio" in agent.log
    from nodecache import mmsg

    assert mmsg.CALLS is not None  # the agent says how it calls the kernel for batched UDP: as this process would
    assert f"recvmmsg/sendmmsg through: {mmsg.CALLS.name}" in agent.log
