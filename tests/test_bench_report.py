"""`make bench`'s closing table (issue 10): figures, ratios, PASS/FAIL, and its place in the docs.

The table is rendered from a results JSON, so these tests feed synthetic ones
and read the markdown a reader would see; no dnsperf runs. The fill workload's
upstream zones are checked against the real NSD.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
from dnslib import RCODE, DNSRecord

from tests.dnsmsg import query
from tests.support.clients import raw_udp
from tests.support.nsd import NSD
from tests.support.samplezone import zone_texts

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str) -> ModuleType:
    """A module of benchmarks/ (a directory of scripts, not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


br = _load("benchreport")
fz = _load("fillzones")


def _row(qps: float, cpu: float, p99: float, lost: int = 0, offered: int | None = None) -> dict:
    return {"reps": 3, "qps": qps, "cpu_us_per_query": cpu, "p50_latency_ms": p99 / 4, "p99_latency_ms": p99,
            "lost": lost, "lost_total": lost, "offered_qps": offered, "qps_all": [qps] * 3}


def _contender(idle_mib: float, full_mib: float, held: int | None = None) -> dict:
    return {"idle_rss_kib": idle_mib * 1024, "peak_rss_kib": full_mib * 1024 + 1024,
            "fill": {"rss_kib": full_mib * 1024, "held": held, "capacity": 79872}}


def passing_report() -> dict:
    """A run in which nodecache meets every target, with some margin."""
    return {
        "started": "2026-12-03T12:00:00+00:00",
        "host": {"cpus": 2, "pinned": True},
        "versions": {"nodecache": "0.1.0", "dnsmasq": "2.90", "unbound": "1.17.1"},
        "settings": {"duration_s": 10, "reps": 3, "hit_rate": 40000, "miss_rate": 5000,
                     "fill": {"per_kind": 9984, "zones": ["cluster.local.", "in-addr.arpa.", "ip6.arpa.", "."]},
                     "dnsmasq_cache_size": 79872, "unbound_cache": "msg-cache-size 64m"},
        "summary": {
            "hit": {"nodecache": _row(300_000, 3.0, 1.0), "dnsmasq": _row(250_000, 3.5, 1.0),
                    "unbound": _row(280_000, 3.2, 1.0)},
            "hit-rate": {"nodecache": _row(40_000, 10.0, 0.2, offered=40000),
                         "dnsmasq": _row(40_000, 9.0, 0.1, offered=40000),
                         "unbound": _row(40_000, 8.0, 0.1, offered=40000)},
            "miss": {"nodecache": _row(35_000, 40.0, 8.0), "dnsmasq": _row(20_000, 35.0, 10.0),
                     "unbound": _row(40_000, 50.0, 5.0)},
            "miss-rate": {"nodecache": _row(5_000, 60.0, 2.0, offered=5000),
                          "dnsmasq": _row(5_000, 60.0, 2.0, offered=5000),
                          "unbound": _row(5_000, 90.0, 2.0, offered=5000)},
            "miss-udp": {"nodecache": _row(33_000, 38.0, 9.0)},
        },
        "contenders": {"nodecache": _contender(20.0, 60.0, held=79872), "dnsmasq": _contender(13.0, 13.0),
                       "unbound": _contender(16.0, 57.0, held=79000), "nodecache-udp": _contender(21.0, 30.0)},
    }  # fmt: skip


def cells(rep: dict, label: str) -> list[str]:
    """The cells of the table row whose label is `label`."""
    for line in br.table(rep):
        parts = [c.strip() for c in line.strip("|").split("|")]
        if parts[0] == label:
            return parts[1:]
    raise AssertionError(f"no row {label!r} in:\n" + "\n".join(br.table(rep)))


HIT_QPS = "hits, saturated: q/s"
HIT_PER_CPU = "hits, saturated: q/s per second of server CPU"
HIT_CPU = "hits at 40,000 q/s offered: server CPU µs/query"
MISS_QPS = "misses, cluster over TCP, saturated: q/s"
MISS_P99 = "misses, cluster over TCP, saturated: p99 ms"
UDP_QPS = "misses, cluster over UDP, saturated: q/s"
UDP_P99 = "misses, cluster over UDP, saturated: p99 ms"
IDLE = "RSS idle, MiB"
FULL = "RSS with every cache full, MiB"
ENTRIES = "cache entries after the fill"


def test_a_row_shows_each_contenders_median_the_ratios_the_target_and_the_verdict() -> None:
    assert cells(passing_report(), HIT_QPS) == [
        "300,000", "250,000", "280,000", "1.20x", "1.07x", ">= 1x dnsmasq", "PASS"]
    assert cells(passing_report(), HIT_CPU) == ["10.0", "9.0", "8.0", "1.11x", "1.25x", "<= 1.25x dnsmasq", "PASS"]
    assert cells(passing_report(), IDLE)[-2:] == ["<= 25 MiB", "PASS"]


def test_the_header_names_every_contender_and_both_ratios() -> None:
    head = [c.strip() for c in br.table(passing_report())[0].strip("|").split("|")]
    assert head == ["", "nodecache", "dnsmasq", "unbound", "nodecache/dnsmasq", "nodecache/unbound", "target",
                    "result"]


def test_every_target_of_issue_10_passes_in_a_run_that_meets_them() -> None:
    verdicts = br.verdicts(passing_report())
    assert set(verdicts.values()) == {br.PASS}
    for label in (HIT_QPS, HIT_PER_CPU, HIT_CPU, MISS_QPS, MISS_P99, UDP_QPS, UDP_P99, IDLE, FULL, ENTRIES):
        assert label in verdicts
    assert sum(1 for label in verdicts if label.endswith("lost, all reps")) == 5
    assert sum(1 for label in verdicts if label.endswith("achieved q/s")) == 2


def _set(rep: dict, path: tuple, value: float) -> dict:
    rep = copy.deepcopy(rep)
    node = rep
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return rep


@pytest.mark.parametrize(
    ("path", "value", "label"),
    [
        (("summary", "hit", "nodecache", "qps"), 249_999, HIT_QPS),
        (("summary", "hit", "nodecache", "cpu_us_per_query"), 3.51, HIT_PER_CPU),
        (("summary", "hit-rate", "nodecache", "cpu_us_per_query"), 11.3, HIT_CPU),
        (("summary", "miss", "nodecache", "qps"), 31_999, MISS_QPS),
        (("summary", "miss", "nodecache", "p99_latency_ms"), 10.01, MISS_P99),
        (("summary", "miss-udp", "nodecache", "qps"), 31_000, UDP_QPS),
        (("summary", "miss-udp", "nodecache", "p99_latency_ms"), 10.5, UDP_P99),
        (("summary", "miss", "nodecache", "lost_total"), 1, "misses, cluster over TCP, saturated: lost, all reps"),
        (("summary", "hit-rate", "nodecache", "lost_total"), 3, "hits at 40,000 q/s offered: lost, all reps"),
        (("summary", "miss-rate", "nodecache", "qps"), 4_800, "misses at 5,000 q/s offered: achieved q/s"),
        (("contenders", "nodecache", "idle_rss_kib"), 25.1 * 1024, IDLE),
        (("contenders", "nodecache", "fill", "rss_kib"), 64.5 * 1024, FULL),
        (("contenders", "nodecache", "fill", "held"), 24_000, ENTRIES),
    ],
)
def test_each_target_fails_alone_when_its_figure_misses_it(path: tuple, value: float, label: str) -> None:
    verdicts = br.verdicts(_set(passing_report(), path, value))
    assert verdicts[label] == br.FAIL
    assert [k for k, v in verdicts.items() if v != br.PASS] == [label]


def test_the_bounds_themselves_pass() -> None:
    rep = _set(passing_report(), ("summary", "hit-rate", "nodecache", "cpu_us_per_query"), 9.0 * 1.25)
    rep = _set(rep, ("summary", "miss", "nodecache", "qps"), 40_000 * 0.8)
    rep = _set(rep, ("summary", "miss", "nodecache", "p99_latency_ms"), 5.0 * 2)
    rep = _set(rep, ("contenders", "nodecache", "idle_rss_kib"), 25 * 1024)
    assert set(br.verdicts(rep).values()) == {br.PASS}


def test_a_rate_nodecache_did_not_sustain_is_marked_and_fails() -> None:
    rep = _set(passing_report(), ("summary", "hit-rate", "nodecache", "qps"), 30_000)
    row = cells(rep, HIT_CPU)
    assert row[0] == "10.0 (not sustained)"
    assert row[-1] == br.FAIL
    achieved = cells(rep, "hits at 40,000 q/s offered: achieved q/s")
    assert achieved[0] == "30,000 (not sustained)"
    assert achieved[-2:] == [">= 97% of offered", br.FAIL]


def test_a_rate_the_reference_did_not_sustain_makes_the_comparison_not_applicable() -> None:
    rep = _set(passing_report(), ("summary", "hit-rate", "dnsmasq", "qps"), 20_000)
    row = cells(rep, HIT_CPU)
    assert row[1] == "9.0 (not sustained)"
    assert row[-1] == br.NA


def _busy(rep: dict, workload: str, name: str, server: float, dnsperf: float) -> dict:
    rep = _set(rep, ("summary", workload, name, "server_cpu_pct"), server)
    return _set(rep, ("summary", workload, name, "dnsperf_cpu_pct"), dnsperf)


def test_saturated_hits_per_second_of_server_cpu_are_one_million_over_its_cpu_per_hit() -> None:
    row = cells(passing_report(), HIT_PER_CPU)
    assert row[:5] == ["333,333", "285,714", "312,500", "1.17x", "1.07x"]
    assert row[-2:] == [">= 1x dnsmasq", br.PASS]


def test_a_saturated_rate_dnsperf_bounded_only_proves_a_pass() -> None:
    """dnsperf at its CPU's limit and nodecache with CPU to spare: its q/s is dnsperf's ceiling, a lower bound."""
    slower = _set(passing_report(), ("summary", "hit", "nodecache", "qps"), 240_000)
    bound = _busy(slower, "hit", "nodecache", server=77, dnsperf=99)
    row = cells(bound, HIT_QPS)
    assert row[0] == "240,000 (dnsperf-bound)" and row[1] == "250,000"
    assert row[-1] == br.NA  # below dnsmasq's, yet nodecache was not the limit
    assert cells(bound, "hits, saturated: server CPU busy, %")[0] == "77"
    assert br.verdicts(bound)[HIT_PER_CPU] == br.PASS  # what its CPU does decides
    assert br.verdicts(_busy(slower, "hit", "nodecache", server=97, dnsperf=99))[HIT_QPS] == br.FAIL  # its own limit
    assert br.verdicts(_busy(slower, "hit", "nodecache", server=77, dnsperf=80))[HIT_QPS] == br.FAIL  # nor dnsperf's
    faster = _busy(passing_report(), "hit", "nodecache", server=77, dnsperf=99)
    assert br.verdicts(faster)[HIT_QPS] == br.PASS  # a lower bound above the target is a pass


def test_the_udp_rows_compare_with_the_peers_miss_figures() -> None:
    row = cells(passing_report(), UDP_QPS)
    assert row[:5] == ["33,000", "20,000", "40,000", "1.65x", "0.82x"]
    assert row[-1] == br.PASS


def test_without_a_peer_its_column_goes_and_its_comparisons_are_not_applicable() -> None:
    rep = passing_report()
    for rows in rep["summary"].values():
        rows.pop("dnsmasq", None)
    del rep["contenders"]["dnsmasq"]
    head = [c.strip() for c in br.table(rep)[0].strip("|").split("|")]
    assert "dnsmasq" not in head and "nodecache/dnsmasq" not in head
    assert br.verdicts(rep)[HIT_QPS] == br.verdicts(rep)[HIT_PER_CPU] == br.NA
    assert br.verdicts(rep)[MISS_QPS] == br.PASS


def test_the_readme_variant_keeps_only_rows_with_a_target() -> None:
    full, short = br.table(passing_report()), br.table(passing_report(), only_targets=True)
    assert len(short) < len(full)
    assert all(line.rstrip(" |").endswith(("PASS", "FAIL", "n/a")) for line in short[2:])


def test_the_preamble_says_where_and_how_the_figures_were_measured() -> None:
    text = br.markdown(passing_report(), "benchmarks/results/X.json")
    assert "2026-12-03 12:00 UTC" in text and "3 interleaved repetitions" in text
    assert "benchmarks/results/X.json" in text and "dnsmasq 2.90" in text
    assert "79,872" in text and "prefer_udp" in text
    short = br.markdown(passing_report(), "benchmarks/results/X.json", only_targets=True)
    assert "3 interleaved repetitions" in short and "prefer_udp" not in short
    assert "rotated" not in text  # results from before the order rotated do not claim it
    rotated = passing_report()
    rotated["settings"]["order"] = "rotated"
    assert "3 interleaved repetitions, each in a rotated order" in br.markdown(rotated, "X.json")


def test_each_repetition_rotates_which_server_goes_first() -> None:
    """Within a workload the servers run back to back; over repetitions each goes first in turn."""
    run = _load("run")

    class Server:
        def __init__(self, name: str, workloads: tuple[str, ...]) -> None:
            self.contender = type("C", (), {"name": name, "workloads": workloads})()

    a, b, c = Server("a", ("hit", "miss")), Server("b", ("hit", "miss")), Server("c", ("hit",))
    plan = [(rep, w, r.contender.name) for rep, w, r in run.run_order(3, ["hit", "miss"], [a, b, c])]
    assert plan == [(1, "hit", "a"), (1, "hit", "b"), (1, "hit", "c"), (1, "miss", "a"), (1, "miss", "b"),
                    (2, "hit", "b"), (2, "hit", "c"), (2, "hit", "a"), (2, "miss", "b"), (2, "miss", "a"),
                    (3, "hit", "c"), (3, "hit", "a"), (3, "hit", "b"), (3, "miss", "a"), (3, "miss", "b")]


def test_splice_replaces_only_what_lies_between_the_markers() -> None:
    text = f"# Title\nbefore\n{br.BEGIN}\nold table\n{br.END}\nafter\n"
    assert br.splice(text, "new\n") == f"# Title\nbefore\n{br.BEGIN}\nnew\n{br.END}\nafter\n"


@pytest.mark.parametrize("text", ["no markers\n", f"{br.END}\n{br.BEGIN}\n", f"{br.BEGIN}\n{br.BEGIN}\n{br.END}\n"])
def test_splice_refuses_a_page_without_one_pair_of_markers(text: str) -> None:
    with pytest.raises(ValueError, match="bench:begin"):
        br.splice(text, "new\n")


def test_render_writes_the_full_table_into_performance_md_and_the_short_one_into_the_readme(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _load("run")
    page = f"# Performance\n\nintro\n\n{br.BEGIN}\nPREVIOUS TABLE\n{br.END}\n\nmore\n"
    perf, readme = tmp_path / "performance.md", tmp_path / "README.md"
    perf.write_text(page)
    readme.write_text(page)
    results = tmp_path / "20261203T120000Z.json"
    results.write_text(json.dumps(passing_report()))
    monkeypatch.setattr(run, "DOCS_PERFORMANCE", perf)
    monkeypatch.setattr(run, "README", readme)
    monkeypatch.setattr(run.bl, "REPO", tmp_path)
    assert run.main(["--render", str(results)]) == 0
    for path, rows in ((perf, br.table(passing_report())), (readme, br.table(passing_report(), True))):
        text = path.read_text()
        assert text.startswith("# Performance\n\nintro\n\n") and text.endswith("\n\nmore\n")
        assert "PREVIOUS TABLE" not in text and "\n".join(rows) in text
    assert "hits, saturated: p50 ms" not in readme.read_text() and "hits, saturated: p50 ms" in perf.read_text()
    capsys.readouterr()
    assert run.main(["--render", str(results)]) == 0
    assert capsys.readouterr().out.count("unchanged from 20261203T120000Z.json") == 2
    assert run.main(["--render", str(tmp_path / "missing.json")]) == 2


def test_the_fill_asks_as_many_distinct_names_as_the_default_caches_hold_each_in_its_zone() -> None:
    zones = fz.fill_zones("cluster.local")
    assert [z.zone for z in zones] == ["cluster.local.", "in-addr.arpa.", "ip6.arpa.", "."]
    asked = list(fz.interleaved(zones))
    assert len(asked) == len(set(asked)) == fz.total(zones) == 4 * 2 * 9984
    for z in zones[:3]:
        assert all(f"{name}.".endswith("." + z.zone) for name, _ in z.positive + z.negative)
    others = [name for name, _ in zones[3].positive + zones[3].negative]
    assert not [n for n in others if n.endswith(("cluster.local", "in-addr.arpa", "ip6.arpa"))]


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("nsd") is None, reason="NSD is not installed (Debian package nsd; `make test` installs it)")
def test_the_bench_upstream_answers_every_fill_name_yes_or_no_as_the_fill_expects(tmp_path: Path) -> None:
    zones = fz.fill_zones("cluster.local", count=300)
    with NSD(fz.upstream_zones(zone_texts(), count=300), tmp_path) as nsd:
        for z in zones:
            for (name, qtype), positive in [(q, True) for q in z.positive[::37]] + [
                    (q, False) for q in z.negative[::37]]:  # fmt: skip
                wire = raw_udp(nsd.address, nsd.port, query(name, qtype))
                assert wire is not None, (name, qtype)
                reply = DNSRecord.parse(wire)
                assert reply.header.rcode == (RCODE.NOERROR if positive else RCODE.NXDOMAIN), (name, qtype)
                assert bool(reply.rr) == positive, (name, qtype)


def test_a_run_without_the_fill_still_renders_its_miss_rows() -> None:
    """`run.py --workload miss` alone: no fill figures (None), the table still comes out."""
    rep = passing_report()
    for contender in rep["contenders"].values():
        contender["fill"] = None
    text = br.markdown(rep, "results.json")
    assert MISS_QPS in text
    assert br.verdicts(rep)[MISS_QPS] == br.PASS
    assert br.verdicts(rep)[ENTRIES] == br.NA  # nothing to judge
