"""A whole Kubernetes node, simulated in network namespaces of the tests' own.

    pod  (203.0.113.6, 2001:db8:5::2)      resolv.conf: search ... / nameserver 169.254.20.10 / ndots:5
      │ veth
    node (203.0.113.5, 2001:db8:5::1)      `nodecache run` on 169.254.20.10, 192.0.2.53 (the kube-dns
      │                                    ClusterIP) and 2001:db8:20::10; simulated kube-proxy: DNAT of
      │ veth                               192.0.2.53:53 (kube-dns) and 192.0.2.54:53 (kube-dns-upstream,
      │                                    the agent's upstream) to the CoreDNS "pod" 192.0.2.10:53
    coredns (192.0.2.10, 198.51.100.53)    NSD with the cluster zone on 192.0.2.10; a second NSD on
                                           198.51.100.53 is the node's own resolver (example.org)

Only documentation addresses are used. Namespaces get random suffixes and are deleted
afterwards with their /etc/netns directories; every process is stopped by its PID.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nodecache.firewall import COMMENT_PREFIX
from tests.conftest import AgentProcess
from tests.support import netns as ns
from tests.support.clients import DigResult, parse_output
from tests.support.nsd import NSD
from tests.support.samplezone import zone_texts

LINK_LOCAL_IP = "169.254.20.10"
KUBE_DNS_IP = "192.0.2.53"  # the kube-dns Service's ClusterIP: pods' nameserver in iptables mode
UPSTREAM_SVC_IP = "192.0.2.54"  # kube-dns-upstream: same CoreDNS endpoints, never bound by the agent
COREDNS_IP = "192.0.2.10"
LOCAL_IP6 = "2001:db8:20::10"
LOCAL_IPS = (LINK_LOCAL_IP, KUBE_DNS_IP, LOCAL_IP6)
NODE_RESOLVER_IP = "198.51.100.53"
EXTERNAL_NAME, EXTERNAL_ADDR = "www.example.org", "203.0.113.80"
INTERFACE = "nodelocaldns"
RULES_PER_IP = 12
SETUP_TIMEOUT = 15.0

POD_RESOLV_CONF = f"""search default.svc.cluster.local svc.cluster.local cluster.local
nameserver {LINK_LOCAL_IP}
options ndots:5
"""

EXAMPLE_ORG_ZONE = f"""$ORIGIN example.org.
$TTL 300
example.org. 300 IN SOA ns.example.org. hostmaster.example.org. 1 3600 600 86400 300
example.org. 300 IN NS ns.example.org.
ns.example.org. 300 IN A {NODE_RESOLVER_IP}
www.example.org. 300 IN A {EXTERNAL_ADDR}
"""


def _skip_reason() -> str | None:
    reason = ns.unavailable_reason()
    if reason:
        return reason
    for binary, package in (("nsd", "nsd"), ("dig", "bind9-dnsutils"), ("getent", "libc-bin"), ("iptables", "iptables")):
        if shutil.which(binary) is None:
            return f"{binary} is not installed (Debian package {package}; `make test` installs it)"
    return None


@dataclass
class Node:
    """The namespaces, the servers in them, and helpers to act as a pod, the node or an operator."""

    coredns: str
    node: str
    pod: str
    cluster_dns: NSD
    node_resolver: NSD
    resolv_conf: Path
    node_lock: Path  # this node's own lock file (a real node's is in /run/nodecache-node, shared by its agents)
    agents: list[AgentProcess] = field(default_factory=list)

    # -- the agent

    def agent(self, *extra: str) -> AgentProcess:
        """`nodecache run` as root inside the node namespace, started and set up."""
        args = ["--local-ip", ",".join(LOCAL_IPS), "--upstream", UPSTREAM_SVC_IP,
                "--node-resolv-conf", str(self.resolv_conf), "--node-lock", str(self.node_lock), *extra]  # fmt: skip
        agent = AgentProcess(args, node_setup=True, command_prefix=["ip", "netns", "exec", self.node])
        self.agents.append(agent)
        agent.start()
        wait_for_log(agent, "node setup complete")
        return agent

    def teardown(self) -> subprocess.CompletedProcess[str]:
        """`nodecache teardown` as an operator would run it on the node."""
        return ns.exec_in(self.node, [sys.executable, "-m", "nodecache", "teardown"], check=False)

    # -- clients

    def dig(self, where: str, server: str, name: str, qtype: str = "A", *extra: str, timeout: int = 2) -> DigResult:
        """dig run inside namespace `where` (the pod, or the node for a host-network client)."""
        done = ns.exec_in(where, ["dig", f"@{server}", name, qtype, "+tries=1", f"+timeout={timeout}", *extra],
                          check=False, timeout=timeout + 10)  # fmt: skip
        results = parse_output(done.stdout + done.stderr)
        result = results[-1] if results else DigResult(timed_out=True)
        result.returncode, result.output = done.returncode, done.stdout + done.stderr
        return result

    def pod_dig(self, server: str, name: str, qtype: str = "A", *extra: str) -> DigResult:
        return self.dig(self.pod, server, name, qtype, *extra)

    # -- what is on the node

    def our_rules(self) -> list[str]:
        lines = []
        for tool in ("iptables-save", "ip6tables-save"):
            lines += [line for line in ns.exec_in(self.node, [tool]).stdout.splitlines() if COMMENT_PREFIX in line]
        return lines

    def link(self) -> dict[str, Any] | None:
        done = ns.ip("-n", self.node, "-j", "addr", "show", "dev", INTERFACE, check=False)
        return json.loads(done.stdout)[0] if done.returncode == 0 and done.stdout.strip() else None

    def addresses(self) -> set[str]:
        link = self.link()
        return {a["local"] for a in link["addr_info"]} if link else set()


def wait_for_log(agent: AgentProcess, text: str, timeout: float = SETUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in agent.log:
            return
        if agent.proc is not None and agent.proc.poll() is not None:
            break
        time.sleep(0.02)
    raise AssertionError(f"agent never logged {text!r}:\n{agent.log}")


def _build(stack: ExitStack, workdir: Path) -> Node:
    coredns = stack.enter_context(ns.namespace("nc-coredns"))
    node = stack.enter_context(ns.namespace("nc-node"))
    pod = stack.enter_context(ns.namespace("nc-pod"))

    # node <-> coredns: a transfer link; the CoreDNS "pod" and the node's resolver sit behind it.
    ns.veth(node, "to-coredns", coredns, "to-node")
    ns.ip("-n", node, "addr", "add", "203.0.113.1/30", "dev", "to-coredns")
    ns.ip("-n", coredns, "addr", "add", "203.0.113.2/30", "dev", "to-node")
    for addr in (f"{COREDNS_IP}/32", f"{NODE_RESOLVER_IP}/32"):
        ns.ip("-n", coredns, "addr", "add", addr, "dev", "lo")
    ns.ip("-n", coredns, "route", "add", "default", "via", "203.0.113.1")
    ns.ip("-n", node, "route", "add", "default", "via", "203.0.113.2")

    # node <-> pod, dual stack (nodad: usable at once).
    ns.veth(node, "to-pod", pod, "eth0")
    ns.ip("-n", node, "addr", "add", "203.0.113.5/30", "dev", "to-pod")
    ns.ip("-n", pod, "addr", "add", "203.0.113.6/30", "dev", "eth0")
    ns.ip("-n", node, "addr", "add", "2001:db8:5::1/64", "dev", "to-pod", "nodad")
    ns.ip("-n", pod, "addr", "add", "2001:db8:5::2/64", "dev", "eth0", "nodad")
    ns.ip("-n", pod, "route", "add", "default", "via", "203.0.113.5")
    ns.ip("-n", pod, "-6", "route", "add", "default", "via", "2001:db8:5::1")
    ns.exec_in(node, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])

    # kube-proxy (iptables mode), reduced to the two Services that matter here.
    for svc in (KUBE_DNS_IP, UPSTREAM_SVC_IP):
        for chain in ("PREROUTING", "OUTPUT"):
            for proto in ("udp", "tcp"):
                ns.exec_in(node, ["iptables", "-t", "nat", "-A", chain, "-d", f"{svc}/32", "-p", proto, "--dport", "53",
                                  "-m", "comment", "--comment", "kube-proxy simulated", "-j", "DNAT",
                                  "--to-destination", f"{COREDNS_IP}:53"])  # fmt: skip

    ns.write_etc(pod, "resolv.conf", POD_RESOLV_CONF)
    resolv_conf = workdir / "node-resolv.conf"
    resolv_conf.write_text(f"# the node's own resolver (a test stand-in)\nnameserver {NODE_RESOLVER_IP}\n")

    cluster_dns = stack.enter_context(NSD(zone_texts("cluster.local"), workdir / "coredns", COREDNS_IP, netns=coredns))
    node_resolver = stack.enter_context(NSD({"example.org.": EXAMPLE_ORG_ZONE}, workdir / "resolver", NODE_RESOLVER_IP,
                                            netns=coredns))  # fmt: skip
    return Node(coredns, node, pod, cluster_dns, node_resolver, resolv_conf, workdir / "node.lock")


@pytest.fixture(scope="module")
def cluster_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    with ExitStack() as stack:
        yield _build(stack, tmp_path_factory.mktemp("node"))


@pytest.fixture
def k8s(cluster_node: Node) -> Iterator[Node]:
    """The node, handed back clean after each test: agents stopped (by PID), leftovers torn down."""
    try:
        yield cluster_node
    finally:
        for agent in cluster_node.agents:
            if agent.proc is not None and agent.proc.poll() is None:
                agent.stop()
        cluster_node.agents.clear()
        cluster_node.teardown()
