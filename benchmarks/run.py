"""Side-by-side dnsperf benchmark: nodecache vs dnsmasq vs unbound.

Every contender is a caching forwarder in front of the same NSD serving the
sample cluster zone (and the zones the fill needs), gets the same dnsperf
workloads in the same run, and is measured in interleaved repetitions,
each in a rotated order (A B C, B C A, C A B, ...), so that the noise of a
shared machine spreads over all of them and none is always measured first.
The closing table (benchreport.py) holds issue 10's figures, ratios and
targets; `--render FILE` writes it into the docs. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402  (needs the path above)
import benchreport  # noqa: E402
import fillzones  # noqa: E402
from contenders import (  # noqa: E402
    CONTENDERS,
    DNSMASQ_CACHE_SIZE,
    MISS_UDP,
    NODECACHE,
    UNBOUND_MSG_CACHE,
    UNBOUND_RRSET_CACHE,
    Contender,
    NodecacheUdp,
    Slot,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: In the order each repetition runs them; "fill" runs once, before the repetitions.
#: miss-rate comes before miss: a saturated run leaves dnsmasq's cache full of
#: live entries, and then every insert scans its whole cache (benchmarks/README.md).
WORKLOADS = ("fill", "hit", "hit-rate", "miss-rate", "miss", MISS_UDP)
HIT_WORKLOADS = ("hit", "hit-rate")
RATE_WORKLOADS = ("hit-rate", "miss-rate")
NOISY_SPREAD = 0.15  # reps further apart than this: someone else was using the CPUs
#: Fixed offered rates (dnsperf -Q): well below what each contender answers
#: saturated on one CPU here, so CPU per query compares equal work.
DEFAULT_HIT_RATE = 40_000
DEFAULT_MISS_RATE = 5_000
#: Unique names a fixed-rate miss run gets beyond rate x duration, so it never wraps.
RATE_NAMES_HEADROOM = 1.2
#: The fill sends its lost questions again, one by one, at most this many times.
FILL_RETRIES = 2
DOCS_PERFORMANCE = bl.REPO / "docs" / "performance.md"
README = bl.REPO / "README.md"


# --------------------------------------------------------------------------
# The run


@dataclass
class Running:
    """A started contender and what we learned about it."""

    contender: Contender
    slot: Slot
    proc: bl.ManagedProcess | None = None
    error: str | None = None
    ready_after_s: float | None = None
    idle_rss_kib: int | None = None
    fill: dict = field(default_factory=dict)
    memory_kib: dict[str, int] = field(default_factory=dict)
    cpu_s: float | None = None
    exit_code: int | None = None
    warm_rcodes: dict[str, str] = field(default_factory=dict)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="dnsperf side by side: nodecache vs dnsmasq vs unbound, same upstream (NSD), "
                    "same workloads, interleaved repetitions, medians reported.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0,
                   help="seconds of load per (contender, workload, repetition)")
    p.add_argument("--reps", type=int, default=3,
                   help="repetitions per (contender, workload); the median is reported")
    p.add_argument("--only", action="append", choices=sorted(CONTENDERS), metavar="NAME",
                   help=f"run only this contender (repeatable; one of {', '.join(CONTENDERS)})")
    p.add_argument("--workload", action="append", choices=(*WORKLOADS, "all"), metavar="NAME",
                   help="run only this workload (repeatable; default all): fill: every default cache filled "
                        "once, RSS after; hit / hit-rate: cached cluster names, saturated / at --hit-rate; "
                        "miss / miss-rate: unique names the upstream must answer, saturated / at --miss-rate; "
                        "miss-udp: misses with nodecache forwarding the cluster zone over UDP")
    p.add_argument("--hit-rate", type=int, default=DEFAULT_HIT_RATE,
                   help="offered q/s (dnsperf -Q) of the hit-rate workload, where CPU per query is compared")
    p.add_argument("--miss-rate", type=int, default=DEFAULT_MISS_RATE,
                   help="offered q/s (dnsperf -Q) of the miss-rate workload")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary directory (configs, logs, dnsperf summaries)")
    p.add_argument("--nodecache-args", default="",
                   help="extra arguments appended to the agent's command, e.g. \"--loop asyncio\" "
                        "(a single token needs the = form: --nodecache-args=--loop=asyncio)")
    p.add_argument("--clients", type=int, default=4, help="dnsperf -c (simulated clients)")
    p.add_argument("--outstanding", type=int, default=100,
                   help="dnsperf -q (max queries in flight, all clients together)")
    p.add_argument("--timeout", type=float, default=2.0,
                   help="dnsperf -t: seconds after which a query counts as lost")
    p.add_argument("--miss-names", type=int, default=0,
                   help="unique names per saturated miss datafile (0: enough for 100k qps over --duration, "
                        "at least 300000), so dnsperf never wraps")
    p.add_argument("--fill-per-kind", type=int, default=fillzones.FILL_PER_KIND,
                   help="fill: positive and negative names asked per zone (the agent's default capacity)")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin (servers on CPU 0, dnsperf+NSD on CPU 1)")
    p.add_argument("--render", metavar="JSON",
                   help="run nothing: write the table of this results file ('latest': the newest in "
                        "benchmarks/results) into docs/performance.md and README.md between "
                        f"{benchreport.BEGIN} and {benchreport.END}")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.reps < 1:
        p.error("--duration must be > 0 and --reps >= 1")
    if args.clients < 1 or args.outstanding < 1 or args.timeout <= 0:
        p.error("--clients, --outstanding and --timeout must be positive")
    if args.hit_rate < 1 or args.miss_rate < 1 or not 0 < args.fill_per_kind <= 2 ** 15:
        p.error("--hit-rate and --miss-rate must be positive, --fill-per-kind within 1..32768")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render(args.render)
    names = args.only or list(CONTENDERS)
    chosen = args.workload or ["all"]
    workloads = [w for w in WORKLOADS if "all" in chosen or w in chosen]
    opts = bl.DnsperfOptions(args.clients, args.outstanding, args.timeout)
    miss_names = args.miss_names or max(300_000, int(100_000 * args.duration))

    missing = [prog for prog in ("dnsperf", "nsd") if bl.which(prog) is None]
    if missing:
        print(f"missing: {', '.join(missing)} (Debian packages; `make debs` installs them)",
              file=sys.stderr)
        return 2

    pin = not args.no_pin and bl.can_pin()
    if not args.no_pin and not pin:
        bl.log("warning: cannot pin (need CPUs 0 and 1 and taskset); running unpinned")
    if pin:
        # This harness and NSD (which inherits it) belong to the load side.
        os.sched_setaffinity(0, {bl.LOAD_CPU})

    bl.compile_agent()
    workdir = Path(tempfile.mkdtemp(prefix="nodecache-bench-"))
    try:
        return bench(args, names, workloads, opts, miss_names, pin, workdir)
    finally:
        if args.keep:
            print(f"kept temporary directory: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def render(source: str) -> int:
    """Write the table of one results file into the docs' marked sections."""
    path = latest_result() if source == "latest" else Path(source)
    if path is None or not path.is_file():
        print(f"no results file {source!r} (run the benchmark first)", file=sys.stderr)
        return 2
    rep = json.loads(path.read_text())
    shown = path.resolve().relative_to(bl.REPO) if path.resolve().is_relative_to(bl.REPO) else Path(path.name)
    for target, only_targets in ((DOCS_PERFORMANCE, False), (README, True)):
        changed = benchreport.render_into(target, rep, str(shown), only_targets)
        print(f"{target.relative_to(bl.REPO)}: {'updated' if changed else 'unchanged'} from {shown}")
    failed = [label for label, v in benchreport.verdicts(rep).items() if v == benchreport.FAIL]
    print(f"{len(failed)} target(s) failed" + (": " + "; ".join(failed) if failed else ""))
    return 0


