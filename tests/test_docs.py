"""The documentation against the code: generated references, the dashboard, links and layout.

docs/reference.md is generated (`make docs`) from the click commands and the
metrics collector; docs/grafana-dashboard.json may only graph metrics the
agent exports. Both drift silently when a flag or metric changes, so these
tests fail with what to do instead.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import AgentProcess
from tests.support.http import http_get
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README_MAX_LINES = 300
DOC_PAGES = ("architecture.md", "deploy.md", "operate.md", "migrate.md", "reference.md")

# PromQL words that are not metric names: functions are followed by "(", so only these remain.
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "on", "ignoring", "group_left", "group_right", "offset", "by", "without"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gen = _generator()


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not functions, labels, keywords or Grafana variables)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    text = re.sub(r"\$\w+", "", text)  # Grafana variables
    text = re.sub(r"\b\d[\w.]*", "", text)  # numbers and durations (0.99, 1h)
    names = set()
    for m in _IDENT.finditer(text):
        rest = text[m.end():].lstrip()
        if rest.startswith("(") or m.group() in PROMQL_KEYWORDS:
            continue
        names.add(m.group())
    return names


def dashboard() -> dict:
    return json.loads((DOCS / "grafana-dashboard.json").read_text())


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) for every query in the dashboard, rows' nested panels included."""
    out = []
    for panel in dashboard()["panels"]:
        for p in [panel, *panel.get("panels", [])]:
            out += [(p["title"], t["expr"]) for t in p.get("targets", [])]
    return out


def test_the_reference_matches_the_code() -> None:
    committed = (DOCS / "reference.md").read_text()
    fresh = gen.render()
    if committed != fresh:
        diff = "".join(list(difflib.unified_diff(committed.splitlines(True), fresh.splitlines(True),
                                                 "docs/reference.md (committed)", "generated"))[:40])  # fmt: skip
        pytest.fail(f"docs/reference.md is out of date with the flags or metrics: run `make docs` and commit it\n{diff}")


def test_the_reference_has_every_run_flag_with_its_variable_and_every_metric() -> None:
    from nodecache.cli import run

    text = (DOCS / "reference.md").read_text()
    for param in run.params:
        assert f"`{param.opts[0]}" in text, param.opts[0]
        assert f"`{param.envvar}`" in text, param.envvar
    assert "| `--cache-memory BYTES` | `NODECACHE_CACHE_MEMORY` | 40Mi |" in text
    assert "| `--setup-iptables` / `--no-setup-iptables` | `NODECACHE_SETUP_IPTABLES` | on |" in text
    for family in gen.metric_families():
        assert f"| `{family.name}` | {family.type} |" in text


def test_the_collector_introspection_lists_what_a_running_agent_serves(tmp_path: Path) -> None:
    """The reference and the dashboard check rely on the introspection; a real scrape must agree with it."""
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.254\n")
    with AgentProcess(["--listen", "127.0.0.1", "--port", str(free_port()), "--upstream", "127.0.0.1:9",
                       "--node-resolv-conf", str(conf)]) as agent:  # fmt: skip
        assert agent.metrics_port is not None
        status, body = http_get("127.0.0.1", agent.metrics_port, "/metrics")
    assert status == 200
    served = {(f.name, f.type) for f in map(gen._family, text_string_to_metric_families(body))}
    listed = {(f.name, f.type) for f in gen.metric_families()}
    assert served == listed, f"only served: {sorted(served - listed)}; only listed: {sorted(listed - served)}"


def test_the_dashboard_is_a_grafana_model_with_a_prometheus_input() -> None:
    d = dashboard()
    assert d["title"] and d["uid"] and isinstance(d["schemaVersion"], int)
    assert {"name": "DS_PROMETHEUS", "type": "datasource", "pluginId": "prometheus"}.items() <= d["__inputs"][0].items()
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    graphs = [p for p in d["panels"] if p["type"] != "row"]
    assert len(graphs) >= 20
    for p in graphs:
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert p["targets"] and set(p["gridPos"]) == {"h", "w", "x", "y"}, p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]


