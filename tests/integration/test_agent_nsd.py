"""The real thing: `nodecache run` in front of NSD, asked by dig and kdig.

NSD (Debian) serves the generated Kubernetes-shaped zone; the agent runs as a
subprocess exactly as an operator would start it.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnslib import DNSRecord

from tests.conftest import AgentProcess
from tests.dnsmsg import query
from tests.support.clients import dig, kdig_many, raw_tcp, raw_udp
from tests.support.fakeupstream import FakeUpstream
from tests.support.net import free_port
from tests.support.nsd import NSD
from tests.support.samplezone import zone_texts

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("nsd") is None, reason="NSD is not installed (Debian package nsd; `make test` installs it)"),
    pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed (Debian package bind9-dnsutils)"),
]

HOST = "127.0.0.1"
NODE_RESOLVER = "127.0.0.77"  # the "node's resolver" in these tests; needs port 53, so root
IDLE = 1.0


@pytest.fixture(scope="module")
def nsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NSD]:
    with NSD(zone_texts("cluster.local"), tmp_path_factory.mktemp("nsd")) as server:
        yield server


@pytest.fixture(scope="module")
def node_resolver() -> Iterator[FakeUpstream | None]:
    """A second upstream standing in for the node's resolver (port 53, root only)."""
    if os.geteuid() != 0:
        yield None
        return
    with FakeUpstream(address=NODE_RESOLVER, port=53) as up:
        yield up


@pytest.fixture(scope="module")
def agent(nsd: NSD, node_resolver: FakeUpstream | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    conf = tmp_path_factory.mktemp("node") / "resolv.conf"
    conf.write_text(f"# test node resolver\nnameserver {NODE_RESOLVER}\noptions ndots:5\n")
    port = free_port()
    args = ["--listen", HOST, "--port", str(port), "--upstream", f"{nsd.address}:{nsd.port}",
            "--node-resolv-conf", str(conf), "--tcp-idle-timeout", str(IDLE), "--log-level", "debug"]
    with AgentProcess(args) as proc:
        proc.port = port  # type: ignore[attr-defined]
        yield proc


def ask(agent: AgentProcess, name: str, qtype: str = "A", *extra: str, **kw: object):
    return dig(HOST, agent.port, name, qtype, *extra, **kw)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "name, qtype, expected",
    [
        ("kubernetes.default.svc.cluster.local", "A", "192.0.2.1"),
        ("kubernetes.default.svc.cluster.local", "AAAA", "2001:db8::1"),
        ("_http._tcp.web.default.svc.cluster.local", "SRV", "0 100 80 web.default.svc.cluster.local."),
        ("192-0-2-45.default.pod.cluster.local", "A", "192.0.2.45"),
        ("1.2.0.192.in-addr.arpa", "PTR", "kubernetes.default.svc.cluster.local."),
    ],
    ids=["service-A", "service-AAAA", "SRV", "pod-A", "PTR"],
)
def test_kubernetes_records_resolve_through_the_agent(agent: AgentProcess, name: str, qtype: str, expected: str) -> None:
    r = ask(agent, name, qtype)
    assert r.rcode == "NOERROR", r.output
    assert expected in r.rdatas(qtype)
    assert "ra" in r.flags and "aa" not in r.flags


def test_repeated_lookups_do_not_reach_nsd(agent: AgentProcess, nsd: NSD) -> None:
    name = "cachecheck.wild.cluster.local"
    assert ask(agent, name).rcode == "NOERROR"
    before = nsd.query_count()
    for _ in range(5):
        assert ask(agent, name).rdatas("A") == ["203.0.113.7"]
    assert nsd.query_count() == before


def test_ttl_counts_down_by_elapsed_seconds(agent: AgentProcess) -> None:
    name = "countdown.wild.cluster.local"
    first = ask(agent, name).ttls()[0]
    time.sleep(2.2)
    later = ask(agent, name).ttls()[0]
    assert first <= 30
    assert first - 3 <= later <= first - 2


def test_nxdomain_carries_soa_and_is_cached(agent: AgentProcess, nsd: NSD) -> None:
    name = "nosuch.default.svc.cluster.local"
    first = ask(agent, name)
    before = nsd.query_count()
    second = ask(agent, name)
    assert first.rcode == second.rcode == "NXDOMAIN"
    assert [r.type for r in second.authority] == ["SOA"]
    assert second.authority[0].ttl <= 5
    assert nsd.query_count() == before


def test_large_answer_truncates_over_udp_and_is_whole_over_tcp(agent: AgentProcess) -> None:
    name = "big.default.svc.cluster.local"
    plain = ask(agent, name, "A", "+noedns")
    assert plain.tc and 0 < len(plain.answer) < 100 and not plain.edns  # whole records that fit (RFC 2181 9)
    sized = ask(agent, name, "A", "+bufsize=1232")
    assert sized.tc and sized.edns and len(plain.answer) < len(sized.answer) < 100
    retried = ask(agent, name, "A", retry_tcp=True)
    assert retried.retried_tcp and not retried.tc
    assert len(retried.answer) >= 60