def latest_result() -> Path | None:
    files = sorted(RESULTS_DIR.glob("[0-9]*.json"))  # make bench's own (bench-load's are load-*.json)
    return files[-1] if files else None


def bench(args: argparse.Namespace, names: list[str], workloads: list[str], opts: bl.DnsperfOptions,
          miss_names: int, pin: bool, workdir: Path) -> int:
    """Start upstream and contenders, fill, run the interleaved measurements, report."""
    server_cpu = bl.SERVER_CPU if pin else None
    load_cpu = bl.LOAD_CPU if pin else None
    started = dt.datetime.now(dt.UTC)
    extra = shlex.split(args.nodecache_args)
    running: list[Running] = []
    runs: list[dict] = []
    upstream = None
    upstream_check: dict = {}
    node_resolver = bl.pick_node_resolver()
    fill = fill_plan(args.fill_per_kind, node_resolver)
    try:
        upstream = bl.start_upstream(workdir / "nsd", node_resolver)
        bl.wait_ready(bl.LOCALHOST, upstream.port, timeout=20)
        expected = bl.warm(bl.LOCALHOST, upstream.port, bl.HIT_QUERIES)
        bl.log(f"upstream: NSD on {bl.LOCALHOST}:{upstream.port} and {node_resolver or '(no port 53)'}; "
               f"answers: {expected}")
        upstream_check = check_upstream(upstream.port, opts, load_cpu, workdir)

        for contender in contenders_for(names, workloads):
            slot = Slot(workdir / contender.name, bl.free_port(), upstream.port, server_cpu, node_resolver,
                        extra if contender.label == NODECACHE else [])
            slot.workdir.mkdir()
            running.append(start(contender, slot))

        live = [r for r in running if r.error is None]
        if "fill" in workloads:
            for r in live:
                if "fill" in r.contender.workloads:
                    fill_cache(r, fill, opts, load_cpu, workdir)
        hit_file = bl.write_hit_file(workdir / "hit.txt")
        plan = run_order(args.reps, [w for w in workloads if w != "fill"], live)
        for done, (rep, workload, r) in enumerate(plan, 1):
            if r.error is not None:
                continue
            bl.log(f"[{done}/{len(plan)}] {workload} rep {rep}/{args.reps}: {r.contender.name} ...")
            try:
                runs.append(measure(r, workload, rep, hit_file, miss_names, expected, opts, args, load_cpu,
                                    workdir))
            except (RuntimeError, OSError) as e:
                r.error = f"failed during {workload} rep {rep}: {e}"
                bl.log(f"  {r.contender.name}: {r.error}")
                continue
            res = runs[-1]["dnsperf"]
            trims = (f", {runs[-1]['heap_trims']} heap trims ({runs[-1]['heap_trim_ms']} ms)"
                     if runs[-1].get("heap_trims") else "")  # fmt: skip
            bl.log(f"  {res['qps']:,.0f} q/s, {res['cpu_us_per_query'] or 0:.1f} µs CPU/query, "
                   f"p99 {fmt_ms(res['p99_latency_ms'])} ms, max {fmt_ms(res['max_latency_ms'])} ms, "
                   f"lost {res['lost']}{trims}")
        for r in running:
            if r.proc is not None and r.proc.alive():
                r.memory_kib = bl.memory_kib(r.proc.pid)
                r.cpu_s = bl.cpu_seconds(r.proc.pid)
    finally:
        for r in running:
            if r.proc is not None and r.exit_code is None:
                r.exit_code = r.proc.stop()
        if upstream is not None:
            upstream.stop()

    report = build_report(args, opts, miss_names, pin, started, running, runs, workloads, fill)
    report["upstream_check"] = upstream_check
    print_report(report)
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(report, indent=2))
    print("\n" + benchreport.markdown(report, str(out.relative_to(bl.REPO))))
    print(f"raw results: {out.relative_to(bl.REPO)}; into the docs with: "
          f"benchmarks/run.py --render {out.relative_to(bl.REPO)}")
    return 1 if any(r.error for r in running) else 0


