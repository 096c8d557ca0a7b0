"""A musl-linked pod resolves a large headless service through the agent (issue 9, "Done when").

musl 1.2.3 (Debian 12's musl-tools; Alpine 3.17 and older) has no TCP fallback: on a
truncated UDP reply it uses the records the reply holds. A reply truncated to an empty answer
section (what the agent sent before) leaves it with nothing; one carrying as many whole
records as fit (RFC 2181 9, what CoreDNS sends) lets it resolve. glibc retries over TCP and
must still get every address.

    pod (198.51.100.2)  resolv.conf: the Kubernetes search list, nameserver 169.254.20.10, ndots:5
      | veth
    node (198.51.100.1, 169.254.20.10)  `nodecache run` on 169.254.20.10:53, NSD on 127.0.0.1:53

Root only (namespaces, port 53); the namespaces and every process are removed afterwards.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import AgentProcess
from tests.support import netns as ns
from tests.support.nsd import NSD, with_records
from tests.support.samplezone import zone_texts

pytestmark = [pytest.mark.root, pytest.mark.integration, pytest.mark.slow]

SOURCE = Path(__file__).resolve().parent.parent / "clients" / "musl_getaddrinfo.c"
AGENT_IP = "169.254.20.10"
NODE_IP, POD_IP = "198.51.100.1", "198.51.100.2"
HEADLESS = "headless.default.svc.cluster.local"
ADDRESSES = [f"203.0.113.{100 + i}" for i in range(60)]  # a 60-endpoint headless service
POD_RESOLV_CONF = f"""search default.svc.cluster.local svc.cluster.local cluster.local
nameserver {AGENT_IP}
options ndots:5
"""
CLIENT_TIMEOUT = 20.0


def _skip_reason() -> str | None:
    reason = ns.unavailable_reason()
    if reason:
        return reason
    for binary, package in (("nsd", "nsd"), ("getent", "libc-bin")):
        if shutil.which(binary) is None:
            return f"{binary} is not installed (Debian package {package}; `make test` installs it)"
    return None


@pytest.fixture(scope="module")
def musl_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/clients/musl_getaddrinfo.c linked statically against musl."""
    compiler = shutil.which("musl-gcc")
    if compiler is None:
        message = "musl-gcc is not installed (Debian package musl-tools; `make debs` installs it)"
        if os.geteuid() == 0:
            pytest.fail(message)  # CI runs as root with `make debs` done: missing is a setup error
        pytest.skip(message)
    out = tmp_path_factory.mktemp("musl") / "musl_getaddrinfo"
    subprocess.run([compiler, "-static", "-O2", "-o", str(out), str(SOURCE)], check=True, timeout=120,
                   capture_output=True)  # fmt: skip
    return out


@dataclass
class Pod:
    name: str
    agent: AgentProcess

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return ns.exec_in(self.name, argv, check=False, timeout=CLIENT_TIMEOUT)


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("musl-node")
    with ExitStack() as stack:
        node = stack.enter_context(ns.namespace("nc-mnode"))
        pod = stack.enter_context(ns.namespace("nc-mpod"))
        ns.veth(node, "to-pod", pod, "eth0")
        ns.ip("-n", node, "addr", "add", f"{NODE_IP}/30", "dev", "to-pod")
        ns.ip("-n", node, "addr", "add", f"{AGENT_IP}/32", "dev", "to-pod")
        ns.ip("-n", pod, "addr", "add", f"{POD_IP}/30", "dev", "eth0")
        ns.ip("-n", pod, "route", "add", "default", "via", NODE_IP)
        ns.write_etc(pod, "resolv.conf", POD_RESOLV_CONF)

        zones = with_records(zone_texts("cluster.local"), "cluster.local",
                             [f"{HEADLESS}. 30 IN A {ip}" for ip in ADDRESSES])  # fmt: skip
        nsd = stack.enter_context(NSD(zones, workdir / "nsd", "127.0.0.1", netns=node))
        resolv = workdir / "node-resolv.conf"
        resolv.write_text("# nothing answers here: names outside the cluster are not asked\nnameserver 127.0.0.254\n")
        agent = AgentProcess(["--listen", AGENT_IP, "--port", "53", "--upstream", f"127.0.0.1:{nsd.port}",
                              "--node-resolv-conf", str(resolv)], command_prefix=["ip", "netns", "exec", node])  # fmt: skip
        stack.enter_context(agent)
        yield Pod(pod, agent)


def test_musl_resolves_a_name_too_big_for_udp(pod: Pod, musl_client: Path) -> None:
    """musl gets the whole records that fit in 512 bytes: a non-empty subset, every one right."""
    done = pod.run(str(musl_client), "-4", HEADLESS)
    assert done.returncode == 0, f"musl getaddrinfo failed: {done.stderr}\nagent log:\n{pod.agent.log}"
    got = done.stdout.split()
    assert got and set(got) <= set(ADDRESSES) and len(set(got)) == len(got)
    assert len(got) < len(ADDRESSES)  # it really was truncated: musl does not retry over TCP


def test_musl_resolves_with_both_families(pod: Pod, musl_client: Path) -> None:
    """AF_UNSPEC (A and AAAA in parallel, as most programs ask): the A records, NODATA for AAAA."""
    done = pod.run(str(musl_client), HEADLESS)
    assert done.returncode == 0, done.stderr
    got = done.stdout.split()
    assert got and all(ipaddress.ip_address(a).version == 4 for a in got) and set(got) <= set(ADDRESSES)


def test_glibc_gets_every_address_over_tcp(pod: Pod) -> None:
    """glibc sees TC, asks again over TCP, and gets all 60."""
    done = pod.run("getent", "ahostsv4", HEADLESS)
    assert done.returncode == 0, done.stderr
    assert {line.split()[0] for line in done.stdout.splitlines()} == set(ADDRESSES)
