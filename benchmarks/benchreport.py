"""Issue 10's table from a results JSON: figures, ratios and PASS/FAIL against the targets.

run.py prints it after a run; `run.py --render FILE` writes it into
docs/performance.md and README.md between marker comments, so the published
numbers always come from one real run's JSON. Nothing here runs a server: it
reads plain data, which is what the tests feed it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

NODECACHE = "nodecache"
PEERS = ("dnsmasq", "unbound")
CONTENDERS = (NODECACHE, *PEERS)
MIB = 1024

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"

#: A fixed-rate run counts as sustained when at least this share of the offered
#: rate came back as answers; below it the CPU per query is not comparable.
SUSTAINED_SHARE = 0.97

#: A saturated run was bound by the load generator, not by the server, when dnsperf
#: used at least GENERATOR_BUSY_PCT of its CPU while the server used less than
#: SERVER_BUSY_PCT of its own: its q/s is then dnsperf's ceiling, a lower bound of the
#: server's (see "srv cpu / gen cpu" in benchmarks/README.md).
GENERATOR_BUSY_PCT = 95.0
SERVER_BUSY_PCT = 90.0

# Issue 10's targets.
HIT_CPU_MAX_VS_DNSMASQ = 1.25
HIT_QPS_MIN_VS_DNSMASQ = 1.0
MISS_QPS_MIN_VS_UNBOUND = 0.8
MISS_P99_MAX_VS_UNBOUND = 2.0
IDLE_RSS_MAX_MIB = 25
FULL_RSS_MAX_MIB = 64

PASS, FAIL, NA = "PASS", "FAIL", "n/a"


@dataclass(frozen=True)
class Target:
    """What nodecache's figure must satisfy: against a peer's (ratio) or alone (limit)."""

    text: str
    check: Callable[[float, dict[str, float | None]], bool]
    peer: str | None = None  # the figure the check needs besides nodecache's


def at_most_vs(peer: str, factor: float) -> Target:
    return Target(f"<= {factor:g}x {peer}", lambda v, o: o[peer] is not None and v <= factor * o[peer], peer)


def at_least_vs(peer: str, factor: float) -> Target:
    return Target(f">= {factor:g}x {peer}", lambda v, o: o[peer] is not None and v >= factor * o[peer], peer)


def at_most(limit: float, unit: str) -> Target:
    return Target(f"<= {limit:g}{unit}", lambda v, o: v <= limit)


NONE_LOST = Target("0", lambda v, o: v == 0)


@dataclass(frozen=True)
class Row:
    """One line of the table: a label, where each contender's figure comes from, how to print it."""

    label: str
    get: Callable[[dict, str], float | None]
    fmt: str = "{:,.0f}"
    ratio: bool = True
    target: Target | None = None
    unsustained: str | None = None  # workload whose runs must have kept up with the offered rate
    lower_bound: str | None = None  # saturated workload whose figure only bounds the server's when dnsperf was the limit


def _summary(workload: str, field: str, fallback: str | None = None) -> Callable[[dict, str], float | None]:
    """A median from summary[workload][contender]; peers without that workload use `fallback`'s."""

    def get(rep: dict, name: str) -> float | None:
        rows = rep.get("summary", {})
        row = rows.get(workload, {}).get(name)
        if row is None and fallback is not None and name != NODECACHE:
            row = rows.get(fallback, {}).get(name)
        return None if row is None else row.get(field)

    return get


def _per_cpu_second(workload: str) -> Callable[[dict, str], float | None]:
    """Answers per second of the server's own CPU time: 1e6 / its median CPU µs per query."""
    cpu = _summary(workload, "cpu_us_per_query")

    def get(rep: dict, name: str) -> float | None:
        us = cpu(rep, name)
        return 1e6 / us if us else None

    return get


def _contender(*path: str, scale: float = 1.0) -> Callable[[dict, str], float | None]:
    """A figure from contenders[name][path...], divided by scale."""

    def get(rep: dict, name: str) -> float | None:
        node = rep.get("contenders", {}).get(name)
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        return None if node is None else node / scale

    return get