def run_order(reps: int, workloads: list[str], live: list[Running]) -> list[tuple[int, str, Running]]:
    """(repetition, workload, server) in the order they run: each workload's servers back to back, so a
    workload's figures are taken minutes apart at most, and their order rotated at every repetition, so
    no server always goes first (right after another workload, or after the fill)."""
    plan = []
    for rep in range(reps):
        for w in workloads:
            mine = [r for r in live if w in r.contender.workloads]
            turn = rep % len(mine) if mine else 0
            plan += [(rep + 1, w, r) for r in mine[turn:] + mine[:turn]]
    return plan


def contenders_for(names: list[str], workloads: list[str]) -> list[Contender]:
    """The servers to start: the chosen ones, plus nodecache's UDP variant when miss-udp runs."""
    out: list[Contender] = [CONTENDERS[n]() for n in names]
    if NODECACHE in names and MISS_UDP in workloads:
        out.append(NodecacheUdp())
    return [c for c in out if set(c.workloads) & set(workloads)]


def start(contender: Contender, slot: Slot) -> Running:
    """Start one server; read its idle RSS before it sees any query, then wait until it answers."""
    r = Running(contender, slot)
    try:
        r.proc = contender.start(slot)
        bl.wait_bound(slot.port, r.proc, timeout=20)
        r.idle_rss_kib = bl.settled_rss_kib(r.proc.pid)
        r.ready_after_s = bl.wait_ready(bl.LOCALHOST, slot.port, r.proc, timeout=20)
        bl.log(f"{contender.name}: ready on {bl.LOCALHOST}:{slot.port} (pid {r.proc.pid}), "
               f"idle RSS {r.idle_rss_kib / 1024:.1f} MiB")
    except (RuntimeError, OSError) as e:
        r.error = f"did not start: {e}"
        bl.log(f"{contender.name}: {r.error}")
        if r.proc is not None:
            r.exit_code = r.proc.stop()
    return r


