"""The agent on a whole (simulated) Kubernetes node: pods resolve through it, it heals its
interface, it hands the node back on SIGTERM, and when it is SIGKILLed DNS keeps working.

The node is built in tests/node/conftest.py (namespaces, NSD as CoreDNS and as the node's
resolver, a kube-proxy DNAT). Root only; skipped with the reason elsewhere.
"""

from __future__ import annotations

import signal
import socket
import sys
import time
from collections.abc import Callable

import pytest

from tests.node.conftest import (
    COREDNS_IP,
    EXTERNAL_ADDR,
    EXTERNAL_NAME,
    INTERFACE,
    KUBE_DNS_IP,
    LINK_LOCAL_IP,
    LOCAL_IP6,
    LOCAL_IPS,
    RULES_PER_IP,
    Node,
)
from tests.support import netns as ns

pytestmark = [pytest.mark.root, pytest.mark.integration, pytest.mark.slow]

SERVICE = "kubernetes.default.svc.cluster.local"
HEAL_WITHIN = 1.0
FALLBACK_WITHIN = 6.0  # host-network clients: the heartbeat window (3 s) plus a dig timeout


def answered_by_cache(r: object) -> bool:
    """The agent clears AA (a cached answer is not authoritative); NSD, answering directly, sets it."""
    return getattr(r, "rcode", None) == "NOERROR" and not getattr(r, "aa", True)


def answered_by_coredns(r: object) -> bool:
    return getattr(r, "rcode", None) == "NOERROR" and bool(getattr(r, "aa", False))


# 1 ---------------------------------------------------------------------------------------------


def test_1_pods_resolve_cluster_names_reverse_names_and_the_outside_world(k8s: Node) -> None:
    k8s.agent()
    got = ns.exec_in(k8s.pod, ["getent", "hosts", "kubernetes.default"]).stdout.split()
    assert got[1:] == [SERVICE] and got[0] in ("192.0.2.1", "2001:db8::1"), got  # via the search list

    srv = k8s.pod_dig(LINK_LOCAL_IP, "_http._tcp.web.default.svc.cluster.local", "SRV")
    assert srv.rdatas("SRV") == ["0 100 80 web.default.svc.cluster.local."]
    assert k8s.pod_dig(LINK_LOCAL_IP, "1.2.0.192.in-addr.arpa", "PTR").rdatas("PTR") == [f"{SERVICE}."]

    before = k8s.node_resolver.query_count(), k8s.cluster_dns.query_count()
    assert k8s.pod_dig(LINK_LOCAL_IP, EXTERNAL_NAME).rdatas("A") == [EXTERNAL_ADDR]
    assert k8s.node_resolver.query_count() == before[0] + 1  # the node's resolver, not CoreDNS
    assert k8s.cluster_dns.query_count() == before[1]

    # The same agent answers on the kube-dns ClusterIP (iptables mode) and over IPv6.
    assert answered_by_cache(via_cluster_ip := k8s.pod_dig(KUBE_DNS_IP, SERVICE))
    assert via_cluster_ip.rdatas("A") == ["192.0.2.1"]
    assert k8s.pod_dig(LOCAL_IP6, SERVICE, "AAAA").rdatas("AAAA") == ["2001:db8::1"]
    assert k8s.pod_dig(LINK_LOCAL_IP, SERVICE, "A", "+tcp").rdatas("A") == ["192.0.2.1"]


# 2 ---------------------------------------------------------------------------------------------


def test_2_the_cache_is_in_the_path(k8s: Node) -> None:
    k8s.agent()
    for server in (LINK_LOCAL_IP, KUBE_DNS_IP):
        name = f"cache-{server.replace('.', '-')}.wild.cluster.local"  # a name no earlier test asked
        before = k8s.cluster_dns.query_count()
        answers = [k8s.pod_dig(server, name) for _ in range(5)]
        assert all(a.rdatas("A") == ["203.0.113.7"] for a in answers)
        assert k8s.cluster_dns.query_count() == before + 1, f"repeats via {server} reached CoreDNS"
        assert all(answered_by_cache(a) for a in answers)


# 3 ---------------------------------------------------------------------------------------------


