"""`nodecache run --config` and `nodecache check-config`: the Corefile on the command line.

Precedence (docs/migrate.md, "Which value wins"): built-in defaults, then the
Corefile, then flags the operator gave (command line or NODECACHE_ variable).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from nodecache.cli import build_config, run
from nodecache.errors import ConfigError
from tests.conftest import AgentProcess
from tests.support.clients import dig
from tests.support.fakeupstream import FakeUpstream
from tests.support.net import free_port

FIXTURES = Path(__file__).parent / "fixtures"
STOCK = FIXTURES / "node-local-dns.Corefile"
UPSTREAM_IP = "192.0.2.53"
SERVICE_ENV = {"KUBE_DNS_UPSTREAM_SERVICE_HOST": UPSTREAM_IP}


@pytest.fixture
def resolv(tmp_path: Path) -> Path:
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 203.0.113.1\n")
    return path


def opts_with(**given: object) -> dict[str, object]:
    """`run`'s options at their defaults, then `given` (as click would pass them)."""
    opts: dict[str, object] = {o.name: o.default for o in run.params if isinstance(o, click.Option) and o.name}
    opts.update(given)
    return opts


def stock_opts(resolv: Path, **given: object) -> dict[str, object]:
    return opts_with(config=str(STOCK), upstream_svc="kube-dns-upstream", local_ip=("169.254.20.10",),
                     node_resolv_conf=str(resolv), kube_dns_config_dir=None, **given)  # fmt: skip