def fill_plan(per_kind: int, node_resolver: str | None) -> tuple[fillzones.FillZone, ...]:
    """The fill's zones: all four, or without "." when NSD could not take a port-53 address."""
    zones = fillzones.fill_zones(bl.CLUSTER_DOMAIN, per_kind)
    if node_resolver is None:
        bl.log("warning: no loopback address with a free port 53 (root needed): the fill leaves out "
               "the \".\" zone, which the agent sends to its node resolv.conf")
        zones = tuple(z for z in zones if z.zone != ".")
    return zones


def fill_cache(r: Running, zones: tuple[fillzones.FillZone, ...], opts: bl.DnsperfOptions,
               load_cpu: int | None, workdir: Path) -> None:
    """Ask every fill question once, again what dnsperf lost, then read RSS and the cache's count."""
    assert r.proc is not None
    data = workdir / f"fill-{r.contender.name}.txt"
    asked = bl.write_questions(data, fillzones.interleaved(zones))
    bl.log(f"fill: {r.contender.name}, {asked:,} questions ...")
    t0 = time.monotonic()
    try:
        res = bl.run_dnsperf(data, r.slot.port, workdir, f"fill-{r.contender.name}", opts, max_runs=1,
                             cpu=load_cpu)
    except RuntimeError as e:
        r.error = f"failed during the fill: {e}"
        bl.log(f"  {r.error}")
        return
    finally:
        data.unlink(missing_ok=True)
    lost = [tuple(q.split(" ", 1)) for q in res.lost_questions]
    for _ in range(FILL_RETRIES):
        if not lost:
            break
        seen = bl.warm(bl.LOCALHOST, r.slot.port, lost)  # type: ignore[arg-type]
        lost = [tuple(k.split(" ", 1)) for k, v in seen.items() if v == "timeout"]
    entries = r.contender.cache_entries(r.slot) or {}
    r.fill = {"asked": asked, "seconds": round(time.monotonic() - t0, 1), "qps": res.qps,
              "lost_by_dnsperf": res.lost, "unanswered": len(lost), "rcodes": res.rcodes,
              "rss_kib": bl.settled_rss_kib(r.proc.pid, bl.RSS_AFTER_BURST_STABLE_S, bl.RSS_AFTER_BURST_MAX_S),
              **entries}
    bl.log(f"  {res.qps:,.0f} q/s, lost {res.lost} (unanswered after retries: {len(lost)}), "
           f"RSS {r.fill['rss_kib'] / 1024:.1f} MiB, entries {entries or 'unknown'}")


