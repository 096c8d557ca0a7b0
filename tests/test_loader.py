"""The config loader's precedence: built-in default < the Corefile < a flag given explicitly.

Each row names a flag, the value an operator gives, how to read the field from the Config, and the
value expected in each of the three situations: the flag not given and no Corefile (the built-in
default), a Corefile that says something and the flag not given, and the flag given over that Corefile.
Then the inputs the loader must refuse, each with the one-line message an operator reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from nodecache.cli import main, run
from nodecache.config import (
    DEFAULT_CACHE_MEMORY,
    DEFAULT_CONTROL_SOCKET,
    Address,
    Config,
    default_node_lock,
    parse_ip,
)
from nodecache.errors import ConfigError
from nodecache.loader import load_config

# One block that says something about every field the Corefile has a word for.
COREFILE = """\
.:5353 {
    bind 127.0.0.1
    log
    cache 30 {
        serve_stale 600s immediate
    }
    forward . 192.0.2.1
    prometheus 127.0.0.1:9300
    health 127.0.0.1:8181 {
        lameduck 2s
    }
    reload 10s
}
"""
FLAG_UPSTREAM = ("192.0.2.10",)


@dataclass(frozen=True)
class Case:
    flag: str  # `run`'s option name
    value: object  # what the operator gives, as click passes it
    read: Callable[[Config], object]
    default: object  # no Corefile, flag not given
    corefile: object  # the Corefile, flag not given
    given: object  # the flag given explicitly, over the Corefile


def stale_windows(c: Config) -> object:
    return {z.cache.stale_window for z in c.zones}


def prefetches(c: Config) -> object:
    return {(z.cache.prefetch_amount, z.cache.prefetch_duration, z.cache.prefetch_percentage) for z in c.zones}


CASES = [
    Case("port", 5300, lambda c: c.port, 53, 5353, 5300),
    Case("local_ip", ("127.0.0.2,::1",), lambda c: c.listen, ("169.254.20.10",), ("127.0.0.1",), ("127.0.0.2", "::1")),
    Case("metrics_address", "off", lambda c: c.metrics_address, "0.0.0.0:9253", "127.0.0.1:9300", None),
    Case("metrics_address", ":9400", lambda c: c.metrics_endpoint, Address("0.0.0.0", 9253),
         Address("127.0.0.1", 9300), Address("0.0.0.0", 9400)),  # fmt: skip
    Case("health_address", "[::1]:8282", lambda c: c.health_address, "169.254.20.10:8080", "127.0.0.1:8181",
         "[::1]:8282"),  # fmt: skip
    Case("health_address", "OFF", lambda c: c.health_endpoint, Address("169.254.20.10", 8080),
         Address("127.0.0.1", 8181), None),  # fmt: skip
    Case("lameduck", 1.0, lambda c: c.lameduck, 5.0, 2.0, 1.0),
    Case("query_log", False, lambda c: c.query_log, False, True, False),
    Case("serve_stale", 0, stale_windows, {3600}, {600}, {0}),
    Case("serve_stale_mode", "verify", lambda c: {z.cache.stale_mode for z in c.zones}, {"verify"}, {"immediate"},
         {"verify"}),  # fmt: skip
    Case("prefetch", "5 30s 20%", prefetches, {(0, 60.0, 10)}, {(0, 60.0, 10)}, {(5, 30.0, 20)}),
    Case("try_timeout", 0.5, lambda c: {z.forward.try_timeout for z in c.zones}, {2.0}, {2.0}, {0.5}),
    # Flags the Corefile has no word for: the Corefile leaves their default alone.
    Case("control_socket", "none", lambda c: c.control_socket, DEFAULT_CONTROL_SOCKET, DEFAULT_CONTROL_SOCKET, None),
    Case("node_lock", "off", lambda c: c.node_lock, default_node_lock("nodelocaldns"),
         default_node_lock("nodelocaldns"), None),  # fmt: skip
    Case("cache_memory", "64Mi", lambda c: c.cache_memory, DEFAULT_CACHE_MEMORY, DEFAULT_CACHE_MEMORY, 64 * 2**20),
    Case("max_tcp_connections", 50, lambda c: c.max_tcp_connections, 1024, 1024, 50),
]


def opts_with(**given: object) -> dict[str, object]:
    """`run`'s options at their defaults, then `given` (as click would pass them)."""
    opts: dict[str, object] = {o.name: o.default for o in run.params if isinstance(o, click.Option) and o.name}
    opts.update(given)
    return opts


