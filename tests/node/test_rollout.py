"""A surge rollout under load: pods lose no query while a new agent replaces the old one.

The DaemonSet's `maxSurge: 1` starts the new agent beside the old one with the same flags;
once it is ready the old one gets SIGTERM. Meanwhile a pod sends dnsperf load to both the
link-local IP and the kube-dns ClusterIP, and every query must be answered. The old agent
sees the new one (node lock, node.py) and leaves the interface and rules to it; the last
agent to go hands the node back. A SIGKILL of either agent during the overlap costs at most
what was inside that process.

Root only (namespaces, iptables); skipped with the reason elsewhere.
"""

from __future__ import annotations

import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import AgentProcess
from tests.node.conftest import INTERFACE, KUBE_DNS_IP, LINK_LOCAL_IP, LOCAL_IPS, RULES_PER_IP, Node, wait_for_log
from tests.node.test_node import SERVICE, answered_by_cache
from tests.support import netns as ns

pytestmark = [pytest.mark.root, pytest.mark.integration, pytest.mark.slow]

RATE = 1500  # queries per second to each address, as in the measurement
DURATION = 12  # seconds of load: RATE * DURATION queries per address
CLIENT_TIMEOUT = 2  # seconds dnsperf waits for an answer before it counts the query lost
CLIENTS = 8  # dnsperf sockets (source ports): SO_REUSEPORT spreads them over both agents
OVERLAP_AFTER = 2.0  # seconds of load before the new agent starts
# The DaemonSet's flags that matter here: both agents get the same ones, so they want the same rules
# (the health port is in them). A short lameduck, as the DaemonSet has one (5 s there).
AGENT_FLAGS = ("--health-address", f"{LINK_LOCAL_IP}:8080", "--lameduck", "1")
UNCACHED_EVERY = 5  # one query in five asks a name nobody asked before (a miss, to CoreDNS)
CACHED = ("kubernetes.default.svc.cluster.local A", "web.default.svc.cluster.local AAAA",
          "kube-dns.kube-system.svc.cluster.local A", "_http._tcp.web.default.svc.cluster.local SRV")  # fmt: skip
# A SIGKILLed agent takes with it the queries inside it: those in its sockets' receive queues and
# its misses waiting for CoreDNS. That is the queries of the last moments before the kill, a few ms
# when it keeps up; on a shared 2-core machine a Python process can fall some tens of ms behind, so
# the bound is 50 ms of the whole rate to one address (the killed agent gets about half of it).
KILLED_IN_FLIGHT = RATE // 20


@pytest.fixture(autouse=True)
def _dnsperf() -> None:
    if shutil.which("dnsperf") is None:
        pytest.skip("dnsperf is not installed (Debian package dnsperf; `make test` installs it)")


@dataclass
class Load:
    """One dnsperf run from the pod against one address."""

    server: str
    proc: subprocess.Popen[str]

    def result(self) -> tuple[int, int, str]:
        """(queries sent, queries lost, dnsperf's output) once it has finished (bounded wait)."""
        out, _ = self.proc.communicate(timeout=DURATION + CLIENT_TIMEOUT + 30)
        sent = re.search(r"Queries sent:\s+(\d+)", out)
        lost = re.search(r"Queries lost:\s+(\d+)", out)
        assert self.proc.returncode == 0 and sent and lost, f"dnsperf against {self.server} failed:\n{out}"
        return int(sent.group(1)), int(lost.group(1)), out


def query_file(path: Path, tag: str) -> Path:
    """RATE * DURATION lines: names of the cluster zone, cached ones mixed with first-time wildcard names."""
    lines = []
    for i in range(RATE * DURATION):
        lines.append(f"q{i}.{tag}.wild.cluster.local A" if i % UNCACHED_EVERY == 0 else CACHED[i % len(CACHED)])
    path.write_text("\n".join(lines) + "\n")
    return path