def check_upstream(port: int, opts: bl.DnsperfOptions, load_cpu: int | None, workdir: Path) -> dict:
    """Two seconds of unique names straight at NSD: the upstream must not be the limit.

    NSD shares the load CPU with dnsperf here, so the figure is a floor of what
    it can do; it matters only that nothing is lost or refused (rate limiting).
    """
    data = workdir / "upstream-check.txt"
    bl.write_miss_file(data, 300_000)
    try:
        res = bl.run_dnsperf(data, port, workdir, "upstream-check", opts, duration=2, max_runs=1,
                             cpu=load_cpu)
    finally:
        data.unlink(missing_ok=True)
    bl.log(f"upstream check (NSD direct, unique names, up to 2 s): {res.qps:,.0f} q/s, lost {res.lost}, "
           f"rcodes {res.rcodes}")
    if res.lost > res.sent / 1000 or res.bad_responses:
        bl.log("warning: the upstream itself loses or refuses queries (rate limiting?); "
               "miss figures will say more about NSD than about the caches")
    return {"qps": res.qps, "lost": res.lost, "sent": res.sent, "rcodes": res.rcodes,
            "avg_latency_ms": res.avg_latency_ms, "p99_latency_ms": res.p99_latency_ms}


def measure(r: Running, workload: str, rep: int, hit_file: Path, miss_names: int,
            expected: dict[str, str], opts: bl.DnsperfOptions, args: argparse.Namespace,
            load_cpu: int | None, workdir: Path) -> dict:
    """One dnsperf run of one workload against one contender, with the server's CPU time over it."""
    assert r.proc is not None
    if not r.proc.alive():
        raise RuntimeError(f"exited with {r.proc.proc.returncode}:\n{r.proc.log_tail()}")
    label = f"{workload}-{r.contender.name}-{rep}"
    rate = {"hit-rate": args.hit_rate, "miss-rate": args.miss_rate}.get(workload)
    info: dict = {"contender": r.contender.label, "server": r.contender.name, "workload": workload, "rep": rep,
                  "offered_qps": rate, "loadavg_before": Path("/proc/loadavg").read_text().split()[:3]}
    if workload in HIT_WORKLOADS:
        # Fill (or refill: a miss run may have evicted them) the cache first.
        seen = bl.warm(bl.LOCALHOST, r.slot.port, bl.HIT_QUERIES)
        r.warm_rcodes = seen
        differ = {k: v for k, v in seen.items() if v != expected.get(k)}
        if differ:
            bl.log(f"  warning: answers differ from the upstream's: {differ}")
        info["warm_mismatch"] = differ
        trims_before = r.contender.heap_trims(r.slot)
        cpu_before = bl.cpu_seconds(r.proc.pid)
        result = bl.run_dnsperf(hit_file, r.slot.port, workdir, label, opts, duration=args.duration,
                                cpu=load_cpu, rate=rate)
    else:
        data = workdir / f"{label}.txt"
        count = miss_names if rate is None else math.ceil(rate * args.duration * RATE_NAMES_HEADROOM) + 1000
        info["miss_run_id"] = bl.write_miss_file(data, count)
        info["miss_names"] = count
        try:
            trims_before = r.contender.heap_trims(r.slot)
            cpu_before = bl.cpu_seconds(r.proc.pid)
            result = bl.run_dnsperf(data, r.slot.port, workdir, label, opts, duration=args.duration,
                                    max_runs=1, cpu=load_cpu, rate=rate)
        finally:
            data.unlink(missing_ok=True)
        if result.stopped_by != "time limit":
            bl.log(f"  warning: dnsperf stopped by {result.stopped_by!r}, not the time limit; "
                   f"raise --miss-names")
    server_cpu_s = bl.cpu_seconds(r.proc.pid) - cpu_before
    trims_after = r.contender.heap_trims(r.slot)
    if trims_before is not None and trims_after is not None:
        # Heap trims during the run: each stalls the server's loop (nodecache/heap.py).
        info["heap_trims"] = trims_after["trims"] - trims_before["trims"]
        info["heap_trim_ms"] = round(1000 * (trims_after["seconds"] - trims_before["seconds"]), 1)
    if result.run_time_s > 0:
        result.server_cpu_pct = 100 * server_cpu_s / result.run_time_s
    info["dnsperf"] = asdict(result)
    info["dnsperf"]["bad_responses"] = result.bad_responses
    info["dnsperf"]["server_cpu_s"] = server_cpu_s
    info["dnsperf"]["cpu_us_per_query"] = 1e6 * server_cpu_s / result.completed if result.completed else None
    info["dnsperf"]["lost_questions"] = result.lost_questions[:20]
    info["dnsperf"].pop("summary_text")
    return info