@pytest.fixture
def files(tmp_path: Path) -> dict[str, object]:
    """A test resolv.conf and the Corefile above (the agent never reads this machine's)."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 203.0.113.1\n")
    corefile = tmp_path / "Corefile"
    corefile.write_text(COREFILE)
    (tmp_path / "kube-dns").mkdir()  # an empty kube-dns ConfigMap: no stub domains
    return {"node_resolv_conf": str(resolv), "config": str(corefile), "kube_dns_config_dir": str(tmp_path / "kube-dns")}


def ids(case: Case) -> str:
    return f"{case.flag}={case.value}"


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_a_flag_not_given_and_no_corefile_leave_the_built_in_default(case: Case, files: dict[str, object]) -> None:
    opts = opts_with(upstream=FLAG_UPSTREAM, node_resolv_conf=files["node_resolv_conf"])
    assert case.read(load_config(opts, frozenset({"upstream"}))) == case.default


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_the_corefile_wins_over_the_default(case: Case, files: dict[str, object]) -> None:
    opts = opts_with(**files, setup_interface=False, setup_iptables=False)
    assert case.read(load_config(opts)) == case.corefile


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_a_flag_given_explicitly_wins_over_the_corefile(case: Case, files: dict[str, object]) -> None:
    opts = opts_with(**files, setup_interface=False, setup_iptables=False, **{case.flag: case.value})
    assert case.read(load_config(opts, frozenset({case.flag}))) == case.given


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_without_a_corefile_a_given_flag_decides(case: Case, files: dict[str, object]) -> None:
    opts = opts_with(upstream=FLAG_UPSTREAM, node_resolv_conf=files["node_resolv_conf"], **{case.flag: case.value})
    assert case.read(load_config(opts, frozenset({"upstream", case.flag}))) == case.given


REFUSED = [
    # (flag, value, with the Corefile?, the message's telling part)
    ("upstream", ("192.0.2.1",), True, "--upstream cannot be combined with --config"),
    ("other_ttl", 60, True, "--other-ttl cannot be combined with --config"),
    ("metrics_address", "localhost:9253", False, "--metrics-address: 'localhost:9253' is not an IP address"),
    ("metrics_address", "localhost:9253", True, "--metrics-address: 'localhost:9253' is not an IP address"),
    ("health_address", "127.0.0.1", True, "--health-address '127.0.0.1' has no port"),
    ("health_address", "[::1]:99999", False, "the port must be a number from 1 to 65535"),
    ("local_ip", ("127.0.0.1:53",), False, "--local-ip '127.0.0.1:53' is not an IP address"),
    ("local_ip", ("[::1]",), True, "--local-ip '[::1]' is not an IP address"),
    ("cache_memory", "lots", True, "--cache-memory: 'lots' is not a size"),
    ("cache_memory", "10", False, "at least 1Mi"),
    ("interface_name", "a/b", True, "interface name 'a/b' is not usable"),
    ("upstream", ("host.example:53",), False, "'host.example:53' is not an IP address"),
    ("prefetch", "5 30s 5%", False, "--prefetch '5 30s 5%': PERCENTAGE must be 10% to 90%"),
    ("prefetch", "often", True, "--prefetch 'often': AMOUNT must be a whole number"),
    ("prefetch", "5 1m 20% 4", False, "--prefetch '5 1m 20% 4': expected prefetch AMOUNT"),
]


@pytest.mark.parametrize("flag, value, corefile, message", REFUSED, ids=[f"{r[0]}={r[1]}" for r in REFUSED])
def test_what_the_loader_refuses(flag: str, value: object, corefile: bool, message: str,
                                 files: dict[str, object]) -> None:  # fmt: skip
    base = files if corefile else {"node_resolv_conf": files["node_resolv_conf"], "upstream": FLAG_UPSTREAM}
    opts = opts_with(**{**base, flag: value}, setup_interface=False, setup_iptables=False)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config(opts, frozenset({flag}))


def test_a_corefile_listening_everywhere_is_refused_for_node_setup(files: dict[str, object], tmp_path: Path) -> None:
    unbound = tmp_path / "Unbound.Corefile"
    unbound.write_text(".:53 {\n    forward . 192.0.2.1\n}\n")
    with pytest.raises(ConfigError, match=r"listens on 0\.0\.0\.0 :: \(no bind\)"):
        load_config(opts_with(**{**files, "config": str(unbound)}))


def test_check_config_prints_the_merged_endpoints(files: dict[str, object]) -> None:
    """What a user sees: check-config runs the same loader, so flags given win in its output too."""
    args = ["check-config", "--config", str(files["config"]), "--node-resolv-conf", str(files["node_resolv_conf"]),
            "--kube-dns-config-dir", str(files["kube_dns_config_dir"])]  # fmt: skip
    plain = CliRunner().invoke(main, args)
    assert plain.exit_code == 0, plain.output
    assert plain.output.splitlines()[0] == "listen 127.0.0.1 port 5353; metrics 127.0.0.1:9300; health 127.0.0.1:8181"
    given = CliRunner().invoke(main, [*args, "--metrics-address", ":9999", "--health-address", "off", "--port", "5400"])
    assert given.exit_code == 0, given.output
    assert given.output.splitlines()[0] == "listen 127.0.0.1 port 5400; metrics 0.0.0.0:9999"


def test_off_is_none_in_config_however_it_was_spelled(files: dict[str, object]) -> None:
    base = Config(listen=("127.0.0.1",), port=0, zones=(), control_socket="", metrics_address="", health_address="",
                  node_lock="")  # fmt: skip
    assert (base.control_socket, base.metrics_address, base.health_address, base.node_lock) == (None,) * 4
    assert (base.metrics_endpoint, base.health_endpoint) == (None, None)
    for word in ("off", "OFF", " none ", ""):
        opts = opts_with(upstream=FLAG_UPSTREAM, node_resolv_conf=files["node_resolv_conf"], control_socket=word,
                         metrics_address=word, health_address=word, node_lock=word)  # fmt: skip
        config = load_config(opts, frozenset({"upstream", "control_socket", "metrics_address", "health_address",
                                              "node_lock"}))  # fmt: skip
        assert (config.control_socket, config.metrics_address, config.health_address, config.node_lock) == (None,) * 4


@pytest.mark.parametrize(
    "text, address",
    [("192.0.2.1", Address("192.0.2.1", 53)), ("192.0.2.1:5353", Address("192.0.2.1", 5353)),
     ("2001:db8::1", Address("2001:db8::1", 53)), ("[2001:db8::1]:54", Address("2001:db8::1", 54)),
     (" [::1] ", Address("::1", 53))],
)  # fmt: skip
def test_one_parser_reads_every_address_spelling(text: str, address: Address) -> None:
    assert Address.parse(text) == address


@pytest.mark.parametrize(
    "text, address",
    [(":9253", Address("0.0.0.0", 9253)), ("127.0.0.1:9", Address("127.0.0.1", 9)),
     ("[::1]:8080", Address("::1", 8080)), ("127.0.0.1", Address("127.0.0.1", 0))],
)  # fmt: skip
def test_http_addresses_take_a_bare_port_as_every_ipv4_address(text: str, address: Address) -> None:
    assert Address.parse_http(text) == address


@pytest.mark.parametrize("text", ["", "localhost", "192.0.2.1:53", "[::1]", "192.0.2.256", "::g"])
def test_parse_ip_refuses_with_the_callers_words(text: str) -> None:
    with pytest.raises(ConfigError, match="^--flag: give a bare IP$"):
        parse_ip(text, "--flag: give a bare IP")