def test_every_dashboard_expression_names_only_metrics_the_agent_exports() -> None:
    exported = gen.exported_metric_names()
    unknown = {}
    for title, expr in dashboard_exprs():
        names = metric_names(expr)
        assert names, f"panel {title!r}: no metric found in {expr!r}"
        if names - exported:
            unknown[title] = sorted(names - exported)
    for var in dashboard()["templating"]["list"]:
        m = re.match(r"label_values\((\w+)", var["definition"])  # label_values(METRIC, LABEL)
        names = {m.group(1)} if m else metric_names(var["definition"])
        if names - exported:
            unknown[f"variable {var['name']}"] = sorted(names - exported)
    assert not unknown, f"dashboard panels read metrics the agent does not export: {unknown}"


def test_the_dashboard_graphs_what_operators_graph_for_coredns() -> None:
    used = set().union(*(metric_names(e) for _, e in dashboard_exprs()))
    wanted = {"coredns_dns_requests_total", "coredns_dns_responses_total", "coredns_cache_hits_total",
              "coredns_cache_misses_total", "coredns_cache_entries", "coredns_cache_served_stale_total",
              "coredns_forward_healthcheck_broken_total", "coredns_dns_request_duration_seconds_bucket",
              "process_resident_memory_bytes", "nodecache_early_answers_total", "nodecache_tcp_refused_total",
              "nodecache_cache_memory_bytes"}  # fmt: skip
    assert wanted <= used, sorted(wanted - used)


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (zone) (rate(coredns_dns_requests_total{instance=~"$instance"}[$__rate_interval]))',
         {"coredns_dns_requests_total"}),
        ("histogram_quantile(0.99, sum by (le, to) (rate(x_seconds_bucket[5m])))", {"x_seconds_bucket"}),
        ('a_total / on (zone) group_left b{job="a_total_not"} > bool 0 unless c', {"a_total", "b", "c"}),
        ("process_resident_memory_bytes offset 1h", {"process_resident_memory_bytes"}),
    ],
)  # fmt: skip
def test_the_expression_reader_finds_metric_names_only(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_a_made_up_metric_in_the_dashboard_would_be_caught() -> None:
    assert "coredns_dns_request_count_total" not in gen.exported_metric_names()  # CoreDNS's pre-1.7 name
    assert "coredns_dns_request_duration_seconds_bucket" in gen.exported_metric_names()
    assert "coredns_dns_request_duration_seconds" in gen.exported_metric_names()


def test_the_readme_is_short_and_points_into_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    for page in DOC_PAGES:
        assert (DOCS / page).is_file(), page
        assert f"](docs/{page})" in readme, f"README does not link docs/{page}"
    assert "make run" in readme and "make test" in readme


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces as hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for line in markdown.splitlines():
        m = re.match(r"#{1,6} (.+)", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_every_relative_link_in_the_docs_resolves() -> None:
    pages = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted(DOCS.glob("*.md"))]
    broken = []
    for page in pages:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text()):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken


def test_no_message_or_doc_points_at_a_readme_section_that_moved() -> None:
    """Operators told to read "the README, section X" must find X in docs/ instead."""
    offenders = []
    for path in [*ROOT.glob("nodecache/**/*.py"), ROOT / "daemonset.yaml", *ROOT.glob("benchmarks/*")]:
        if path.is_file():
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if re.search(r"(see|the|in) README\b(?!\.md)|main README|README\.md,? \"", line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, offenders


def test_the_layout_lists_every_module() -> None:
    text = (DOCS / "architecture.md").read_text()
    layout = text[text.index("## Layout"):]
    modules = sorted(p.relative_to(ROOT / "nodecache") for p in (ROOT / "nodecache").rglob("*.py"))
    missing = []
    for m in modules:
        names = [str(m), m.name] if m.name != "__init__.py" or m.parent == Path(".") else [f"{m.parent}/"]
        if not any(re.search(rf"^\s+{re.escape(n)}(\s|$)", layout, re.M) for n in names):
            missing.append(str(m))
    assert not missing, f"docs/architecture.md's Layout does not list: {missing}; add one line for each"