# --------------------------------------------------------------------------
# Report


def median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarize(mine: list[dict]) -> dict:
    """Medians over one (workload, contender)'s reps; lost also as a total."""
    return {
        "reps": len(mine),
        **{k: median([m[k] for m in mine]) for k in (
            "qps", "avg_latency_ms", "p50_latency_ms", "p99_latency_ms", "lost", "bad_responses",
            "server_cpu_pct", "cpu_us_per_query", "dnsperf_cpu_pct")},
        "lost_total": sum(m["lost"] for m in mine),
        "qps_all": [m["qps"] for m in mine],
    }  # fmt: skip


def build_report(args: argparse.Namespace, opts: bl.DnsperfOptions, miss_names: int, pin: bool,
                 started: dt.datetime, running: list[Running], runs: list[dict],
                 workloads: list[str], fill: tuple[fillzones.FillZone, ...]) -> dict:
    """Everything needed to read or recompute the tables later, as plain data."""
    summary: dict[str, dict[str, dict]] = {}
    for workload in workloads:
        summary[workload] = {}
        for r in running:
            mine = [x["dnsperf"] for x in runs if x["workload"] == workload and x["server"] == r.contender.name]
            if mine:
                row = summarize(mine)
                row["offered_qps"] = next((x["offered_qps"] for x in runs if x["workload"] == workload), None)
                summary[workload][r.contender.label] = row
    return {
        "started": started.isoformat(),
        "host": {"cpus": os.cpu_count(), "platform": platform.platform(),
                 "python": platform.python_version(), "pinned": pin,
                 "pinning": ({"server_cpu": bl.SERVER_CPU, "dnsperf_nsd_harness_cpu": bl.LOAD_CPU}
                             if pin else None)},
        "versions": {
            "dnsperf": bl.tool_version(["dnsperf", "-h"]),
            "nsd": bl.tool_version([bl.find_program("nsd"), "-v"], r"NSD version\s+([\w.\-]+)"),
            **{r.contender.name: r.contender.version() for r in running},
        },
        "settings": {"duration_s": args.duration, "reps": args.reps, "order": "rotated", "workloads": workloads,
                     "dnsperf_options": " ".join(opts.argv()) + " -v",
                     "hit_rate": args.hit_rate, "miss_rate": args.miss_rate,
                     "miss_names_per_run": miss_names, "nodecache_args": args.nodecache_args,
                     "hit_queries": [f"{n} {t}" for n, t in bl.HIT_QUERIES],
                     "fill": {"per_kind": args.fill_per_kind, "zones": [z.zone for z in fill],
                              "total": fillzones.total(fill)},
                     "dnsmasq_cache_size": DNSMASQ_CACHE_SIZE,
                     "unbound_cache": f"msg-cache-size {UNBOUND_MSG_CACHE}, rrset-cache-size {UNBOUND_RRSET_CACHE}"},
        "contenders": {
            r.contender.name: {
                "command": r.proc.argv if r.proc else None, "port": r.slot.port,
                "error": r.error, "ready_after_s": r.ready_after_s, "idle_rss_kib": r.idle_rss_kib,
                "fill": r.fill or None,
                "peak_rss_kib": r.memory_kib.get("VmHWM"), "rss_kib": r.memory_kib.get("VmRSS"),
                "cpu_s": r.cpu_s, "exit_code": r.exit_code, "warm_rcodes": r.warm_rcodes,
            } for r in running},
        "summary": summary,
        "runs": runs,
    }


def spread(row: dict) -> float:
    """(max - min) / median of one contender's qps over reps: a noise gauge."""
    qps = row["qps_all"]
    return (max(qps) - min(qps)) / row["qps"] if row["qps"] else 0.0


def fmt_ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def fmt_pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}%"


def fmt_mib(kib: float | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f}"