def rows(rep: dict) -> list[Row]:
    """The table's rows, labelled with this run's offered rates."""
    s = rep.get("settings", {})
    hit_rate, miss_rate = s.get("hit_rate") or 0, s.get("miss_rate") or 0
    out: list[Row] = []

    def load_rows(workload: str, title: str, qps: Target | None = None, p99: Target | None = None,
                  fallback: str | None = None, offered: int = 0) -> None:
        sus = workload if offered else None
        if offered:
            qps = Target(f">= {SUSTAINED_SHARE:.0%} of offered", lambda v, o: v >= SUSTAINED_SHARE * offered)
        out.extend([
            Row(f"{title}: {'achieved ' if offered else ''}q/s", _summary(workload, "qps", fallback), target=qps,
                unsustained=sus, lower_bound=None if offered else workload),
            Row(f"{title}: server CPU µs/query", _summary(workload, "cpu_us_per_query", fallback), "{:.1f}",
                target=at_most_vs("dnsmasq", HIT_CPU_MAX_VS_DNSMASQ) if workload == "hit-rate" else None,
                unsustained=sus),
        ])  # fmt: skip
        if not offered:
            out.append(Row(f"{title}: server CPU busy, %", _summary(workload, "server_cpu_pct", fallback), "{:.0f}",
                           ratio=False))  # fmt: skip
        if workload == "hit":
            # On two CPUs dnsperf tops out near the hit rate of the servers, so the saturated
            # q/s may be its ceiling; what the server does with a second of CPU is its own.
            out.append(Row(f"{title}: q/s per second of server CPU", _per_cpu_second(workload),
                           target=at_least_vs("dnsmasq", HIT_QPS_MIN_VS_DNSMASQ)))  # fmt: skip
        out.extend([
            Row(f"{title}: p50 ms", _summary(workload, "p50_latency_ms", fallback), "{:.2f}"),
            Row(f"{title}: p99 ms", _summary(workload, "p99_latency_ms", fallback), "{:.2f}", target=p99),
            Row(f"{title}: lost, all reps", _summary(workload, "lost_total", fallback), ratio=False,
                target=NONE_LOST),
        ])  # fmt: skip

    load_rows("hit", "hits, saturated", qps=at_least_vs("dnsmasq", HIT_QPS_MIN_VS_DNSMASQ))
    load_rows("hit-rate", f"hits at {hit_rate:,} q/s offered", offered=hit_rate)
    miss_qps, miss_p99 = at_least_vs("unbound", MISS_QPS_MIN_VS_UNBOUND), at_most_vs("unbound", MISS_P99_MAX_VS_UNBOUND)
    load_rows("miss", "misses, cluster over TCP, saturated", qps=miss_qps, p99=miss_p99)
    load_rows("miss-rate", f"misses at {miss_rate:,} q/s offered", offered=miss_rate)
    load_rows("miss-udp", "misses, cluster over UDP, saturated", qps=miss_qps, p99=miss_p99, fallback="miss")
    out += [
        Row("RSS idle, MiB", _contender("idle_rss_kib", scale=MIB), "{:.1f}",
            target=at_most(IDLE_RSS_MAX_MIB, " MiB")),
        Row("RSS with every cache full, MiB", _contender("fill", "rss_kib", scale=MIB), "{:.1f}",
            target=at_most(FULL_RSS_MAX_MIB, " MiB")),
        Row("cache entries after the fill", _contender("fill", "held"), ratio=False, target=_all_held(rep)),
        Row("peak RSS after every run, MiB", _contender("peak_rss_kib", scale=MIB), "{:.1f}"),
    ]
    return out


def _all_held(rep: dict) -> Target:
    nodecache = (rep.get("contenders") or {}).get(NODECACHE) or {}
    capacity = (nodecache.get("fill") or {}).get("capacity")  # None when no fill ran (--workload without fill)
    if not capacity:
        return Target("every cache full", lambda v, o: False)
    return Target(f"{capacity:,} (full)", lambda v, o: v >= capacity)


def sustained(rep: dict, workload: str, name: str) -> bool | None:
    """Whether a fixed-rate workload's answers kept up with the offered rate (None: no data)."""
    row = rep.get("summary", {}).get(workload, {}).get(name)
    if row is None or not row.get("offered_qps"):
        return None
    return row["qps"] >= SUSTAINED_SHARE * row["offered_qps"]


def generator_bound(rep: dict, workload: str, name: str) -> bool:
    """Whether dnsperf, not the server, was the limit of this saturated workload's runs (medians)."""
    row = rep.get("summary", {}).get(workload, {}).get(name) or {}
    gen, srv = row.get("dnsperf_cpu_pct"), row.get("server_cpu_pct")
    return gen is not None and srv is not None and gen >= GENERATOR_BUSY_PCT and srv < SERVER_BUSY_PCT


def verdict(row: Row, rep: dict, values: dict[str, float | None]) -> str:
    """PASS, FAIL or n/a for nodecache's figure in this row.

    A saturated q/s that dnsperf bounded is a lower bound of nodecache's: above its
    target it passes, below it proves nothing (n/a), and the per-CPU-second row judges.
    """
    if row.target is None:
        return ""
    mine = values.get(NODECACHE)
    if mine is None or (row.target.peer is not None and values.get(row.target.peer) is None):
        return NA
    if row.unsustained is not None:
        if sustained(rep, row.unsustained, NODECACHE) is False:
            return FAIL
        if row.target.peer is not None and sustained(rep, row.unsustained, row.target.peer) is False:
            return NA  # the reference did not keep up: no fair comparison
    if row.target.check(mine, values):
        return PASS
    if row.lower_bound is not None and generator_bound(rep, row.lower_bound, NODECACHE):
        return NA
    return FAIL