def test_stock_corefile_gives_the_reference_zones(resolv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBE_DNS_UPSTREAM_SERVICE_HOST", UPSTREAM_IP)
    config = build_config(stock_opts(resolv))
    assert [z.name for z in config.zones] == ["cluster.local.", "in-addr.arpa.", "ip6.arpa.", "."]
    assert [str(a) for a in config.zones[0].forward.upstreams] == [f"{UPSTREAM_IP}:53"]
    assert config.zones[0].forward.force_tcp and not config.zones[3].forward.force_tcp
    assert (config.zones[0].cache.success_max_ttl, config.zones[0].cache.denial_max_ttl) == (30, 5)
    assert [str(a) for a in config.zones[3].forward.upstreams] == ["203.0.113.1:53"]
    assert config.listen == ("169.254.20.10",) and config.port == 53
    # The Corefile's endpoints, since no flag was given for them.
    assert (config.metrics_address, config.health_address) == ("0.0.0.0:9253", "169.254.20.10:8080")
    # Every stock block has `reload` (30 s) and `loop`.
    assert config.reload_interval == 30.0
    assert config.loop_zones == ("cluster.local.", "in-addr.arpa.", "ip6.arpa.", ".")
    # Flags the Corefile has no word for keep their meaning (a node agent's defaults).
    assert config.setup_interface and config.control_socket == "/run/nodecache/control.sock"


def test_explicit_flags_win_over_the_corefile(resolv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBE_DNS_UPSTREAM_SERVICE_HOST", UPSTREAM_IP)
    given = {"port": 5300, "metrics_address": "off", "lameduck": 1.0, "try_timeout": 0.5}
    config = build_config(stock_opts(resolv, **given), frozenset(given))
    assert config.port == 5300 and config.metrics_address is None and config.lameduck == 1.0
    assert {z.forward.try_timeout for z in config.zones} == {0.5}
    # Not given: the same values at their defaults do not override the Corefile.
    config = build_config(stock_opts(resolv, port=5300))
    assert config.port == 53 and config.metrics_address == "0.0.0.0:9253"


def test_corefile_log_turns_on_the_query_log_unless_the_flag_says(tmp_path: Path, resolv: Path) -> None:
    corefile = tmp_path / "Corefile"
    corefile.write_text(".:53 {\n    log\n    bind 127.0.0.1\n    forward . 192.0.2.1\n}\n")
    assert build_config(opts_with(config=str(corefile), node_resolv_conf=str(resolv))).query_log
    off = build_config(opts_with(config=str(corefile), node_resolv_conf=str(resolv), query_log=False),
                       frozenset({"query_log"}))  # fmt: skip
    assert not off.query_log


@pytest.mark.parametrize("flag, value", [("upstream", ("192.0.2.1",)), ("other_ttl", 60), ("policy", "sequential")])
def test_zone_flags_are_refused_with_a_corefile(resolv: Path, flag: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"--{flag.replace('_', '-')} cannot be combined with --config"):
        build_config(stock_opts(resolv, **{flag: value}), frozenset({flag}))


def test_a_corefile_without_bind_needs_local_ips_for_node_setup(tmp_path: Path, resolv: Path) -> None:
    corefile = tmp_path / "Corefile"
    corefile.write_text(".:53 {\n    forward . 192.0.2.1\n}\n")
    with pytest.raises(ConfigError, match="listens on 0.0.0.0 :: .no bind."):
        build_config(opts_with(config=str(corefile), node_resolv_conf=str(resolv)))
    given = opts_with(config=str(corefile), node_resolv_conf=str(resolv), local_ip=("169.254.20.10",))
    assert build_config(given, frozenset({"local_ip"})).listen == ("169.254.20.10",)
    off = build_config(opts_with(config=str(corefile), node_resolv_conf=str(resolv), setup_interface=False,
                                 setup_iptables=False))  # fmt: skip
    assert off.listen == ("0.0.0.0", "::")


def test_without_config_the_flags_alone_decide(resolv: Path) -> None:
    config = build_config(opts_with(upstream=("192.0.2.10",), node_resolv_conf=str(resolv)))
    assert [z.name for z in config.zones] == ["cluster.local.", "in-addr.arpa.", "ip6.arpa.", "."]
    assert config.metrics_address == "0.0.0.0:9253"


def nodecache(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.endswith("_SERVICE_HOST")}
    return subprocess.run([sys.executable, "-m", "nodecache", *args], capture_output=True, text=True, timeout=30,
                          env={**environ, **(env or {})})  # fmt: skip


def test_check_config_prints_the_stock_zones(resolv: Path, tmp_path: Path) -> None:
    written = tmp_path / "Corefile.out"
    done = nodecache("check-config", "--config", str(STOCK), "--upstream-svc", "kube-dns-upstream",
                     "--local-ip", "169.254.20.10,192.0.2.10", "--node-resolv-conf", str(resolv),
                     "--kube-dns-config-dir", str(tmp_path), "--corefile", str(written), env=SERVICE_ENV)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("listen 169.254.20.10 192.0.2.10 port 53")
    assert lines[1].split()[:3] == ["ZONE", "UPSTREAMS", "TRANSPORT"]
    assert lines[2].split()[:3] == ["cluster.local.", f"{UPSTREAM_IP}:53", "tcp"]
    assert "9984 x 5-5s" in lines[2]
    assert [line.split()[0] for line in lines[2:]] == ["cluster.local.", "in-addr.arpa.", "ip6.arpa.", "."]
    text = written.read_text()  # node-cache's --corefile: the filled-in Corefile
    assert "__PILLAR__" not in text.split("\n", 3)[3] and "forward . 192.0.2.53" in text


@pytest.mark.parametrize(
    "corefile, env, message",
    [
        (str(STOCK), {}, f"{STOCK}:13: __PILLAR__CLUSTER__DNS__ cannot be filled in: KUBE_DNS_UPSTREAM_SERVICE_HOST is not set"),
        (".:53 {\n    forward . 192.0.2.1\n    cache {\n        success many\n    }\n}\n", SERVICE_ENV, "Corefile:4: "),
        (".:53 {\n    forward . 192.0.2.1\n    rewrite name a b\n}\n", SERVICE_ENV, "Corefile:3: "),
    ],
    ids=["service-host-missing", "bad-capacity", "unknown-directive"],
)
def test_check_config_must_fail_with_file_and_line(tmp_path: Path, resolv: Path, corefile: str,
                                                     env: dict[str, str], message: str) -> None:  # fmt: skip
    path = corefile
    if "\n" in corefile:
        path = str(tmp_path / "Corefile")
        Path(path).write_text(corefile)
        message = message.replace("Corefile:", f"{path}:")
    done = nodecache("check-config", "--config", path, "--upstream-svc", "kube-dns-upstream",
                     "--node-resolv-conf", str(resolv), env=env)  # fmt: skip
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == ""


def test_run_missing_service_host_names_the_variable(resolv: Path) -> None:
    done = nodecache("run", "--no-setup-interface", "--no-setup-iptables", "--config", str(STOCK),
                     "--upstream-svc", "kube-dns-upstream", "--local-ip", "127.0.0.1",
                     "--node-resolv-conf", str(resolv))  # fmt: skip
    assert done.returncode == 2
    assert "KUBE_DNS_UPSTREAM_SERVICE_HOST is not set" in done.stderr and "Traceback" not in done.stderr


def test_run_serves_the_zones_of_the_corefile(tmp_path: Path, resolv: Path) -> None:
    port, other_port = free_port(), free_port()
    with FakeUpstream() as up:
        corefile = tmp_path / "Corefile"
        corefile.write_text(
            f"cluster.local:{other_port} {{\n    log\n    cache 30\n    bind 127.0.0.1\n"
            f"    forward . 127.0.0.1:{up.port} {{\n        force_tcp\n    }}\n}}\n"
        )
        args = ["--config", str(corefile), "--port", str(port), "--node-resolv-conf", str(resolv)]
        with AgentProcess(args) as agent:
            assert dig("127.0.0.1", port, "kubernetes.default.svc.cluster.local").rdatas("A") == ["192.0.2.1"]
            assert dig("127.0.0.1", port, "example.org").rcode == "REFUSED"  # no `.` zone in this Corefile
    assert f"serving DNS on 127.0.0.1 port {port}" in agent.log  # --port won over the Corefile's port
    assert "name=kubernetes.default.svc.cluster.local." in agent.log  # `log`: the query log is on


def test_check_config_without_a_corefile_shows_the_flag_built_zones(resolv: Path) -> None:
    done = nodecache("check-config", "--upstream", "192.0.2.10", "--local-ip", "127.0.0.1",
                     "--node-resolv-conf", str(resolv), "--cluster-success-ttl", "60")  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[2:]]
    assert [r[0] for r in rows] == ["cluster.local.", "in-addr.arpa.", "ip6.arpa.", "."]
    assert rows[0][1] == "192.0.2.10:53" and "0-60s" in done.stdout.splitlines()[2]


def test_stock_corefile_serves_stale_by_default_and_flags_override_it(resolv: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBE_DNS_UPSTREAM_SERVICE_HOST", UPSTREAM_IP)
    default = build_config(stock_opts(resolv))
    assert {(z.cache.stale_window, z.cache.stale_mode) for z in default.zones} == {(3600, "verify")}
    assert default.answer_deadline == 1.8
    given = build_config(stock_opts(resolv, serve_stale=0, answer_deadline=1.0),
                         frozenset({"serve_stale", "answer_deadline"}))  # fmt: skip
    assert {z.cache.stale_window for z in given.zones} == {0}
    assert given.answer_deadline == 1.0


def test_corefile_serve_stale_modes_reach_the_zones(tmp_path: Path, resolv: Path) -> None:
    corefile = tmp_path / "Corefile"
    corefile.write_text(
        "cluster.local:53 {\n bind 127.0.0.1\n cache 30 {\n  serve_stale 10m immediate\n }\n forward . 192.0.2.53\n}\n"
        ".:53 {\n bind 127.0.0.1\n cache 30 {\n  serve_stale 2h verify\n }\n forward . 192.0.2.54\n}\n"
    )
    config = build_config(opts_with(config=str(corefile), node_resolv_conf=str(resolv), local_ip=("127.0.0.1",),
                                    setup_interface=False, setup_iptables=False))  # fmt: skip
    assert [(z.name, z.cache.stale_window, z.cache.stale_mode) for z in config.zones] == [
        ("cluster.local.", 600, "immediate"), (".", 7200, "verify")]


@pytest.mark.parametrize("text, seconds", [("0", 0), ("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600)])
def test_serve_stale_flag_takes_durations(text: str, seconds: int, resolv: Path) -> None:
    from click.testing import CliRunner

    from nodecache.cli import main

    done = CliRunner().invoke(main, ["check-config", "--upstream", UPSTREAM_IP, "--node-resolv-conf", str(resolv),
                                     "--serve-stale", text])  # fmt: skip
    assert done.exit_code == 0, done.output
    expected = f"{seconds}s verify" if seconds else "off"
    assert all(expected in line.split("  ") or expected in line for line in done.output.splitlines()[2:])


def test_a_bad_serve_stale_duration_is_refused(resolv: Path) -> None:
    from click.testing import CliRunner

    from nodecache.cli import main

    done = CliRunner().invoke(main, ["check-config", "--upstream", UPSTREAM_IP, "--node-resolv-conf", str(resolv),
                                     "--serve-stale", "an hour"])  # fmt: skip
    assert done.exit_code == 2 and "is not a duration; write seconds, or 90s, 15m, 1h" in done.output