def print_report(rep: dict) -> None:
    """The human part: settings, one table per workload, memory, failures."""
    s = rep["settings"]
    print()
    print(f"dnsperf {rep['versions']['dnsperf']} options: {s['dnsperf_options']} "
          f"-l {s['duration_s']:g} (miss: -n 1, {s['miss_names_per_run']:,} unique names per run; "
          f"hit-rate: -Q {s['hit_rate']}, miss-rate: -Q {s['miss_rate']})")
    pin = rep["host"]["pinning"]
    print(f"pinning: server CPU {pin['server_cpu']}, dnsperf+NSD CPU {pin['dnsperf_nsd_harness_cpu']}"
          if pin else "pinning: none")
    print(f"reps: {s['reps']} interleaved; figures are medians over reps; "
          f"p99 from dnsperf -v per-answer latencies; lost = no answer within -t;")
    print("bad = answers other than NOERROR/NXDOMAIN; srv cpu / gen cpu = CPU time of the server / "
          "of dnsperf over the run, in % of its one CPU; µs/q = server CPU per answered query "
          "(see benchmarks/README.md: reading the results)")
    print("note: nodecache forwards cluster.local to the upstream over TCP (its default, as "
          "node-local-dns) except in miss-udp; dnsmasq and unbound over UDP")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in rep["versions"].items()))
    up = rep.get("upstream_check") or {}
    if up:
        print(f"upstream NSD direct (unique names, up to 2 s, sharing a CPU with dnsperf): {up['qps']:,.0f} q/s, "
              f"lost {up['lost']}, rcodes {up['rcodes']}")
    if s["nodecache_args"]:
        print(f"nodecache extra args: {s['nodecache_args']}")

    for workload, rows in rep["summary"].items():
        if not rows:
            continue
        print(f"\n== {workload} ==")
        nc = rows.get(NODECACHE, {}).get("qps")
        header = (f"{'contender':<10} {'qps':>10} {'µs/q':>6} {'p50 ms':>8} {'p99 ms':>8} {'lost':>7} {'bad':>6} "
                  f"{'srv cpu':>8} {'gen cpu':>8} {'nodecache/x':>12}")
        print(header)
        print("-" * len(header))
        for name, row in rows.items():
            ratio = "" if not nc or not row["qps"] or name == NODECACHE else f"{nc / row['qps']:.2f}x"
            print(f"{name:<10} {row['qps']:>10,.0f} {row['cpu_us_per_query'] or 0:>6.1f} "
                  f"{fmt_ms(row['p50_latency_ms']):>8} {fmt_ms(row['p99_latency_ms']):>8} "
                  f"{row['lost_total']:>7,.0f} {row['bad_responses']:>6,.0f} "
                  f"{fmt_pct(row['server_cpu_pct']):>8} {fmt_pct(row['dnsperf_cpu_pct']):>8} {ratio:>12}")
        per_rep = "; ".join(f"{n}: {', '.join(f'{q:,.0f}' for q in r['qps_all'])} (spread {spread(r):.0%})"
                            for n, r in rows.items())
        print(f"qps per rep: {per_rep}")
        if any(spread(r) > NOISY_SPREAD for r in rows.values()):
            print(f"warning: reps differ by more than {NOISY_SPREAD:.0%} of the median: the machine was "
                  f"busy with something else; compare with care or rerun")

    print("\n== memory ==")
    print(f"{'server':<14} {'idle RSS MiB':>12} {'filled MiB':>11} {'cached':>8} {'peak MiB':>9} "
          f"{'RSS MiB':>8} {'CPU s':>7}")
    for name, c in rep["contenders"].items():
        f = c.get("fill") or {}
        print(f"{name:<14} {fmt_mib(c['idle_rss_kib']):>12} {fmt_mib(f.get('rss_kib')):>11} "
              f"{f.get('held', 'n/a'):>8} {fmt_mib(c['peak_rss_kib']):>9} {fmt_mib(c['rss_kib']):>8} "
              f"{c['cpu_s'] or 0:>7.1f}")
    for name, c in rep["contenders"].items():
        if c["error"]:
            print(f"\n{name}: {c['error']}")
        elif c["exit_code"] not in (0, None):
            print(f"\nnote: {name} exited with status {c['exit_code']} when stopped with SIGTERM")


if __name__ == "__main__":
    sys.exit(main())
