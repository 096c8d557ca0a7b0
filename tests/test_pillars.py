"""nodecache.pillars: placeholders, the kube-dns ConfigMap, and the stock Corefile end to end.

Everything takes paths and an environment mapping, so no test touches os.environ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nodecache.config import Address, CachePolicy, Config
from nodecache.corefile import COREDNS_MIN_TTL, Endpoint, Overrides, check_config_table, parse_corefile, to_config
from nodecache.errors import ConfigError
from nodecache.pillars import (
    DEFAULT_KUBE_DNS_CONFIG_DIR,
    PILLAR_CLUSTER_DNS,
    KubeDnsConfig,
    PillarValues,
    cluster_dns_ip,
    default_kube_dns_dir,
    load_node_local_corefile,
    pillar_values,
    read_kube_dns_dir,
    service_host_variable,
    substitute,
    udp_to_custom_upstreams,
    with_stub_domains,
)

FIXTURES = Path(__file__).parent / "fixtures"
STOCK = FIXTURES / "node-local-dns.Corefile"
LOCAL_IP = "169.254.20.10"
KUBE_DNS_IP = "192.0.2.10"  # the kube-dns ClusterIP the agent also serves (iptables mode)
UPSTREAM_IP = "192.0.2.53"  # the kube-dns-upstream Service in front of CoreDNS
ENV = {"KUBE_DNS_UPSTREAM_SERVICE_HOST": UPSTREAM_IP}


@pytest.fixture
def node_resolv(tmp_path: Path) -> Path:
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 203.0.113.1\nnameserver 203.0.113.2\n")
    return path


def kube_dns_dir(tmp_path: Path, **files: Any) -> Path:
    """A kube-dns ConfigMap mount: values are JSON-encoded unless already text."""
    root = tmp_path / "kube-dns"
    root.mkdir()
    for name, value in files.items():
        (root / name).write_text(value if isinstance(value, str) else json.dumps(value, indent=2))
    return root


def load(node_resolv: Path, kube_dir: Path | None = None, env: dict[str, str] | None = None,
         local_ips: tuple[str, ...] = (LOCAL_IP, KUBE_DNS_IP), corefile: Path = STOCK) -> tuple[Config, tuple[str, ...]]:
    parsed, warnings = load_node_local_corefile(
        corefile,
        local_ips=local_ips,
        upstream_svc="kube-dns-upstream",
        env=ENV if env is None else env,
        kube_dns_dir=kube_dir,
        node_resolv_conf=str(node_resolv),
    )
    return to_config(parsed), warnings


# ---------------------------------------------------------------------------- the upstream Service


@pytest.mark.parametrize(
    ("service", "variable"),
    [
        ("kube-dns-upstream", "KUBE_DNS_UPSTREAM_SERVICE_HOST"),
        ("kube-dns", "KUBE_DNS_SERVICE_HOST"),
        ("coredns", "COREDNS_SERVICE_HOST"),
        ("dns2", "DNS2_SERVICE_HOST"),
    ],
)
def test_service_host_variable(service: str, variable: str) -> None:
    assert service_host_variable(service) == variable


@pytest.mark.parametrize("service", ["", "Kube-DNS", "kube_dns", "-dns", "dns-", "kube.dns", "1dns"])
def test_service_host_variable_rejects_non_service_names(service: str) -> None:
    with pytest.raises(ConfigError, match="is not a Service name"):
        service_host_variable(service)


def test_cluster_dns_ip() -> None:
    assert cluster_dns_ip("kube-dns-upstream", ENV) == UPSTREAM_IP
    assert cluster_dns_ip("kube-dns-upstream", {"KUBE_DNS_UPSTREAM_SERVICE_HOST": " 2001:db8::53 "}) == "2001:db8::53"


@pytest.mark.parametrize("env", [{}, {"KUBE_DNS_UPSTREAM_SERVICE_HOST": ""}, {"KUBE_DNS_SERVICE_HOST": UPSTREAM_IP}])
def test_cluster_dns_ip_missing_names_the_variable(env: dict[str, str]) -> None:
    """The reference writes <nil> into the Corefile; we say which variable is missing."""
    with pytest.raises(ConfigError, match=r"^KUBE_DNS_UPSTREAM_SERVICE_HOST is not set") as info:
        cluster_dns_ip("kube-dns-upstream", env)
    assert "<nil>" not in str(info.value)


def test_cluster_dns_ip_must_be_an_ip() -> None:
    with pytest.raises(ConfigError, match=r"KUBE_DNS_UPSTREAM_SERVICE_HOST='dns.test' is not an IP address"):
        cluster_dns_ip("kube-dns-upstream", {"KUBE_DNS_UPSTREAM_SERVICE_HOST": "dns.test"})


# ---------------------------------------------------------------------------- substitution


VALUES = PillarValues(
    local_dns=LOCAL_IP,
    dns_server=KUBE_DNS_IP,
    cluster_dns=UPSTREAM_IP,
    upstream_servers="203.0.113.1 203.0.113.2",
    dns_domain="cluster.local",
)


@pytest.mark.parametrize(
    ("line", "values", "expected"),
    [
        ("bind __PILLAR__LOCAL__DNS__ __PILLAR__DNS__SERVER__", VALUES, f"bind {LOCAL_IP} {KUBE_DNS_IP}"),
        ("bind __PILLAR__LOCAL__DNS__ __PILLAR__DNS__SERVER__", PillarValues(LOCAL_IP), f"bind {LOCAL_IP} "),
        ("forward . __PILLAR__CLUSTER__DNS__", VALUES, f"forward . {UPSTREAM_IP}"),
        ("forward . __PILLAR__UPSTREAM__SERVERS__", VALUES, "forward . 203.0.113.1 203.0.113.2"),
        ("forward . __PILLAR__UPSTREAM__SERVERS__", PillarValues(LOCAL_IP), "forward . /etc/resolv.conf"),
        ("__PILLAR__DNS__DOMAIN__:53 {", VALUES, "cluster.local:53 {"),
        ("health __PILLAR__LOCAL__DNS__:8080", VALUES, f"health {LOCAL_IP}:8080"),
        ("health __PILLAR__LOCAL__DNS__:8080", PillarValues("2001:db8::10"), "health [2001:db8::10]:8080"),
        ("bind __PILLAR__LOCAL__DNS__", PillarValues("2001:db8::10"), "bind 2001:db8::10"),
        ("# __PILLAR__CLUSTER__DNS__ and __PILLAR__OTHER__ in a comment", PillarValues(LOCAL_IP),
         "# __PILLAR__CLUSTER__DNS__ and __PILLAR__OTHER__ in a comment"),
        ("forward . __PILLAR__UPSTREAM__SERVERS__", PillarValues(LOCAL_IP, upstream_servers='"/my dir/resolv.conf"'),
         'forward . "/my dir/resolv.conf"'),
    ],
)
def test_substitute(line: str, values: PillarValues, expected: str) -> None:
    assert substitute(line, values) == expected


def test_substitute_keeps_line_numbers() -> None:
    text = STOCK.read_text()
    out = substitute(text, VALUES)
    assert out.count("\n") == text.count("\n")
    assert "__PILLAR__" not in out.split("\n", 3)[3]  # only the header comment may mention placeholders


def test_substitute_cluster_dns_missing_names_line_and_variable() -> None:
    values = pillar_values([LOCAL_IP], "kube-dns-upstream", {}, KubeDnsConfig())
    text = "# header\n.:53 {\n    forward . __PILLAR__CLUSTER__DNS__\n}\n"
    with pytest.raises(ConfigError, match=r"^Corefile:3: __PILLAR__CLUSTER__DNS__ cannot be filled in: "
                                          r"KUBE_DNS_UPSTREAM_SERVICE_HOST is not set"):
        substitute(text, values)


def test_cluster_dns_needed_only_when_used() -> None:
    values = pillar_values([LOCAL_IP], None, {}, KubeDnsConfig())
    assert substitute("forward . 192.0.2.53", values) == "forward . 192.0.2.53"
    with pytest.raises(ConfigError, match="no --upstream-svc was given"):
        substitute(f"forward . {PILLAR_CLUSTER_DNS}", values)


def test_unknown_pillar_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^Corefile:2: unknown placeholder __PILLAR__UPSTREAM__SERVER__;"):
        substitute(".:53 {\n forward . __PILLAR__UPSTREAM__SERVER__\n}", VALUES)


def test_pillar_values(node_resolv: Path) -> None:
    """The first local IP is LOCAL__DNS, the rest DNS__SERVER; upstreams default to resolv.conf."""
    values = pillar_values([LOCAL_IP, KUBE_DNS_IP], "kube-dns-upstream", ENV, KubeDnsConfig(), str(node_resolv), "Cluster.Test.")
    assert values == PillarValues(
        LOCAL_IP, KUBE_DNS_IP, UPSTREAM_IP, values.cluster_dns_missing, str(node_resolv), "Cluster.Test"
    )
    custom = KubeDnsConfig(upstream_nameservers=(Address("198.51.100.1"), Address("2001:db8::1", 5353)))
    assert pillar_values([LOCAL_IP], None, {}, custom).upstream_servers == "198.51.100.1:53 [2001:db8::1]:5353"


@pytest.mark.parametrize(("ips", "message"), [((), "no local IP"), (("node.test",), "'node.test' is not an IP address")])
def test_pillar_values_rejects(ips: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        pillar_values(ips, None, {}, KubeDnsConfig())


# ---------------------------------------------------------------------------- kube-dns ConfigMap


def test_kube_dns_dir_absent_or_empty(tmp_path: Path) -> None:
    assert read_kube_dns_dir(None) == KubeDnsConfig()
    root = kube_dns_dir(tmp_path, stubDomains="", upstreamNameservers="  \n")
    config = read_kube_dns_dir(root)
    assert (config.stub_domains, config.upstream_nameservers, config.warnings) == ((), (), ())


def test_kube_dns_dir_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="kube-dns config directory .* does not exist"):
        read_kube_dns_dir(tmp_path / "nowhere")


def test_default_kube_dns_dir(tmp_path: Path) -> None:
    """The default is used only when the ConfigMap is mounted there, as node-cache does."""
    assert default_kube_dns_dir(tmp_path) == str(tmp_path)
    assert default_kube_dns_dir(tmp_path / "absent") is None
    assert DEFAULT_KUBE_DNS_CONFIG_DIR == "/etc/kube-dns"


def test_stub_domains_and_upstreams(tmp_path: Path) -> None:
    root = kube_dns_dir(
        tmp_path,
        stubDomains={"Acme.Test": ["198.51.100.53", "198.51.100.54:5353"], "corp.example": ["2001:db8::53"]},
        upstreamNameservers=["203.0.113.53", "203.0.113.54:53"],
    )
    config = read_kube_dns_dir(root)
    assert config.stub_domains == (
        ("acme.test.", (Address("198.51.100.53"), Address("198.51.100.54", 5353))),
        ("corp.example.", (Address("2001:db8::53"),)),
    )
    assert config.upstream_nameservers == (Address("203.0.113.53"), Address("203.0.113.54"))
    assert config.warnings == ()
    assert config.stub_lines == (2, 6)  # where each domain is written, for messages


@pytest.mark.parametrize(
    ("stubs", "kept", "warning"),
    [
        ({"acme.test": ["ns1.acme.test", "198.51.100.53"]}, {"acme.test.": (Address("198.51.100.53"),)},
         "stub domain acme.test.: nameserver 'ns1.acme.test' skipped; it is a host name"),
        ({"acme.test": ["ns1.acme.test"], "ok.test": ["198.51.100.53"]}, {"ok.test.": (Address("198.51.100.53"),)},
         "stub domain acme.test. has no usable nameserver; skipped"),
        ({"acme.test": "198.51.100.53"}, {}, "stub domain acme.test. must map to a JSON list"),
        ({"bad..name": ["198.51.100.53"]}, {}, "stub domain 'bad..name' is not a domain name; skipped"),
        ({"": ["198.51.100.53"]}, {}, "stub domain '' is not a domain name"),
        ({"acme.test": [53]}, {}, "nameserver 53 skipped; give an IP or IP:PORT"),
    ],
)
def test_unusable_stub_entries_are_skipped_with_a_warning(
    tmp_path: Path, stubs: dict[str, Any], kept: dict[str, Any], warning: str
) -> None:
    """One bad entry is reported and skipped; it never takes the node's DNS down."""
    config = read_kube_dns_dir(kube_dns_dir(tmp_path, stubDomains=stubs))
    assert dict(config.stub_domains) == kept
    assert any(warning in w for w in config.warnings), config.warnings
    assert all(w.startswith(str(tmp_path / "kube-dns" / "stubDomains")) for w in config.warnings)


