"""bench-load (benchmarks/load.py): its model of glibc, its name mix and its report, without root;
and, as root, a tiny run end to end (namespaces, NSD, the counting proxy, every contender)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord

from tests.support import netns as ns
from tests.support.samplezone import CHECKOUT

BENCHMARKS = CHECKOUT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import loadmix as mix  # noqa: E402  (lives in benchmarks/, put on the path above)

SMALL = mix.Universe(services=8, externals=4)
E2E_TIMEOUT = 240.0


# -- glibc's search rules


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("svc-1", ["svc-1.default.svc.cluster.local", "svc-1.svc.cluster.local", "svc-1.cluster.local", "svc-1"]),
        ("www.site-1.example", ["www.site-1.example.default.svc.cluster.local", "www.site-1.example.svc.cluster.local",
                                "www.site-1.example.cluster.local", "www.site-1.example"]),
        ("a.b.c.d.e.f", ["a.b.c.d.e.f", "a.b.c.d.e.f.default.svc.cluster.local", "a.b.c.d.e.f.svc.cluster.local",
                         "a.b.c.d.e.f.cluster.local"]),  # ndots or more dots: as is first
        ("www.example.", ["www.example"]),  # a trailing dot: as is only
    ],
)
def test_candidates_are_glibcs_search_order(name: str, expected: list[str]) -> None:
    assert mix.candidates(name) == expected


def test_prediction_asks_a_and_aaaa_of_each_candidate_until_one_exists() -> None:
    # svc-0 is dual stack (first candidate exists: 2 positive); svc-1 IPv4-only (one search
    # expansion NXDOMAIN for both types, then A positive and AAAA NODATA); the external name
    # goes through three NXDOMAIN expansions before it is asked as is.
    p = mix.predict(["svc-0", "svc-1.default", "www.site-0.example"], SMALL)
    assert p.by_kind() == {mix.NX: 8, mix.NODATA: 1, mix.POSITIVE: 5, mix.OTHER: 0}
    assert p.queries[(mix.NX, "AAAA")] == 4 and p.queries[(mix.NODATA, "AAAA")] == 1
    assert p.failures == 0
    records = SMALL.records()
    assert p.answers[1] == records[SMALL.service(1)][0]
    assert set(p.answers[2]) == set(records[SMALL.external(0)][0] + records[SMALL.external(0)][1])


def test_a_name_that_exists_nowhere_costs_every_candidate_and_fails() -> None:
    p = mix.predict(["svc-99"], SMALL)  # beyond the 8 services
    assert p.queries == Counter({(mix.NX, "A"): 4, (mix.NX, "AAAA"): 4})
    assert (p.failures, p.answers) == (1, [()])


# -- the mix


def test_the_mix_is_fixed_by_its_seed() -> None:
    u = mix.Universe()
    assert mix.lookup_mix(500, 7, u) == mix.lookup_mix(500, 7, u)
    assert mix.lookup_mix(500, 7, u) != mix.lookup_mix(500, 8, u)


def test_the_mix_is_70_percent_short_cluster_names_and_zipf_within_each_part() -> None:
    u = mix.Universe()
    names = mix.lookup_mix(20_000, mix.DEFAULT_SEED, u)
    cluster = [n for n in names if n.startswith("svc-")]
    assert abs(len(cluster) / len(names) - mix.CLUSTER_SHARE) < 0.02
    assert all(n.count(".") <= 1 for n in cluster)  # `svc-N` or `svc-N.default`, as pods write them
    assert 0.4 < sum(n.endswith(".default") for n in cluster) / len(cluster) < 0.6
    external = Counter(n for n in names if not n.startswith("svc-"))
    top = [external[u.external(r)] for r in range(4)]
    assert top == sorted(top, reverse=True) and top[0] > 1.5 * top[1]  # rank 1 about twice rank 2 (exponent 1)
    assert set(external) <= {u.external(n) for n in range(u.externals)}


def test_zone_texts_hold_every_record_with_the_cluster_ttls() -> None:
    texts = SMALL.zone_texts()
    assert set(texts) == {mix.CLUSTER_DOMAIN, mix.EXTERNAL_ZONE}
    soa = next(line for line in texts[mix.CLUSTER_DOMAIN].splitlines() if " SOA " in line)
    assert soa.split()[-1] == str(mix.SOA_MINIMUM) and f"$TTL {mix.CLUSTER_TTL}" in texts[mix.CLUSTER_DOMAIN]
    for name, (v4, v6) in SMALL.records().items():
        zone = texts[mix.CLUSTER_DOMAIN if name.endswith(mix.CLUSTER_DOMAIN) else mix.EXTERNAL_ZONE]
        for addr in v4 + v6:
            assert f"{name}. IN {'AAAA' if ':' in addr else 'A'} {addr}" in zone


# -- what the counting upstream sees, and the report


def _reply(qtype: str, rcode: int, answer: RR | None = None) -> bytes:
    reply = DNSRecord.question("svc-1.default.svc.cluster.local", qtype).reply()
    reply.header.rcode = rcode
    if answer is not None:
        reply.add_answer(answer)
    return reply.pack()


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (_reply("A", RCODE.NXDOMAIN), (mix.NX, "A")),
        (_reply("AAAA", RCODE.NOERROR), (mix.NODATA, "AAAA")),
        (_reply("A", RCODE.NOERROR, RR("svc-1.default.svc.cluster.local", QTYPE.A, rdata=A("192.0.2.2"))),
         (mix.POSITIVE, "A")),
        (_reply("AAAA", RCODE.NOERROR, RR("x.example", QTYPE.AAAA, rdata=AAAA("2001:db8::1"))), (mix.POSITIVE, "AAAA")),
        (_reply("A", RCODE.SERVFAIL), (mix.OTHER, "A")),
        (b"\x00\x01", (mix.OTHER, "?")),
    ],
)
def test_replies_are_classified_by_what_they_say(reply: bytes, kind: tuple[str, str]) -> None:
    assert mix.classify(reply) == kind


def test_percentile_is_nearest_rank() -> None:
    assert mix.percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5) == 3.0
    assert mix.percentile([float(v) for v in range(1, 101)], 0.99) == 99.0
    assert mix.percentile([], 0.5) is None


def test_report_gives_per_lookup_figures_and_the_ratio_to_dnsmasq() -> None:
    q = Counter({(mix.NX, "A"): 60, (mix.NX, "AAAA"): 40, (mix.NODATA, "AAAA"): 20, (mix.POSITIVE, "A"): 80})
    half = Counter({k: v // 2 for k, v in q.items()})
    rows = [mix.Row("dnsmasq", q, 100, 0, 0, 0.5, 2.0), mix.Row("nodecache", half, 100, 1, 2, 0.25, 3.5)]
    lines = mix.report_table(rows).splitlines()
    dnsmasq, nodecache = (line.split() for line in lines[2:])
    assert dnsmasq[1:5] == ["200", "2.000", "100", "40"] and dnsmasq[-1] == "1.000"
    assert nodecache[1:3] == ["100", "1.000"] and nodecache[-1] == "0.500"
    assert nodecache[8:12] == ["1", "2", "0.25", "3.50"]  # failed, differ, p50, p99


def test_bench_load_refuses_to_run_without_root(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import load

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert load.main([]) == 2
    assert "needs root" in capsys.readouterr().err


# -- end to end, as root


@pytest.mark.slow
@pytest.mark.root
def test_a_tiny_bench_load_matches_glibcs_model_and_no_cache_answers_differently() -> None:
    reason = ns.unavailable_reason()
    if reason:
        pytest.skip(reason)
    for prog, package in (("nsd", "nsd"), ("dnsmasq", "dnsmasq-base"), ("unbound", "unbound")):
        if shutil.which(prog) is None and not Path("/usr/sbin", prog).exists():
            pytest.skip(f"{prog} is not installed (Debian package {package}; `make debs` installs it)")
    before = set(ns.ip("netns", "list").stdout.split())
    done = subprocess.run([sys.executable, str(BENCHMARKS / "load.py"), "--lookups", "300", "--rate", "300"],
                          capture_output=True, text=True, timeout=E2E_TIMEOUT, cwd=CHECKOUT)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"model check: .* equal$", done.stdout, re.M), done.stdout
    names = ("no cache", "dnsmasq", "unbound", "nodecache")
    rows = {n: line[len(n):].split() for line in done.stdout.splitlines() for n in names if line.startswith(n + " ")}
    assert set(rows) == set(names)
    for name, cols in rows.items():
        failed, differ = cols[7:9]
        assert (failed, differ) == ("0", "0"), (name, done.stdout)
    assert int(rows["nodecache"][0].replace(",", "")) < int(rows["no cache"][0].replace(",", ""))
    saved = CHECKOUT / re.search(r"raw results: (\S+)", done.stdout).group(1)  # type: ignore[union-attr]
    try:
        report = json.loads(saved.read_text())
        assert report["model_ok"] and report["contenders"]["no cache"]["failures"] == 0
    finally:
        saved.unlink()
    leftover = [n for n in set(ns.ip("netns", "list").stdout.split()) - before if "benchload" in n]
    assert not leftover
