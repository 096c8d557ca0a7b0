"""Side-by-side dnsperf benchmark: nodecache vs dnsmasq vs unbound.

Every contender is a caching forwarder in front of the same NSD serving the
sample cluster zone, gets the same dnsperf workloads in the same run, and is
measured in interleaved repetitions (A B C A B C ...) so that the noise of a
shared machine spreads over all of them. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import grp
import json
import os
import platform
import pwd
import shlex
import shutil
import statistics
import sys
import tempfile
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402  (needs the path above)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
WORKLOADS = ("hit", "miss")
NODECACHE = "nodecache"
NOISY_SPREAD = 0.15  # reps further apart than this: someone else was using the CPUs


# --------------------------------------------------------------------------
# Contenders: one class per server, each knows only how to start itself.


@dataclass
class Slot:
    """Where a contender runs: its own directory and port, the shared upstream."""

    workdir: Path
    port: int
    upstream_port: int
    cpu: int | None
    extra_args: list[str] = field(default_factory=list)


class Contender(ABC):
    """A caching forwarder under test. Subclasses build the command line."""

    name: str

    @abstractmethod
    def command(self, slot: Slot) -> list[str]:
        """argv for a foreground process listening on 127.0.0.1:slot.port."""

    def version(self) -> str:
        return "unknown"

    def env(self) -> dict[str, str] | None:
        """Environment for the child; None inherits ours."""
        return None

    def start(self, slot: Slot) -> bl.ManagedProcess:
        argv = bl.pinned(self.command(slot), slot.cpu)
        return bl.ManagedProcess(self.name, argv, slot.workdir / f"{self.name}.log", cwd=bl.REPO,
                                 env=self.env())


class Nodecache(Contender):
    """The agent, run the way an operator would run it, on the venv's Python."""

    name = NODECACHE

    def command(self, slot: Slot) -> list[str]:
        resolv = slot.workdir / "resolv.conf"
        # Only cluster.local names are asked; the node resolv.conf just has to parse.
        resolv.write_text(f"nameserver {bl.LOCALHOST}\n")
        return [sys.executable, "-m", "nodecache", "run", "--no-setup-interface", "--no-setup-iptables",
                "--listen", bl.LOCALHOST, "--port", str(slot.port),
                "--upstream", f"{bl.LOCALHOST}:{slot.upstream_port}",
                "--cluster-domain", bl.CLUSTER_DOMAIN,
                "--node-resolv-conf", str(resolv), *bl.agent_endpoint_args(slot.workdir), *slot.extra_args]

    def env(self) -> dict[str, str]:
        # The CLI reads NODECACHE_* variables; a stray one in the caller's shell
        # would silently change what is measured. Use --nodecache-args instead.
        return {k: v for k, v in os.environ.items() if not k.startswith("NODECACHE_")}

    def version(self) -> str:
        try:
            import nodecache

            return getattr(nodecache, "__version__", "unknown")
        except ImportError:
            return "unknown"


class NodecacheUdp(Nodecache):
    """The agent with the cluster zone forwarded over UDP, a per-zone Corefile choice (no force_tcp).

    Not run by default; ask for it with `--only nodecache-udp`.
    """

    name = "nodecache-udp"

    def command(self, slot: Slot) -> list[str]:
        argv = super().command(slot)
        corefile = slot.workdir / "Corefile"
        corefile.write_text(f"""\
{bl.CLUSTER_DOMAIN}:{slot.port} {{
    bind {bl.LOCALHOST}
    cache {{
        success 9984 30
        denial 9984 5
    }}
    forward . {bl.LOCALHOST}:{slot.upstream_port}
}}
.:{slot.port} {{
    bind {bl.LOCALHOST}
    cache 30
    forward . {bl.LOCALHOST}:{slot.upstream_port}
}}
""")
        cut = argv.index("--upstream")  # the Corefile defines the zones: --config refuses the zone flags
        del argv[cut:cut + 2]
        return [*argv, "--config", str(corefile)]


class Dnsmasq(Contender):
    """dnsmasq as a pure cache: no resolv.conf, no hosts, no DHCP, one upstream."""

    name = "dnsmasq"

    def command(self, slot: Slot) -> list[str]:
        argv = [bl.find_program("dnsmasq"), "--keep-in-foreground", "--conf-file=/dev/null",
                "--no-resolv", "--no-hosts", "--no-poll",
                f"--server={bl.LOCALHOST}#{slot.upstream_port}",
                f"--listen-address={bl.LOCALHOST}", "--bind-interfaces",
                f"--port={slot.port}", "--cache-size=10000",
                f"--pid-file={slot.workdir / 'dnsmasq.pid'}", "--log-facility=-"]
        if os.geteuid() == 0:
            # As root dnsmasq drops to its compiled-in user, which may not
            # exist everywhere; name one that does.
            nobody = pwd.getpwnam("nobody")
            argv += ["--user=nobody", f"--group={grp.getgrgid(nobody.pw_gid).gr_name}"]
        return argv

    def version(self) -> str:
        return bl.tool_version([bl.find_program("dnsmasq"), "--version"])