@contextmanager
def load(k8s: Node, tmp_path: Path) -> Iterator[list[Load]]:
    """dnsperf from the pod against the link-local IP and the ClusterIP at once; stopped by PID if left running."""
    tag = secrets.token_hex(3)
    loads = []
    for server in (LINK_LOCAL_IP, KUBE_DNS_IP):
        names = query_file(tmp_path / f"queries-{server}.txt", f"{tag}-{server.replace('.', '-')}")
        argv = ["ip", "netns", "exec", k8s.pod, "dnsperf", "-s", server, "-d", str(names), "-Q", str(RATE),
                "-l", str(DURATION), "-t", str(CLIENT_TIMEOUT), "-c", str(CLIENTS)]  # fmt: skip
        loads.append(Load(server, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    try:
        yield loads
    finally:
        for run in loads:
            if run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait(5)


def lost_queries(loads: list[Load]) -> dict[str, int]:
    """Wait for each dnsperf; {address: queries lost}, after checking the whole load was sent."""
    lost = {}
    for run in loads:
        sent, n, out = run.result()
        assert sent >= RATE * DURATION * 0.9, f"dnsperf sent only {sent} queries to {run.server}:\n{out}"
        print(f"{run.server}: {n} of {sent} queries lost")
        lost[run.server] = n
    return lost


def old_agent(k8s: Node) -> AgentProcess:
    """The agent serving before the rollout, with the DaemonSet's flags for this node; started before the load."""
    old = k8s.agent(*AGENT_FLAGS)
    wait_for_log(old, "started in ")
    return old


def surge(k8s: Node) -> AgentProcess:
    """A new agent with identical flags beside the old one, once the load has run a while; set up and started."""
    time.sleep(OVERLAP_AFTER)  # load runs against the old agent alone first
    new = k8s.agent(*AGENT_FLAGS)
    wait_for_log(new, "started in ")
    return new


def node_intact(k8s: Node) -> None:
    assert len(k8s.our_rules()) == RULES_PER_IP * len(LOCAL_IPS), k8s.our_rules()
    assert k8s.addresses() >= set(LOCAL_IPS)


def node_clean(k8s: Node) -> None:
    assert k8s.our_rules() == [] and k8s.link() is None
    assert ns.exec_in(k8s.node, ["ls", "/proc/net/xt_recent"]).stdout.split() == []


def test_a_surge_rollout_loses_no_query_and_the_last_agent_cleans_up(k8s: Node, tmp_path: Path) -> None:
    old = old_agent(k8s)
    with load(k8s, tmp_path) as loads:
        new = surge(k8s)
        assert old.stop(signal.SIGTERM) == 0
        # The old agent is gone: what the new one serves with is still in place, untouched.
        node_intact(k8s)
        lost = lost_queries(loads)
    assert lost == {LINK_LOCAL_IP: 0, KUBE_DNS_IP: 0}, f"{lost}; the old agent's log:\n{old.log}"
    assert "another agent on this node still serves" in old.log, old.log
    assert "put back what was removed" not in new.log and "iptables: repaired" not in new.log, new.log
    for server in (LINK_LOCAL_IP, KUBE_DNS_IP):
        assert answered_by_cache(k8s.pod_dig(server, SERVICE)), server

    assert new.stop(signal.SIGTERM) == 0  # the last one hands the node back
    node_clean(k8s)
    assert f"removed interface {INTERFACE}" in new.log


@pytest.mark.parametrize("killed", ["new", "old"])
def test_a_sigkilled_agent_in_the_overlap_loses_only_what_was_inside_it(k8s: Node, tmp_path: Path, killed: str) -> None:
    old = old_agent(k8s)
    with load(k8s, tmp_path) as loads:
        new = surge(k8s)
        time.sleep(1.0)  # both serve a share of the flows
        gone, stays = (new, old) if killed == "new" else (old, new)
        gone.stop(signal.SIGKILL)
        node_intact(k8s)
        lost = lost_queries(loads)
    assert lost[LINK_LOCAL_IP] <= KILLED_IN_FLIGHT and lost[KUBE_DNS_IP] <= KILLED_IN_FLIGHT, (lost, gone.log)
    assert stays.proc is not None and stays.proc.poll() is None
    assert "put back what was removed" not in stays.log and "iptables: repaired" not in stays.log, stays.log
    for server in (LINK_LOCAL_IP, KUBE_DNS_IP):
        assert answered_by_cache(k8s.pod_dig(server, SERVICE)), server

    assert stays.stop(signal.SIGTERM) == 0  # the survivor is the last: it hands the node back
    node_clean(k8s)
