"""Profile the agent's cache-hit path and check that it builds no dnslib objects.

The design promises that a hit is answered from bytes (scan the question, look
up the key, patch ID and TTLs) and that dnslib is only used off the hot path.
This script runs the agent under cProfile in front of NSD, fills the cache,
drives a fixed number of hit queries with dnsperf, stops the agent and prints
the top functions by own time and by cumulative time, then lists every dnslib
function that ran. With the default --mode phase only the hit phase is
recorded and any dnslib call fails the check (exit 1).

Modes:
  phase  (default) the agent runs under a cProfile profiler switched on by
         SIGUSR1 after the cache is warm and off by SIGUSR2 after dnsperf
         (see _phase_profiled_agent.py): the profile is the hit phase alone.
  whole  `python -m cProfile -o OUT -m nodecache run ...`: the whole process,
         startup and warm-up misses included; the profile is written only if
         the agent exits cleanly on SIGTERM, which this mode also checks. dnslib
         calls from startup and misses are expected there; the check is that no
         dnslib function is called anywhere near once per hit.

cProfile records Python functions only. With the hot path compiled (the default
build), the agent's own hit path does not show, but any dnslib function it
called would (dnslib is Python), so the check holds as it is. --pure runs the
agent on its sources (NODECACHE_PURE_PYTHON=1), where the path shows too;
`make profile` runs both.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import pstats
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402  (needs the path above)

from nodecache import PURE_PYTHON_ENV, build  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
LAUNCHER = HERE / "_phase_profiled_agent.py"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--mode", choices=("phase", "whole"), default="phase",
                   help="profile only the hit phase (strict dnslib check) or the whole process")
    p.add_argument("--queries", type=int, default=50_000,
                   help="hit queries to send (rounded up to whole passes over the hit datafile); "
                        "keep the phase short: negative answers in it expire after 5 s")
    p.add_argument("--top", type=int, default=25, help="functions to list per ranking")
    p.add_argument("--out", type=Path, default=None,
                   help="where to write the .prof file (default: benchmarks/results/profile_hit-<time>.prof)")
    p.add_argument("--nodecache-args", default="",
                   help="extra arguments for the agent, e.g. '--loop asyncio'")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs)")
    p.add_argument("--pure", action="store_true",
                   help="run the agent's Python sources even where the hot path is compiled (NODECACHE_PURE_PYTHON=1)")
    args = p.parse_args()
    if args.queries < 1 or args.top < 1:
        p.error("--queries and --top must be positive")
    return args


def main() -> int:
    args = parse_args()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out: Path = (args.out or RESULTS_DIR / f"profile_hit-{args.mode}-{stamp}.prof").resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in (out, Path(f"{out}.recording"), Path(f"{out}.done")):
        stale.unlink(missing_ok=True)

    pin = bl.can_pin()
    server_cpu, load_cpu = (bl.SERVER_CPU, bl.LOAD_CPU) if pin else (None, None)
    if pin:
        os.sched_setaffinity(0, {bl.LOAD_CPU})  # NSD inherits the load side's CPU

    workdir = Path(tempfile.mkdtemp(prefix="nodecache-profile-"))
    runs = math.ceil(args.queries / len(bl.HIT_QUERIES))
    upstream = agent = None
    findings: dict = {}
    try:
        upstream = bl.start_upstream(workdir / "nsd")
        port = bl.free_port()
        resolv = workdir / "resolv.conf"
        resolv.write_text(f"nameserver {bl.LOCALHOST}\n")
        agent_args = ["run", "--no-setup-interface", "--no-setup-iptables", "--listen", bl.LOCALHOST, "--port", str(port),
                      "--upstream", f"{bl.LOCALHOST}:{upstream.port}",
                      "--cluster-domain", bl.CLUSTER_DOMAIN, "--node-resolv-conf", str(resolv),
                      *bl.agent_endpoint_args(workdir), *shlex.split(args.nodecache_args)]
        if args.mode == "phase":
            argv = [sys.executable, str(LAUNCHER), str(out), *agent_args]
        else:
            argv = [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "nodecache", *agent_args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("NODECACHE_")}
        if args.pure:
            env[PURE_PYTHON_ENV] = "1"
        agent = bl.ManagedProcess("nodecache", bl.pinned(argv, server_cpu), workdir / "agent.log",
                                  cwd=bl.REPO, env=env)
        bl.log(f"agent (pid {agent.pid}) under cProfile, mode {args.mode}: {shlex.join(argv)}")
        bl.wait_ready(bl.LOCALHOST, port, agent, timeout=30)

        expected = bl.warm(bl.LOCALHOST, upstream.port, bl.HIT_QUERIES)
        seen = bl.warm(bl.LOCALHOST, port, bl.HIT_QUERIES)
        if seen != expected:
            bl.log(f"warning: warm-up answers differ from the upstream's: {seen} vs {expected}")
        upstream_before = upstream_queries(upstream)

        if args.mode == "phase":
            os.kill(agent.pid, signal.SIGUSR1)
            wait_for(Path(f"{out}.recording"), agent, "start recording (SIGUSR1)", port)

        hit_file = bl.write_hit_file(workdir / "hit.txt")
        bl.log(f"hit phase: dnsperf -n {runs} over {len(bl.HIT_QUERIES)} names ({runs * len(bl.HIT_QUERIES):,} queries)")
        opts = bl.DnsperfOptions()
        res = bl.run_dnsperf(hit_file, port, workdir, "profile-hit", opts, max_runs=runs, cpu=load_cpu)
        bl.log(f"  {res.completed:,} answered at {res.qps:,.0f} q/s under the profiler, lost {res.lost}, "
               f"rcodes {res.rcodes}")

        if args.mode == "phase":
            os.kill(agent.pid, signal.SIGUSR2)
            wait_for(Path(f"{out}.done"), agent, "write the profile (SIGUSR2)", port)
        upstream_after = upstream_queries(upstream)
        findings = {"answered": res.completed, "lost": res.lost, "qps": res.qps,
                    "dnsperf": " ".join(opts.argv()) + f" -n {runs}",
                    "upstream_queries_during_hits": (None if upstream_before is None or upstream_after is None
                                                     else upstream_after - upstream_before)}
        findings.update(stop_agent(agent, out, args.mode))
        agent = None
    finally:
        stop_processes(agent, upstream)
        if args.keep:
            print(f"kept temporary directory: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    for stale in (Path(f"{out}.recording"), Path(f"{out}.done")):
        stale.unlink(missing_ok=True)
    if not out.is_file():
        print(f"\nno profile was written ({out.name}); see the agent's exit above")
        return 1
    return report(out, args, findings)


def stop_processes(agent: bl.ManagedProcess | None, upstream) -> None:
    """Stop what a profiling run started (the agent, then NSD), whichever got started."""
    if agent is not None:
        agent.stop()
    if upstream is not None:
        upstream.stop()


def upstream_queries(nsd) -> int | None:
    """Queries NSD has seen, to prove the hit phase sent none upstream."""
    try:
        return nsd.query_count()
    except Exception as e:  # nsd-control missing or refusing: report, do not fail
        bl.log(f"note: cannot read NSD's query counter ({e})")
        return None


def wait_for(marker: Path, agent: bl.ManagedProcess, what: str, port: int, timeout: float = 10.0) -> None:
    """Wait (bounded) for the launcher's marker file after a signal."""
    deadline = time.monotonic() + timeout
    nudged = False
    while not marker.exists():
        if not agent.alive():
            raise RuntimeError(f"agent exited while waiting to {what}:\n{agent.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"agent did not {what} within {timeout:.0f}s")
        if not nudged and time.monotonic() > deadline - timeout / 2:
            # Should the loop only run signal handlers on I/O, one query wakes it.
            bl.query(bl.LOCALHOST, port, bl.PROBE_NAME)
            nudged = True
        time.sleep(0.05)


def stop_agent(agent: bl.ManagedProcess, out: Path, mode: str) -> dict:
    """SIGTERM as a DaemonSet would; report how the agent exited and whether the profile was written."""
    t0 = time.monotonic()
    agent.proc.send_signal(signal.SIGTERM)
    how = "SIGTERM"
    try:
        agent.proc.wait(timeout=15)
    except Exception:
        bl.log("agent still running 15 s after SIGTERM; sending SIGINT")
        how = "SIGINT after SIGTERM was ignored"
        agent.proc.send_signal(signal.SIGINT)
        try:
            agent.proc.wait(timeout=10)
        except Exception:
            how = "SIGKILL (ignored SIGTERM and SIGINT)"
    code = agent.stop()  # kills if still running, closes the log
    took = time.monotonic() - t0
    result = {"stopped_by": how, "exit_code": code, "exit_seconds": round(took, 2),
              "profile_written": out.is_file()}
    bl.log(f"agent stopped by {how}: exit code {code} after {took:.1f}s; "
           f"profile {'written' if out.is_file() else 'NOT written'}")
    if mode == "whole" and not out.is_file():
        bl.log(f"the agent did not exit cleanly under cProfile; its log:\n{agent.log_tail()}")
    return result


def where(key: tuple[str, int, str]) -> str:
    """A short, machine-independent name for a profiled function."""
    filename, line, func = key
    if filename == "~":
        return func  # a builtin, e.g. <method 'sendto' of ...>
    path = Path(filename)
    if "site-packages" in path.parts:
        short = "/".join(path.parts[path.parts.index("site-packages") + 1:])
    elif path.is_relative_to(bl.REPO):
        short = str(path.relative_to(bl.REPO))
    else:
        short = path.name  # the standard library
    return f"{short}:{line}({func})"


# The listener callbacks a UDP query enters by: batched (the default; readable once per wake-up, which
# replays remembered hits itself) or the event loop's datagram transport (--udp-batch 0 or 1; once per
# query). The report names those that ran.
RECEIVE_ENTRIES = ("readable", "datagram_received")


def is_dnslib(key: tuple[str, int, str]) -> bool:
    return f"{os.sep}dnslib{os.sep}" in key[0]


def report(out: Path, args: argparse.Namespace, findings: dict) -> int:
    """Print the rankings and the dnslib verdict; exit status 1 when the check fails."""
    stats = pstats.Stats(str(out))
    raw: dict = stats.stats  # type: ignore[attr-defined]
    total_tt = sum(v[2] for v in raw.values()) or 1e-9
    print(f"\nprofile: {out.relative_to(bl.REPO) if out.is_relative_to(bl.REPO) else out}  "
          f"(mode {args.mode}; load: dnsperf {findings.get('dnsperf', '')})")
    print(f"hits answered: {findings.get('answered', 0):,} at {findings.get('qps', 0):,.0f} q/s under "
          f"the profiler; upstream queries during the hit phase: "
          f"{findings.get('upstream_queries_during_hits', 'unknown')}")
    print(f"agent stop: {findings.get('stopped_by')} -> exit {findings.get('exit_code')} in "
          f"{findings.get('exit_seconds')} s")
    for title, idx in (("own time (tottime)", 2), ("cumulative time", 3)):
        print(f"\ntop {args.top} by {title}:")
        print(f"{'ncalls':>10} {'tottime':>9} {'cumtime':>9} {'%tot':>5}  function")
        for key, (_cc, nc, tt, ct, _callers) in sorted(raw.items(), key=lambda kv: kv[1][idx],
                                                     reverse=True)[:args.top]:
            print(f"{nc:>10,} {tt:>9.3f} {ct:>9.3f} {100 * tt / total_tt:>4.0f}%  {where(key)}")

    entries = {k[2]: v[1] for k, v in raw.items() if k[0].endswith("listeners.py") and k[2] in RECEIVE_ENTRIES}
    compiled = not args.pure and build() == "compiled"
    print("\nUDP receive entry points: " + (
        ", ".join(f"{name} {calls:,} calls" for name, calls in entries.items())
        or ("not recorded: the hot path is compiled, and cProfile sees Python functions only "
            "(dnslib is Python, so a call into it would still show; --pure shows the path)" if compiled
            else "none ran (the hit phase did not reach the listeners)")))
    dnslib = sorted(((k, v) for k, v in raw.items() if is_dnslib(k)), key=lambda kv: kv[1][1], reverse=True)
    answered = max(1, findings.get("answered", 0))
    print()
    if args.mode == "phase":
        if not dnslib:
            print(f"PASS: no dnslib function ran during the hit phase ({answered:,} hits answered).")
            return 0
        print(f"FAIL: {len(dnslib)} dnslib functions ran during the hit phase ({answered:,} hits):")
        for key, v in dnslib[:30]:
            print(f"  {v[1]:>10,} calls  {where(key)}")
        up = findings.get("upstream_queries_during_hits")
        if up:
            print(f"  ({up} queries went upstream during the phase: an entry expired, so some of "
                  f"these calls may be the miss path; rerun with fewer --queries)")
        return 1
    # whole mode: startup and warm-up misses use dnslib; per-hit use would show as
    # a call count in the order of the number of hits.
    worst = dnslib[0][1][1] if dnslib else 0
    print(f"dnslib functions in the whole run: {len(dnslib)}; most calls to one: {worst:,} "
          f"(hits answered: {answered:,})")
    for key, v in dnslib[:15]:
        print(f"  {v[1]:>10,} calls  {where(key)}")
    if worst >= answered / 10:
        print("FAIL: some dnslib function is called about once per hit or more")
        return 1
    print("PASS: no dnslib function is called anywhere near once per hit "
          "(use --mode phase for the strict hit-phase-only check)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