def _until(check: Callable[[], object], within: float, step: float = 0.1, what: Callable[[], str] = str) -> float:
    """Seconds until `check()` holds; fails the test (saying `what()`) after `within`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > within:
            pytest.fail(f"not within {within} s {what()}")
        time.sleep(step)
    return time.monotonic() - start


def _heal_time(k8s: Node, done: Callable[[], object]) -> float:
    return _until(done, HEAL_WITHIN, 0.005, lambda: f"(healed); interface now: {k8s.link()}")


def test_3_a_deleted_address_or_link_is_back_within_a_second(k8s: Node) -> None:
    agent = k8s.agent()
    ns.ip("-n", k8s.node, "addr", "del", f"{LINK_LOCAL_IP}/32", "dev", INTERFACE)
    took = _heal_time(k8s, lambda: LINK_LOCAL_IP in k8s.addresses())
    print(f"address healed in {took * 1000:.1f} ms")
    assert k8s.pod_dig(LINK_LOCAL_IP, SERVICE).rdatas("A") == ["192.0.2.1"]

    ns.ip("-n", k8s.node, "link", "del", INTERFACE)
    took = _heal_time(k8s, lambda: k8s.addresses() >= set(LOCAL_IPS))
    print(f"link and all addresses healed in {took * 1000:.1f} ms")
    link = k8s.link()
    assert link is not None and "UP" in link["flags"]
    for server in LOCAL_IPS:
        assert k8s.pod_dig(server, SERVICE).rdatas("A") == ["192.0.2.1"], server
    assert "put back what was removed" in agent.log


# 4 ---------------------------------------------------------------------------------------------


def test_4_sigterm_hands_the_node_back_and_skip_teardown_keeps_it(k8s: Node) -> None:
    agent = k8s.agent()
    assert len(k8s.our_rules()) == RULES_PER_IP * len(LOCAL_IPS) and k8s.link() is not None
    assert agent.stop(signal.SIGTERM) == 0
    assert k8s.our_rules() == [] and k8s.link() is None
    assert ns.exec_in(k8s.node, ["ls", "/proc/net/xt_recent"]).stdout.split() == []
    log = agent.log
    # Start: listeners, then interface, then rules. Stop: rules, then interface.
    order = ["serving DNS on", f"created interface {INTERFACE}", "iptables: 36 rules in place", "node setup complete",
             "removed 36 iptables rules", f"removed interface {INTERFACE}"]  # fmt: skip
    positions = [log.index(step) for step in order]
    assert positions == sorted(positions), log

    kept = k8s.agent("--skip-teardown")
    assert kept.stop(signal.SIGTERM) == 0
    assert len(k8s.our_rules()) == RULES_PER_IP * len(LOCAL_IPS)
    assert k8s.addresses() >= set(LOCAL_IPS)
    assert "leaving interface nodelocaldns and iptables rules in place" in kept.log


def test_4b_no_setup_flags_leave_the_node_to_others(k8s: Node) -> None:
    agent = k8s.agent("--no-setup-iptables")
    assert k8s.our_rules() == [] and k8s.addresses() >= set(LOCAL_IPS)
    agent.stop()
    agent = k8s.agent("--no-setup-iptables", "--no-setup-interface")
    assert k8s.link() is None
    for ip in LOCAL_IPS:
        assert f"local IP {ip} is on no interface" in agent.log
    agent.stop()


# 5 ---------------------------------------------------------------------------------------------


def test_5_fail_open_when_the_agent_is_killed_and_back_to_the_cache_when_it_returns(k8s: Node) -> None:
    agent = k8s.agent()
    assert answered_by_cache(k8s.pod_dig(KUBE_DNS_IP, SERVICE))
    assert answered_by_cache(k8s.dig(k8s.node, KUBE_DNS_IP, SERVICE))  # a host-network client too

    agent.stop(signal.SIGKILL)  # no teardown: interface and rules stay behind
    assert len(k8s.our_rules()) == RULES_PER_IP * len(LOCAL_IPS) and KUBE_DNS_IP in k8s.addresses()
    before = k8s.cluster_dns.query_count()
    for transport in ("+notcp", "+tcp"):
        r = k8s.pod_dig(KUBE_DNS_IP, SERVICE, "A", transport)
        assert answered_by_coredns(r) and r.rdatas("A") == ["192.0.2.1"], r.output  # kube-proxy's DNAT to CoreDNS
    assert k8s.cluster_dns.query_count() == before + 2
    took = _until(lambda: answered_by_coredns(k8s.dig(k8s.node, KUBE_DNS_IP, SERVICE, timeout=1)), FALLBACK_WITHIN)
    print(f"host-network clients fell back to CoreDNS after {took:.1f} s")

    # A program listening on 0.0.0.0:53 does not capture the ClusterIP (why not --nowildcard).
    with ns.socket_in(k8s.node, socket.AF_INET, socket.SOCK_DGRAM) as stray:
        stray.bind(("0.0.0.0", 53))
        assert answered_by_coredns(k8s.pod_dig(KUBE_DNS_IP, SERVICE))

    k8s.agent()  # back: it takes over the rules and interface the dead one left
    name = "back.wild.cluster.local"
    before = k8s.cluster_dns.query_count()
    answers = [k8s.pod_dig(KUBE_DNS_IP, name) for _ in range(3)]
    assert all(answered_by_cache(a) for a in answers)
    assert k8s.cluster_dns.query_count() == before + 1
    _until(lambda: answered_by_cache(k8s.dig(k8s.node, KUBE_DNS_IP, SERVICE, timeout=1)), FALLBACK_WITHIN)
    assert len(k8s.our_rules()) == RULES_PER_IP * len(LOCAL_IPS)  # taken over, not duplicated
    assert COREDNS_IP not in k8s.addresses()


# 6 ---------------------------------------------------------------------------------------------


def test_6_teardown_cleans_up_after_kill_9(k8s: Node) -> None:
    k8s.agent().stop(signal.SIGKILL)
    assert k8s.our_rules() and k8s.link() is not None
    done = k8s.teardown()
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == RULES_PER_IP * len(LOCAL_IPS) + 1
    assert all(line.startswith(("removed iptables ", "removed ip6tables ")) for line in lines[:-1])
    assert lines[-1] == f"removed interface {INTERFACE}"
    assert k8s.our_rules() == [] and k8s.link() is None
    again = k8s.teardown()
    assert again.returncode == 0 and again.stdout == "nothing to remove\n"


def test_6b_teardown_can_be_limited_to_some_addresses(k8s: Node) -> None:
    k8s.agent().stop(signal.SIGKILL)
    done = ns.exec_in(k8s.node, [sys.executable, "-m", "nodecache", "teardown", "--local-ip", LOCAL_IP6,
                                 "--interface-name", "not-there"])  # fmt: skip
    assert len(done.stdout.splitlines()) == RULES_PER_IP
    assert len(k8s.our_rules()) == RULES_PER_IP * 2 and k8s.link() is not None


# 7 ---------------------------------------------------------------------------------------------


def test_7_a_rolling_update_keeps_pods_answered_and_the_old_agent_leaves_the_node_to_the_new_one(k8s: Node) -> None:
    """Old and new agents overlap (SO_REUSEPORT); the old one sees the new one (node lock) and leaves
    the interface and rules in place, so nothing has to be put back; pods are answered throughout.
    (tests/node/test_rollout.py does the same under dnsperf load, counting lost queries.)"""
    same = ("--health-address", f"{LINK_LOCAL_IP}:8080")  # as the DaemonSet: both agents want the same rules
    old = k8s.agent(*same)
    new = k8s.agent(*same)
    assert old.stop(signal.SIGTERM) == 0
    assert "another agent on this node still serves" in old.log
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        for server in (LINK_LOCAL_IP, KUBE_DNS_IP):
            r = k8s.pod_dig(server, SERVICE, "A", "+tries=2", "+timeout=1")
            assert r.rdatas("A") == ["192.0.2.1"], (server, r.output)
    assert len(k8s.our_rules()) == RULES_PER_IP * len(LOCAL_IPS) and k8s.addresses() >= set(LOCAL_IPS)
    assert answered_by_cache(k8s.pod_dig(KUBE_DNS_IP, SERVICE))
    assert "iptables: repaired" not in new.log and "put back what was removed" not in new.log, new.log