def test_hostname_upstream_nameserver_skipped(tmp_path: Path) -> None:
    config = read_kube_dns_dir(kube_dns_dir(tmp_path, upstreamNameservers=["dns.example", "203.0.113.53"]))
    assert config.upstream_nameservers == (Address("203.0.113.53"),)
    assert "nameserver 'dns.example' skipped; it is a host name" in config.warnings[0]


def test_no_usable_upstream_nameserver_falls_back(tmp_path: Path) -> None:
    config = read_kube_dns_dir(kube_dns_dir(tmp_path, upstreamNameservers=["dns.example"]))
    assert config.upstream_nameservers == ()
    assert "names outside the cluster use the node's resolv.conf" in config.warnings[-1]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"stubDomains": '{"acme.test": ["198.51.100.53"],\n}'}, r"stubDomains:2: not valid JSON"),
        ({"stubDomains": '["198.51.100.53"]'}, r"stubDomains: must be a JSON object"),
        ({"upstreamNameservers": "203.0.113.53"}, r"upstreamNameservers:1: not valid JSON"),
        ({"upstreamNameservers": '{"a": 1}'}, r"upstreamNameservers: must be a JSON list"),
    ],
)
def test_bad_json_names_the_file(tmp_path: Path, files: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        read_kube_dns_dir(kube_dns_dir(tmp_path, **files))


# ---------------------------------------------------------------------------- the stock Corefile, end to end


def test_stock_configmap_gives_the_reference_zones(node_resolv: Path) -> None:
    """Four zones exactly as node-local-dns runs them, every policy spelled out."""
    config, warnings = load(node_resolv)
    assert warnings == ()
    zones = {z.name: z for z in config.zones}
    assert list(zones) == ["cluster.local.", "in-addr.arpa.", "ip6.arpa.", "."]

    cluster_cache = CachePolicy(
        success_capacity=9984, success_max_ttl=30, success_min_ttl=COREDNS_MIN_TTL,
        denial_capacity=9984, denial_max_ttl=5, denial_min_ttl=COREDNS_MIN_TTL, servfail_ttl=5,
    )
    other_cache = CachePolicy(
        success_capacity=9984, success_max_ttl=30, success_min_ttl=COREDNS_MIN_TTL,
        denial_capacity=9984, denial_max_ttl=30, denial_min_ttl=COREDNS_MIN_TTL, servfail_ttl=5,
    )
    expected = {
        "cluster.local.": ((Address(UPSTREAM_IP),), True, cluster_cache),
        "in-addr.arpa.": ((Address(UPSTREAM_IP),), True, other_cache),
        "ip6.arpa.": ((Address(UPSTREAM_IP),), True, other_cache),
        ".": ((Address("203.0.113.1"), Address("203.0.113.2")), False, other_cache),
    }
    for name, (upstreams, force_tcp, cache) in expected.items():
        zone = zones[name]
        assert zone.forward.upstreams == upstreams, name
        assert zone.forward.force_tcp is force_tcp, name
        assert zone.cache == cache, name
        f = zone.forward
        assert (f.policy, f.max_fails, f.health_check, f.expire, f.max_concurrent) == ("random", 2, 0.5, 10.0, 1000)
    assert config.listen == (LOCAL_IP, KUBE_DNS_IP)
    assert config.port == 53
    assert config.metrics_address == "0.0.0.0:9253"
    assert config.health_address == f"{LOCAL_IP}:8080"


def test_stock_configmap_blocks(node_resolv: Path) -> None:
    """What Config cannot hold yet (errors, loop, reload, per-block endpoints) is parsed too."""
    parsed, _ = load_node_local_corefile(
        STOCK, local_ips=[LOCAL_IP, KUBE_DNS_IP], upstream_svc="kube-dns-upstream", env=ENV,
        node_resolv_conf=str(node_resolv),
    )
    assert [b.line for b in parsed.blocks] == [4, 19, 30, 41]
    for block in parsed.blocks:
        assert (block.errors, block.loop, block.log) == (True, True, False)
        assert block.reload is not None and block.reload.interval == 30.0
        assert block.bind == (LOCAL_IP, KUBE_DNS_IP)
        assert block.prometheus == Endpoint("", 9253)
        assert block.keys[0].port == 53
    assert [b.health for b in parsed.blocks] == [Endpoint(LOCAL_IP, 8080), None, None, None]


def test_stock_configmap_link_local_only(node_resolv: Path) -> None:
    """IPVS mode: only the link-local address, __PILLAR__DNS__SERVER__ left empty."""
    config, _ = load(node_resolv, local_ips=(LOCAL_IP,))
    assert config.listen == (LOCAL_IP,)


def test_stock_configmap_ipv6_local_ip(node_resolv: Path) -> None:
    config, _ = load(node_resolv, local_ips=("2001:db8::10",))
    assert config.listen == ("2001:db8::10",)
    assert config.health_address == "[2001:db8::10]:8080"


def test_stock_configmap_without_service_env_fails_clearly(node_resolv: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(node_resolv, env={})
    message = str(info.value)
    assert message.startswith(
        f"{STOCK}:13: __PILLAR__CLUSTER__DNS__ cannot be filled in: KUBE_DNS_UPSTREAM_SERVICE_HOST is not set"
    )
    assert "<nil>" not in message


def test_node_resolv_conf_naming_this_agent_is_skipped(tmp_path: Path) -> None:
    """A node that itself resolves through 169.254.20.10 must not forward to itself."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {LOCAL_IP}\nnameserver 203.0.113.1\n")
    config, _ = load(resolv)
    assert config.zones[-1].forward.upstreams == (Address("203.0.113.1"),)


def test_upstream_nameservers_replace_the_node_resolvers(tmp_path: Path, node_resolv: Path) -> None:
    root = kube_dns_dir(tmp_path, upstreamNameservers=["198.51.100.1", "198.51.100.2:5353"])
    config, warnings = load(node_resolv, root)
    root_zone = {z.name: z for z in config.zones}["."]
    assert root_zone.forward.upstreams == (Address("198.51.100.1"), Address("198.51.100.2", 5353))
    assert not root_zone.forward.force_tcp
    assert warnings == ()


def test_upstream_nameservers_switch_a_tcp_forward_to_udp(tmp_path: Path, node_resolv: Path) -> None:
    """Older ConfigMaps force TCP to __PILLAR__UPSTREAM__SERVERS__; node-cache uses UDP for custom ones."""
    corefile = tmp_path / "Corefile"
    corefile.write_text(".:53 {\n    cache 30\n    forward . __PILLAR__UPSTREAM__SERVERS__ {\n        force_tcp\n    }\n}\n")
    root = kube_dns_dir(tmp_path, upstreamNameservers=["198.51.100.1"])
    config, _ = load(node_resolv, root, corefile=corefile)
    assert not config.zones[0].forward.force_tcp
    config, _ = load(node_resolv, None, corefile=corefile)  # without them, the node's resolvers over TCP, as written
    assert config.zones[0].forward.force_tcp


def test_udp_switch_touches_only_placeholder_lines() -> None:
    tcp_block = "{\n forward . 198.51.100.1 {\n force_tcp\n }\n}\n"
    parsed = parse_corefile(f"a.test {tcp_block}b.test {tcp_block}")
    switched = udp_to_custom_upstreams(parsed, {2})
    assert [b.forward.force_tcp for b in switched.blocks if b.forward] == [False, True]


def test_stub_domains_become_zones(tmp_path: Path, node_resolv: Path) -> None:
    """Each stub domain: its own zone, `cache 30`, UDP to its servers, on the same addresses."""
    root = kube_dns_dir(tmp_path, stubDomains={"acme.test": ["198.51.100.53", "ns.acme.test"], "corp.example": ["198.51.100.54"]})
    config, warnings = load(node_resolv, root)
    zones = {z.name: z for z in config.zones}
    assert list(zones) == ["cluster.local.", "in-addr.arpa.", "ip6.arpa.", ".", "acme.test.", "corp.example."]
    acme = zones["acme.test."]
    assert acme.forward.upstreams == (Address("198.51.100.53"),)
    assert not acme.forward.force_tcp
    assert (acme.cache.success_max_ttl, acme.cache.denial_max_ttl, acme.cache.success_capacity) == (30, 30, 9984)
    assert config.listen == (LOCAL_IP, KUBE_DNS_IP)
    assert len(warnings) == 1 and "'ns.acme.test' skipped; it is a host name" in warnings[0]


def test_stub_domain_already_in_the_corefile_is_skipped(tmp_path: Path, node_resolv: Path) -> None:
    root = kube_dns_dir(tmp_path, stubDomains={"cluster.local": ["198.51.100.53"]})
    config, warnings = load(node_resolv, root)
    assert {z.name: z for z in config.zones}["cluster.local."].forward.upstreams == (Address(UPSTREAM_IP),)
    assert warnings == (
        f"{root / 'stubDomains'}:2: stub domain cluster.local. is already served by the Corefile block at {STOCK}:4; "
        "the stub domain is skipped",
    )


def test_stub_blocks_follow_the_corefile_bind_and_port() -> None:
    parsed = parse_corefile(".:5353 {\n bind 127.0.0.1\n forward . 198.51.100.1\n}\n")
    kube = KubeDnsConfig(stub_domains=(("acme.test.", (Address("198.51.100.53"),)),))
    merged, warnings = with_stub_domains(parsed, kube, ["169.254.20.10"])
    stub = merged.blocks[-1]
    assert (stub.bind, stub.keys[0].port, stub.errors, warnings) == (("127.0.0.1",), 5353, True, ())
    config = to_config(merged, Overrides())
    assert [z.name for z in config.zones] == [".", "acme.test."]


def test_check_config_of_the_stock_configmap(node_resolv: Path) -> None:
    config, _ = load(node_resolv)
    table = check_config_table(config)
    assert "cluster.local." in table and "203.0.113.1:53 203.0.113.2:53" in table