def test_opt_is_echoed_only_when_the_client_sent_one(agent: AgentProcess) -> None:
    with_opt = ask(agent, "web.default.svc.cluster.local", "A", "+bufsize=1400")
    without = ask(agent, "web.default.svc.cluster.local", "A", "+noedns")
    assert with_opt.edns and with_opt.udp_size == 1232  # we advertise what we send at most
    assert not without.edns
    assert with_opt.rdatas("A") == without.rdatas("A")


def test_kdig_reuses_one_tcp_connection_for_several_queries(agent: AgentProcess) -> None:
    if shutil.which("kdig") is None:
        pytest.skip("kdig is not installed (Debian package knot-dnsutils)")
    names = [("kubernetes.default.svc.cluster.local", "A"), ("web.default.svc.cluster.local", "AAAA"),
             ("_https._tcp.web.default.svc.cluster.local", "SRV")]
    results = kdig_many(HOST, agent.port, names, tcp=True)  # type: ignore[attr-defined]
    assert [r.rcode for r in results] == ["NOERROR"] * 3
    assert all(r.transport == "TCP" for r in results)


def test_pipelined_tcp_queries_are_all_answered(agent: AgentProcess) -> None:
    queries = []
    for i, name in enumerate(["kubernetes.default.svc.cluster.local", "p1.wild.cluster.local", "p2.wild.cluster.local"]):
        q = DNSRecord.question(name)
        q.header.id = 1000 + i
        queries.append(bytes(q.pack()))
    replies = raw_tcp(HOST, agent.port, queries, timeout=5)  # type: ignore[attr-defined]
    parsed = {DNSRecord.parse(r).header.id: DNSRecord.parse(r) for r in replies}
    assert sorted(parsed) == [1000, 1001, 1002]
    assert all(p.rr for p in parsed.values())


def test_pipelined_misses_are_not_held_by_nsds_wait_for_our_acks(agent: AgentProcess) -> None:
    """NSD writes its TCP replies without TCP_NODELAY, so each waits until the one before is ACKed.

    Five misses forwarded together go to NSD pipelined on one connection. Unless the
    agent ACKs each read at once, Linux delays that ACK (about 40 ms) and the later
    replies wait for it: nearly every round, before the agent set TCP_QUICKACK.
    """
    rounds = []
    for r in range(12):
        wires = [query(f"ack{r}-{i}.wild.cluster.local", qid=i + 1) for i in range(5)]
        started = time.monotonic()
        replies = raw_tcp(HOST, agent.port, wires, timeout=5)  # type: ignore[attr-defined]
        rounds.append(time.monotonic() - started)
        assert sorted(int.from_bytes(w[:2], "big") for w in replies) == [1, 2, 3, 4, 5]
        time.sleep(0.02)
    rounds.sort()
    assert rounds[len(rounds) // 2] < 0.020, [f"{x * 1000:.1f} ms" for x in rounds]


def test_idle_tcp_connection_is_closed(agent: AgentProcess) -> None:
    with socket.create_connection((HOST, agent.port), timeout=IDLE * 5) as sock:  # type: ignore[attr-defined]
        started = time.monotonic()
        assert sock.recv(10) == b""  # the agent closed it
        assert time.monotonic() - started < IDLE * 4


@pytest.mark.parametrize("packet", [os.urandom(7), b"\xff" * 40, b"\x00\x01" + os.urandom(30)])
def test_garbage_never_stops_the_agent(agent: AgentProcess, packet: bytes) -> None:
    raw_udp(HOST, agent.port, packet, timeout=0.3)  # type: ignore[attr-defined]
    raw_tcp(HOST, agent.port, [packet], timeout=0.3)  # type: ignore[attr-defined]
    assert ask(agent, "kubernetes.default.svc.cluster.local").rdatas("A") == ["192.0.2.1"]


@pytest.mark.root
def test_names_outside_the_cluster_go_to_the_node_resolver(
    agent: AgentProcess, nsd: NSD, node_resolver: FakeUpstream | None
) -> None:
    if node_resolver is None:
        pytest.skip("the node resolver stand-in needs port 53 on 127.0.0.77: run as root")
    node_resolver.reset()
    before = nsd.query_count()
    r = ask(agent, "kubernetes.default.svc.cluster.local.example.test")
    assert r.rcode == "REFUSED"  # the stand-in is authoritative for cluster.local only
    assert node_resolver.count("kubernetes.default.svc.cluster.local.example.test", "udp") == 1
    assert nsd.query_count() == before


def test_agent_stops_cleanly_on_sigterm(nsd: NSD, tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(f"nameserver {NODE_RESOLVER}\n")
    port = free_port()
    proc = AgentProcess(["--listen", HOST, "--port", str(port), "--upstream", f"{nsd.address}:{nsd.port}",
                         "--node-resolv-conf", str(conf)]).start()
    assert dig(HOST, port, "kubernetes.default.svc.cluster.local").rcode == "NOERROR"
    assert proc.stop() == 0
    assert "stopping" in proc.log
