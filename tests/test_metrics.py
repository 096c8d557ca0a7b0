"""/metrics against a running agent, scraped over HTTP and read with prometheus_client's parser.

The names and labels are CoreDNS's, so node-local-dns dashboards keep working;
every count asserted here is what the test itself sent.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from dnslib import EDNS0, DNSRecord

from nodecache.config import Config
from nodecache.metrics import SETUP_ERROR_TYPES
from tests.conftest import AgentProcess, ask_tcp, ask_udp, make_config, running
from tests.support.clients import raw_udp
from tests.support.fakeupstream import Behaviour, FakeUpstream
from tests.support.http import scrape, value
from tests.support.net import free_port

SVC = "kubernetes.default.svc.cluster.local"
MISSING = "missing.default.svc.cluster.local"
CLUSTER = "cluster.local."

# What node-local-dns / CoreDNS dashboards and alerts read.
DASHBOARD_METRICS = [
    "coredns_dns_requests_total", "coredns_dns_responses_total", "coredns_dns_request_duration_seconds_bucket",
    "coredns_cache_entries", "coredns_cache_hits_total", "coredns_cache_misses_total", "coredns_cache_requests_total",
    "coredns_cache_prefetch_total", "coredns_cache_served_stale_total", "coredns_cache_evictions_total",
    "coredns_forward_healthcheck_broken_total", "coredns_forward_max_concurrent_rejects_total",
    "coredns_nodecache_setup_errors_total", "coredns_proxy_healthcheck_failures_total",
    "nodecache_coalesced_queries_total", "nodecache_upstream_inflight", "nodecache_overload_refused_total",
    "nodecache_cache_bytes", "process_resident_memory_bytes",
]  # fmt: skip


def query(name: str, qtype: str = "A", qid: int = 7) -> bytes:
    q = DNSRecord.question(name, qtype)
    q.header.id = qid
    q.add_ar(EDNS0(udp_len=1232))
    return bytes(q.pack())


def with_metrics(config: Config) -> tuple[Config, int]:
    port = free_port()
    return replace(config, metrics_address=f"127.0.0.1:{port}"), port


def cluster_config(up: FakeUpstream, **forward: object) -> Config:
    return make_config([f"127.0.0.1:{up.port}"], [f"127.0.0.1:{up.port}"], **forward)


async def fetch(port: int):
    return await asyncio.to_thread(scrape, "127.0.0.1", port)


async def test_counts_by_zone_type_proto_and_rcode_match_what_was_sent(upstream: FakeUpstream) -> None:
    cfg, mport = with_metrics(replace(cluster_config(upstream), listen=("127.0.0.1", "::1")))
    async with running(cfg) as srv:
        (_, port), (_, port6) = srv.bound
        for i in range(3):
            assert await ask_udp(port, query(SVC, qid=i))  # 1 miss, 2 hits
        await ask_tcp(port, [query(SVC, "AAAA", qid=10)])
        await ask_tcp(port, [query(SVC, "AAAA", qid=11)])  # 1 miss, 1 hit, over TCP
        for i in range(2):
            assert await ask_udp(port, query(MISSING, qid=20 + i))  # NXDOMAIN: 1 miss, 1 denial hit
        assert await ask_udp(port6, query(SVC, qid=30), host="::1")  # a hit over IPv6
        assert await ask_udp(port, query("1.2.0.192.in-addr.arpa", "PTR"))
        assert await ask_udp(port, query(SVC, "NAPTR"))  # a type CoreDNS labels "other"
        m = await fetch(mport)
    srv_label = f"dns://:{port}"
    req = "coredns_dns_requests_total"
    assert value(m, req, zone=CLUSTER, proto="udp", family="1", type="A") == 5
    assert value(m, req, zone=CLUSTER, proto="tcp", family="1", type="AAAA") == 2
    assert value(m, req, zone=CLUSTER, proto="udp", family="2", type="A") == 1
    assert value(m, req, zone=CLUSTER, type="other") == 1
    assert value(m, req, zone="in-addr.arpa.", type="PTR") == 1
    assert value(m, req, server=srv_label, view="") == 10
    assert value(m, "coredns_cache_hits_total", zones=CLUSTER, type="success") == 4
    assert value(m, "coredns_cache_hits_total", zones=CLUSTER, type="denial") == 1
    assert value(m, "coredns_cache_misses_total", zones=CLUSTER) == 4
    assert value(m, "coredns_cache_requests_total", zones=CLUSTER) == 9
    assert value(m, "coredns_dns_responses_total", zone=CLUSTER, rcode="NXDOMAIN") == 2
    assert value(m, "coredns_dns_responses_total", zone=CLUSTER, rcode="NXDOMAIN", plugin="cache") == 1
    assert value(m, "coredns_dns_responses_total", zone=CLUSTER, rcode="NOERROR") == 7
    assert value(m, "coredns_cache_entries", zones=CLUSTER, type="success") == 2  # A, AAAA
    assert value(m, "coredns_cache_entries", zones=CLUSTER, type="denial") == 2  # NXDOMAIN, NAPTR NODATA
    assert value(m, "nodecache_cache_bytes", zone=CLUSTER) > 0
    assert value(m, "coredns_dns_request_duration_seconds_count", zone=CLUSTER) == 9
    assert value(m, "coredns_dns_request_duration_seconds_bucket", zone=CLUSTER, le="+Inf") == 9
    assert value(m, "coredns_dns_request_duration_seconds_bucket", zone=CLUSTER, le="0.00025") >= 5  # the hits
    to = f"127.0.0.1:{upstream.port}"
    assert value(m, "coredns_proxy_request_duration_seconds_count", proxy_name="forward", to=to) == 5
    assert value(m, "coredns_proxy_request_duration_seconds_count", to=to, rcode="NXDOMAIN") == 1
    for errortype in SETUP_ERROR_TYPES:
        assert ((("errortype", errortype),)) in m["coredns_nodecache_setup_errors_total"]


async def test_flush_evictions_and_setup_errors_show_up(upstream: FakeUpstream) -> None:
    from nodecache.config import CachePolicy
    from tests.conftest import with_zone

    cfg, mport = with_metrics(with_zone(cluster_config(upstream), CLUSTER, cache=CachePolicy(success_capacity=2)))
    async with running(cfg) as srv:
        port = srv.bound[0][1]
        for i in range(4):
            await ask_udp(port, query(f"e{i}.wild.cluster.local"))
        before = await fetch(mport)
        srv.resolver.flush()
        assert srv.node is not None
        srv.node.setup_errors["iptables"] += 2  # what node setup counts, as it counts it
        after = await fetch(mport)
    assert value(before, "coredns_cache_evictions_total", zones=CLUSTER, type="success") == 2
    assert value(before, "coredns_cache_entries", zones=CLUSTER, type="success") == 2
    assert value(after, "coredns_cache_entries", zones=CLUSTER) == 0
    assert value(after, "nodecache_cache_bytes") == 0
    assert value(after, "coredns_nodecache_setup_errors_total", errortype="iptables") == 2
    assert value(after, "coredns_nodecache_setup_errors_total", errortype="interface_add") == 0


async def test_coalesced_inflight_and_overload_are_counted(upstream: FakeUpstream) -> None:
    upstream.set_behaviour(None, Behaviour.delay(0.5))
    cfg, mport = with_metrics(cluster_config(upstream, max_concurrent=1))
    async with running(cfg) as srv:
        port = srv.bound[0][1]
        same = [asyncio.create_task(ask_udp(port, query("c.wild.cluster.local", qid=i))) for i in range(5)]
        await asyncio.sleep(0.1)
        other = asyncio.create_task(ask_udp(port, query("d.wild.cluster.local")))
        during = await fetch(mport)
        await asyncio.gather(*same, other)
        after = await fetch(mport)
    assert value(during, "nodecache_upstream_inflight", zone=CLUSTER) == 1
    assert value(after, "nodecache_upstream_inflight", zone=CLUSTER) == 0
    assert value(after, "nodecache_coalesced_queries_total", zone=CLUSTER) == 4
    assert value(after, "nodecache_overload_refused_total", zone=CLUSTER) == 1
    assert value(after, "coredns_forward_max_concurrent_rejects_total") == 1
    assert value(after, "coredns_dns_responses_total", zone=CLUSTER, rcode="REFUSED") == 1


async def test_a_dead_upstream_shows_in_health_metrics(upstream: FakeUpstream) -> None:
    upstream.set_behaviour(None, Behaviour.drop())
    cfg, mport = with_metrics(cluster_config(upstream, try_timeout=0.2, timeout=0.4, max_fails=1, health_check=0.1))
    async with running(cfg) as srv:
        port = srv.bound[0][1]
        await ask_udp(port, query(SVC))  # SERVFAIL, upstream marked down
        await ask_udp(port, query("x.wild.cluster.local"))  # every upstream down: "broken", answered at once
        to = f"127.0.0.1:{upstream.port}"
        for _ in range(40):  # a health probe waits up to 1 s before it counts as failed
            m = await fetch(mport)
            if value(m, "coredns_proxy_healthcheck_failures_total", to=to) >= 1:
                break
            await asyncio.sleep(0.1)
    assert value(m, "nodecache_upstream_up", zone=CLUSTER, to=to) == 0
    assert value(m, "coredns_proxy_healthcheck_failures_total", to=to) >= 1
    assert value(m, "coredns_forward_healthcheck_broken_total") >= 1
    assert value(m, "coredns_dns_responses_total", zone=CLUSTER, rcode="SERVFAIL", plugin="") == 2


async def test_stale_answers_are_counted(upstream: FakeUpstream) -> None:
    from nodecache.config import CachePolicy
    from tests.conftest import with_zone

    policy = CachePolicy(success_max_ttl=1, stale_window=60)
    cfg, mport = with_metrics(with_zone(cluster_config(upstream, try_timeout=0.2, timeout=0.4), CLUSTER, cache=policy))
    async with running(cfg) as srv:
        port = srv.bound[0][1]
        await ask_udp(port, query(SVC))
        upstream.set_behaviour(None, Behaviour.drop())
        await asyncio.sleep(1.1)  # expired, within the stale window
        reply = DNSRecord.parse(await ask_udp(port, query(SVC)))
        m = await fetch(mport)
    assert [str(r.rdata) for r in reply.rr] == ["192.0.2.1"]
    assert value(m, "coredns_cache_served_stale_total", zones=CLUSTER) == 1
    assert value(m, "coredns_dns_responses_total", zone=CLUSTER, rcode="NOERROR", plugin="cache") == 1


async def test_hits_add_their_sampled_time_to_the_duration_sum(upstream: FakeUpstream) -> None:
    cfg, mport = with_metrics(cluster_config(upstream))
    async with running(cfg) as srv:
        port = srv.bound[0][1]
        for i in range(20):
            await ask_udp(port, query(SVC, qid=i))
        srv.resolver.tick()  # the server's once-a-second step, now
        m = await fetch(mport)
        miss_sum = srv.resolver.zones[0].stats.duration.sum
    total = value(m, "coredns_dns_request_duration_seconds_sum", zone=CLUSTER)
    assert total > miss_sum  # 19 hits, each at the sampled mean (a quiet agent samples every query)
    assert total - miss_sum < 19 * 0.01


def test_a_running_agent_serves_every_dashboard_metric(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.254\n")
    port = free_port()
    with FakeUpstream() as up, AgentProcess(["--listen", "127.0.0.1", "--port", str(port), "--upstream",
                                             f"127.0.0.1:{up.port}", "--node-resolv-conf", str(conf)]) as agent:
        for i in range(3):
            assert raw_udp("127.0.0.1", port, query(SVC, qid=i))
        assert agent.metrics_port is not None
        m = scrape("127.0.0.1", agent.metrics_port)
    missing = [name for name in DASHBOARD_METRICS if name not in m]
    assert not missing, missing
    assert value(m, "coredns_cache_hits_total", zones=CLUSTER, type="success") == 2
    assert value(m, "nodecache_build_info") == 1


def test_the_hit_path_modules_do_not_load_prometheus_client() -> None:
    """Recording is int adds; prometheus_client is only loaded by the scrape side."""
    code = "import sys, nodecache.listeners, nodecache.resolver; print('prometheus_client' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "False", done.stderr


@pytest.mark.parametrize(
    "flag, address, message",
    [
        ("--metrics-address", "localhost:9253", "--metrics-address: 'localhost:9253' is not an IP address"),
        ("--health-address", "127.0.0.1", "--health-address '127.0.0.1' has no port"),
        ("--metrics-address", "[::1]:99999", "the port must be a number"),
    ],
    ids=["hostname", "no-port", "bad-port"],
)
def test_bad_http_addresses_are_one_line_and_exit_2(tmp_path: Path, flag: str, address: str, message: str) -> None:
    from tests.conftest import NO_NODE_SETUP

    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.254\n")
    done = subprocess.run([sys.executable, "-m", "nodecache", "run", *NO_NODE_SETUP, "--listen", "127.0.0.1",
                           "--upstream", "127.0.0.1:9", "--node-resolv-conf", str(conf), flag, address],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