class Unbound(Contender):
    """unbound as a forwarder: one thread, no validation, big caches."""

    name = "unbound"

    def command(self, slot: Slot) -> list[str]:
        conf = slot.workdir / "unbound.conf"
        upstream = f"{bl.LOCALHOST}@{slot.upstream_port}"
        conf.write_text(f"""\
server:
    num-threads: 1
    interface: {bl.LOCALHOST}@{slot.port}
    port: {slot.port}
    do-ip6: no
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "{slot.workdir}"
    pidfile: "{slot.workdir / 'unbound.pid'}"
    use-syslog: no
    logfile: ""
    verbosity: 1
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    # No DNSSEC: the other contenders do not validate either.
    module-config: "iterator"
    domain-insecure: "{bl.CLUSTER_DOMAIN}."
    msg-cache-size: 128m
    rrset-cache-size: 256m
    key-cache-size: 4m
remote-control:
    control-enable: no
forward-zone:
    name: "{bl.CLUSTER_DOMAIN}."
    forward-addr: {upstream}
forward-zone:
    name: "."
    forward-addr: {upstream}
""")
        return [bl.find_program("unbound"), "-d", "-c", str(conf)]

    def version(self) -> str:
        return bl.tool_version([bl.find_program("unbound"), "-V"])


CONTENDERS: dict[str, type[Contender]] = {c.name: c for c in (Nodecache, Dnsmasq, Unbound, NodecacheUdp)}
DEFAULT_CONTENDERS = (Nodecache.name, Dnsmasq.name, Unbound.name)


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
    p.add_argument("--workload", choices=(*WORKLOADS, "all"), default="all",
                   help="hit: cached cluster names; miss: unique names the upstream must answer")
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
                   help="unique names per miss datafile (0: enough for 100k qps over --duration, "
                        "at least 300000), so dnsperf never wraps")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin (servers on CPU 0, dnsperf+NSD on CPU 1)")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.reps < 1:
        p.error("--duration must be > 0 and --reps >= 1")
    if args.clients < 1 or args.outstanding < 1 or args.timeout <= 0:
        p.error("--clients, --outstanding and --timeout must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.only or list(DEFAULT_CONTENDERS)
    workloads = list(WORKLOADS) if args.workload == "all" else [args.workload]
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

    workdir = Path(tempfile.mkdtemp(prefix="nodecache-bench-"))
    try:
        return bench(args, names, workloads, opts, miss_names, pin, workdir)
    finally:
        if args.keep:
            print(f"kept temporary directory: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def bench(args: argparse.Namespace, names: list[str], workloads: list[str], opts: bl.DnsperfOptions,
          miss_names: int, pin: bool, workdir: Path) -> int:
    """Start upstream and contenders, run the interleaved measurements, report."""
    server_cpu = bl.SERVER_CPU if pin else None
    load_cpu = bl.LOAD_CPU if pin else None
    started = dt.datetime.now(dt.UTC)
    extra = shlex.split(args.nodecache_args)
    running: list[Running] = []
    runs: list[dict] = []
    upstream = None
    upstream_check: dict = {}
    try:
        upstream = bl.start_upstream(workdir / "nsd")
        bl.wait_ready(bl.LOCALHOST, upstream.port, timeout=20)
        expected = bl.warm(bl.LOCALHOST, upstream.port, bl.HIT_QUERIES)
        bl.log(f"upstream: NSD on {bl.LOCALHOST}:{upstream.port}; answers: {expected}")
        upstream_check = check_upstream(upstream.port, opts, load_cpu, workdir)

        for name in names:
            slot = Slot(workdir / name, bl.free_port(), upstream.port, server_cpu,
                        extra if name.startswith(NODECACHE) else [])
            slot.workdir.mkdir()
            r = Running(CONTENDERS[name](), slot)
            running.append(r)
            try:
                r.proc = r.contender.start(slot)
                r.ready_after_s = bl.wait_ready(bl.LOCALHOST, slot.port, r.proc, timeout=20)
                bl.log(f"{name}: ready on {bl.LOCALHOST}:{slot.port} after {r.ready_after_s:.2f}s "
                       f"(pid {r.proc.pid})")
            except (RuntimeError, OSError) as e:
                r.error = f"did not start: {e}"
                bl.log(f"{name}: {r.error}")
                if r.proc is not None:
                    r.exit_code = r.proc.stop()

        live = [r for r in running if r.error is None]
        hit_file = bl.write_hit_file(workdir / "hit.txt")
        total = len(workloads) * args.reps * len(live)
        done = 0
        for workload in workloads:
            for rep in range(1, args.reps + 1):
                for r in live:
                    if r.error is not None:
                        continue
                    done += 1
                    bl.log(f"[{done}/{total}] {workload} rep {rep}/{args.reps}: {r.contender.name} ...")
                    try:
                        runs.append(measure(r, workload, rep, hit_file, miss_names, expected,
                                            opts, args.duration, load_cpu, workdir))
                    except (RuntimeError, OSError) as e:
                        r.error = f"failed during {workload} rep {rep}: {e}"
                        bl.log(f"  {r.contender.name}: {r.error}")
                        continue
                    res = runs[-1]["dnsperf"]
                    bl.log(f"  {res['qps']:,.0f} q/s, avg {res['avg_latency_ms']:.3f} ms, "
                           f"p99 {fmt_ms(res['p99_latency_ms'])} ms, lost {res['lost']}")
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

    report = build_report(args, opts, miss_names, pin, started, running, runs, workloads)
    report["upstream_check"] = upstream_check
    print_report(report)
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\nraw results: {out.relative_to(bl.REPO)}")
    return 1 if any(r.error for r in running) else 0


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
            expected: dict[str, str], opts: bl.DnsperfOptions, duration: float,
            load_cpu: int | None, workdir: Path) -> dict:
    """One dnsperf run of one workload against one contender."""
    assert r.proc is not None
    if not r.proc.alive():
        raise RuntimeError(f"exited with {r.proc.proc.returncode}:\n{r.proc.log_tail()}")
    label = f"{workload}-{r.contender.name}-{rep}"
    info: dict = {"contender": r.contender.name, "workload": workload, "rep": rep,
                  "loadavg_before": Path("/proc/loadavg").read_text().split()[:3]}
    cpu_before = bl.cpu_seconds(r.proc.pid)
    if workload == "hit":
        # Fill (or refill: a miss run may have evicted them) the cache first.
        seen = bl.warm(bl.LOCALHOST, r.slot.port, bl.HIT_QUERIES)
        r.warm_rcodes = seen
        differ = {k: v for k, v in seen.items() if v != expected.get(k)}
        if differ:
            bl.log(f"  warning: answers differ from the upstream's: {differ}")
        info["warm_mismatch"] = differ
        result = bl.run_dnsperf(hit_file, r.slot.port, workdir, label, opts,
                                duration=duration, cpu=load_cpu)
    else:
        data = workdir / f"{label}.txt"
        info["miss_run_id"] = bl.write_miss_file(data, miss_names)
        info["miss_names"] = miss_names
        try:
            result = bl.run_dnsperf(data, r.slot.port, workdir, label, opts,
                                    duration=duration, max_runs=1, cpu=load_cpu)
        finally:
            data.unlink(missing_ok=True)
        if result.stopped_by != "time limit":
            bl.log(f"  warning: dnsperf stopped by {result.stopped_by!r}, not the time limit; "
                   f"raise --miss-names")
    if result.run_time_s > 0:
        # Includes the hit workload's warm-up queries: a handful, negligible.
        result.server_cpu_pct = 100 * (bl.cpu_seconds(r.proc.pid) - cpu_before) / result.run_time_s
    info["dnsperf"] = asdict(result)
    info["dnsperf"]["bad_responses"] = result.bad_responses
    info["dnsperf"].pop("summary_text")
    return info