def cell(row: Row, rep: dict, name: str, value: float | None) -> str:
    if value is None:
        return "–"
    text = row.fmt.format(value)
    if row.unsustained is not None and sustained(rep, row.unsustained, name) is False:
        text += " (not sustained)"
    if row.lower_bound is not None and generator_bound(rep, row.lower_bound, name):
        text += " (dnsperf-bound)"
    return text


def ratio(values: dict[str, float | None], peer: str) -> str:
    mine, theirs = values.get(NODECACHE), values.get(peer)
    if mine is None or not theirs:
        return ""
    return f"{mine / theirs:.2f}x"


def table(rep: dict, only_targets: bool = False) -> list[str]:
    """Markdown lines of the table: one column per contender, the ratios, the target and the verdict."""
    present = [n for n in CONTENDERS if any(n in w for w in rep.get("summary", {}).values())
               or n in rep.get("contenders", {})]  # fmt: skip
    peers = [p for p in PEERS if p in present]
    head = ["", *present, *(f"{NODECACHE}/{p}" for p in peers if NODECACHE in present), "target", "result"]
    lines = ["| " + " | ".join(head) + " |",
             "| --- | " + " | ".join("---:" for _ in head[1:-2]) + " | --- | --- |"]  # fmt: skip
    for row in rows(rep):
        if only_targets and row.target is None:
            continue
        values = {n: row.get(rep, n) for n in present}
        if all(v is None for v in values.values()):
            continue
        cells = [row.label, *(cell(row, rep, n, values[n]) for n in present)]
        if NODECACHE in present:
            cells += [ratio(values, p) if row.ratio else "" for p in peers]
        cells += [row.target.text if row.target else "", verdict(row, rep, values)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def verdicts(rep: dict) -> dict[str, str]:
    """Row label -> PASS/FAIL/n/a for every row with a target."""
    out = {}
    for row in rows(rep):
        if row.target is not None:
            out[row.label] = verdict(row, rep, {n: row.get(rep, n) for n in CONTENDERS})
    return out


def preamble(rep: dict, source: str) -> list[str]:
    """Where the numbers come from: date, machine, settings, versions."""
    s, host, v = rep.get("settings", {}), rep.get("host", {}), rep.get("versions", {})
    started = dt.datetime.fromisoformat(rep["started"]).strftime("%Y-%m-%d %H:%M UTC") if rep.get("started") else "?"
    pin = ("each server pinned to CPU 0, dnsperf and NSD to CPU 1" if host.get("pinned")
           else "unpinned")  # fmt: skip
    fill = s.get("fill") or {}
    versions = ", ".join(f"{k} {v[k]}" for k in (*CONTENDERS, "dnsperf", "nsd") if k in v)
    return [
        f"`make bench` on {started}, {host.get('cpus', '?')} CPUs, {pin}; {s.get('duration_s', '?'):g} s per run, "
        f"{s.get('reps', '?')} interleaved repetitions{', each in a rotated order' if s.get('order') == 'rotated' else ''}, "
        f"medians (lost: the sum over repetitions). "
        f"Versions: {versions}. Raw results: `{source}`.",
        "",
        f"nodecache forwards the cluster zone over TCP (its default) except in the UDP rows, "
        f"where it runs from a Corefile whose cluster block has `prefer_udp`; dnsmasq and unbound "
        f"always forward over UDP, so their UDP-row figures are their miss figures. The fill asks "
        f"{fill.get('per_kind', '?'):,} positive and as many negative names in each of "
        f"{', '.join(fill.get('zones', [])) or '?'}; dnsmasq's cache holds {s.get('dnsmasq_cache_size', '?'):,} "
        f"entries, unbound's {s.get('unbound_cache', '?')}. Cache entries: nodecache's own count "
        f"(`nodecache stats`), unbound's unexpired messages (`unbound-control dump_cache`); dnsmasq "
        f"does not tell.",
        "",
    ]  # fmt: skip


def markdown(rep: dict, source: str, only_targets: bool = False) -> str:
    """The block that goes between the markers; the short one (only_targets) with the first paragraph only."""
    intro = preamble(rep, source)
    return "\n".join([*(intro[:2] if only_targets else intro), *table(rep, only_targets)]) + "\n"


def splice(text: str, block: str) -> str:
    """text with what lies between BEGIN and END replaced by block; the markers must be there once."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"expected one {BEGIN} followed by one {END}")
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{block}{END}{tail}"


def render_into(path: Path, rep: dict, source: str, only_targets: bool = False) -> bool:
    """Rewrite path's marked section from rep; return whether the file changed."""
    old = path.read_text()
    new = splice(old, markdown(rep, source, only_targets))
    if new != old:
        path.write_text(new)
    return new != old