# --------------------------------------------------------------------------
# Report


def median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def build_report(args: argparse.Namespace, opts: bl.DnsperfOptions, miss_names: int, pin: bool,
                 started: dt.datetime, running: list[Running], runs: list[dict],
                 workloads: list[str]) -> dict:
    """Everything needed to read or recompute the tables later, as plain data."""
    summary: dict[str, dict[str, dict]] = {}
    for workload in workloads:
        summary[workload] = {}
        for r in running:
            mine = [x["dnsperf"] for x in runs
                    if x["workload"] == workload and x["contender"] == r.contender.name]
            if not mine:
                continue
            summary[workload][r.contender.name] = {
                "reps": len(mine),
                "qps": median([m["qps"] for m in mine]),
                "avg_latency_ms": median([m["avg_latency_ms"] for m in mine]),
                "p99_latency_ms": median([m["p99_latency_ms"] for m in mine]),
                "lost": median([m["lost"] for m in mine]),
                "bad_responses": median([m["bad_responses"] for m in mine]),
                "server_cpu_pct": median([m["server_cpu_pct"] for m in mine]),
                "dnsperf_cpu_pct": median([m["dnsperf_cpu_pct"] for m in mine]),
                "qps_all": [m["qps"] for m in mine],
            }
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
        "settings": {"duration_s": args.duration, "reps": args.reps, "workloads": workloads,
                     "dnsperf_options": " ".join(opts.argv()) + " -v",
                     "miss_names_per_run": miss_names, "nodecache_args": args.nodecache_args,
                     "hit_queries": [f"{n} {t}" for n, t in bl.HIT_QUERIES]},
        "contenders": {
            r.contender.name: {
                "command": r.proc.argv if r.proc else None, "port": r.slot.port,
                "error": r.error, "ready_after_s": r.ready_after_s,
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


def print_report(rep: dict) -> None:
    """The human part: settings, one table per workload, memory, failures."""
    s = rep["settings"]
    print()
    print(f"dnsperf {rep['versions']['dnsperf']} options: {s['dnsperf_options']} "
          f"-l {s['duration_s']:g} (miss: -n 1, {s['miss_names_per_run']:,} unique names per run)")
    pin = rep["host"]["pinning"]
    print(f"pinning: server CPU {pin['server_cpu']}, dnsperf+NSD CPU {pin['dnsperf_nsd_harness_cpu']}"
          if pin else "pinning: none")
    print(f"reps: {s['reps']} interleaved; figures are medians over reps; "
          f"p99 from dnsperf -v per-answer latencies; lost = no answer within -t;")
    print("bad = answers other than NOERROR/NXDOMAIN; srv cpu / gen cpu = CPU time of the server / "
          "of dnsperf over the run, in % of its one CPU (see benchmarks/README.md: reading the results)")
    print("note: nodecache forwards cluster.local to the upstream over TCP (its default, as "
          "node-local-dns); dnsmasq and unbound over UDP")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in rep["versions"].items()))
    up = rep.get("upstream_check") or {}
    if up:
        print(f"upstream NSD direct (unique names, up to 2 s, sharing a CPU with dnsperf): {up['qps']:,.0f} q/s, "
              f"lost {up['lost']}, rcodes {up['rcodes']}")
    if s["nodecache_args"]:
        print(f"nodecache extra args: {s['nodecache_args']}")

    for workload, rows in rep["summary"].items():
        print(f"\n== {workload} ==")
        nc = rows.get(NODECACHE, {}).get("qps")
        header = (f"{'contender':<13} {'qps':>10} {'avg ms':>8} {'p99 ms':>8} {'lost':>7} {'bad':>6} "
                  f"{'srv cpu':>8} {'gen cpu':>8} {'nodecache/x':>12}")
        print(header)
        print("-" * len(header))
        for name, row in rows.items():
            ratio = "" if not nc or not row["qps"] or name == NODECACHE else f"{nc / row['qps']:.2f}x"
            print(f"{name:<13} {row['qps']:>10,.0f} {fmt_ms(row['avg_latency_ms']):>8} "
                  f"{fmt_ms(row['p99_latency_ms']):>8} {row['lost']:>7,.0f} {row['bad_responses']:>6,.0f} "
                  f"{fmt_pct(row['server_cpu_pct']):>8} {fmt_pct(row['dnsperf_cpu_pct']):>8} {ratio:>12}")
        per_rep = "; ".join(f"{n}: {', '.join(f'{q:,.0f}' for q in r['qps_all'])} (spread {spread(r):.0%})"
                            for n, r in rows.items())
        print(f"qps per rep: {per_rep}")
        if any(spread(r) > NOISY_SPREAD for r in rows.values()):
            print(f"warning: reps differ by more than {NOISY_SPREAD:.0%} of the median: the machine was "
                  f"busy with something else; compare with care or rerun")

    print("\n== memory (after all runs) ==")
    print(f"{'contender':<13} {'peak RSS MiB':>13} {'RSS MiB':>8} {'CPU s':>7}")
    for name, c in rep["contenders"].items():
        if c["peak_rss_kib"] is None:
            continue
        print(f"{name:<13} {c['peak_rss_kib'] / 1024:>13.1f} {c['rss_kib'] / 1024:>8.1f} "
              f"{c['cpu_s']:>7.1f}")
    for name, c in rep["contenders"].items():
        if c["error"]:
            print(f"\n{name}: {c['error']}")
        elif c["exit_code"] not in (0, None):
            print(f"\nnote: {name} exited with status {c['exit_code']} when stopped with SIGTERM")


if __name__ == "__main__":
    sys.exit(main())
