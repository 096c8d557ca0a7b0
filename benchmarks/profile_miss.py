"""Profile the agent's cache-miss path: where an answered miss spends its CPU.

The agent runs pinned to CPU 0 under cProfile (recording only the miss phase,
see _phase_profiled_agent.py), in front of NSD; dnsperf on CPU 1 asks unique
names under the sample zone's wildcard, so every query is a miss the upstream
answers. The script prints the top functions by own and cumulative time and
the agent's CPU time per answered miss (user and system, from /proc) for the
phase. cProfile itself adds a large share of the total: compare rankings, and
take the absolute cost from `benchmarks/run.py --workload miss`.

    .venv/bin/python benchmarks/profile_miss.py            # cluster zone over TCP
    .venv/bin/python benchmarks/profile_miss.py --udp      # ... over UDP
    .venv/bin/python benchmarks/profile_miss.py --no-profile  # CPU per miss only
    .venv/bin/python benchmarks/profile_miss.py --callgrind --rate 200 --queries 2000

--callgrind counts user-space instructions per miss instead (valgrind's
callgrind, switched on only for the dnsperf phase): deterministic where CPU
time is noisy, so a small change shows. Offer a low --rate: under valgrind the
agent runs some fifty times slower, and the count is per miss only while it
keeps up (each miss then goes through the path alone, unbatched).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402  (needs the path above)
import contenders  # noqa: E402
from profile_hit import LAUNCHER, RESULTS_DIR, stop_agent, stop_processes, wait_for, where  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--queries", type=int, default=30_000, help="unique names asked (one miss each)")
    p.add_argument("--rate", type=int, default=None, help="offer this many q/s (dnsperf -Q) instead of saturating")
    p.add_argument("--udp", action="store_true", help="forward the cluster zone over UDP (prefer_udp)")
    p.add_argument("--no-profile", action="store_true", help="run without cProfile: CPU per miss only")
    p.add_argument("--callgrind", action="store_true",
                   help="count instructions per miss under valgrind's callgrind (no cProfile); use a low --rate")
    p.add_argument("--perf", type=Path, default=None,
                   help="also record the agent with `perf record` into this file during the phase")
    p.add_argument("--src", type=Path, default=bl.REPO,
                   help="run the agent from this source tree (e.g. an unpacked older commit, for before/after)")
    p.add_argument("--top", type=int, default=30, help="functions to list per ranking")
    p.add_argument("--out", type=Path, default=None, help="the .prof file (default: benchmarks/results/...)")
    args = p.parse_args()
    if args.callgrind:
        args.no_profile = True
    if args.queries < 1 or args.top < 1:
        p.error("--queries and --top must be positive")
    return args


def user_system(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of one process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def _instructions(pid: int, grind: Path, keep: Path) -> int:
    """Instructions counted since callgrind was switched on: dump now, sum the dump's totals.

    The dump is kept at `keep`, for callgrind_annotate.
    """
    subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)
    total = 0
    for dump in grind.parent.glob(grind.name + ".*"):
        text = dump.read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
                keep.write_text(text)
    return total


def main() -> int:
    args = parse_args()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out: Path = (args.out or RESULTS_DIR / f"profile_miss-{stamp}.prof").resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    pin = bl.can_pin()
    server_cpu, load_cpu = (bl.SERVER_CPU, bl.LOAD_CPU) if pin else (None, None)
    if pin:
        os.sched_setaffinity(0, {bl.LOAD_CPU})  # NSD inherits the load side's CPU
    workdir = Path(tempfile.mkdtemp(prefix="nodecache-profile-miss-"))
    upstream = agent = None
    try:
        upstream = bl.start_upstream(workdir / "nsd")
        port = bl.free_port()
        slot = contenders.Slot(workdir=workdir, port=port, upstream_port=upstream.port, cpu=None)
        contender = contenders.NodecacheUdp() if args.udp else contenders.Nodecache()
        argv = contender.command(slot)
        if not args.no_profile:
            argv = [argv[0], str(LAUNCHER), str(out), *argv[3:]]  # the launcher in place of `-m nodecache`
        grind = workdir / "callgrind.out"
        if args.callgrind:
            argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={grind}", *argv]
        agent = bl.ManagedProcess("nodecache", bl.pinned(argv, server_cpu), workdir / "agent.log",
                                  cwd=args.src, env={**(contender.env() or os.environ), "PYTHONHASHSEED": "0"})
        bl.wait_ready(bl.LOCALHOST, port, agent, timeout=300 if args.callgrind else 30)
        data = workdir / "miss.txt"
        bl.write_miss_file(data, args.queries)
        if not args.no_profile:
            os.kill(agent.pid, signal.SIGUSR1)
            wait_for(Path(f"{out}.recording"), agent, "start recording (SIGUSR1)", port)
        recorder = None
        if args.perf is not None:
            recorder = subprocess.Popen(["perf", "record", "-q", "-o", str(args.perf), "-p", str(agent.pid)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if args.callgrind:
            subprocess.run(["callgrind_control", "--instr=on", str(agent.pid)], check=True, capture_output=True)
        user0, sys0 = user_system(agent.pid)
        res = bl.run_dnsperf(data, port, workdir, "profile-miss", bl.DnsperfOptions(), max_runs=1, cpu=load_cpu,
                             rate=args.rate)
        user1, sys1 = user_system(agent.pid)
        user, system = user1 - user0, sys1 - sys0
        instructions = _instructions(agent.pid, grind, out.with_suffix(".callgrind")) if args.callgrind else 0
        if recorder is not None:
            recorder.send_signal(signal.SIGINT)
            recorder.wait(timeout=30)
        if not args.no_profile:
            os.kill(agent.pid, signal.SIGUSR2)
            wait_for(Path(f"{out}.done"), agent, "write the profile (SIGUSR2)", port)
        stop_agent(agent, out, "phase")
        agent = None
    finally:
        stop_processes(agent, upstream)
        shutil.rmtree(workdir, ignore_errors=True)
    for marker in (Path(f"{out}.recording"), Path(f"{out}.done")):
        marker.unlink(missing_ok=True)
    answered = max(res.completed, 1)
    print(f"misses answered: {res.completed:,} at {res.qps:,.0f} q/s, lost {res.lost}, rcodes {res.rcodes}; "
          f"agent CPU per miss{'' if args.no_profile else ' (under cProfile)'}: {1e6 * (user + system) / answered:.1f} us "
          f"(user {1e6 * user / answered:.1f}, system {1e6 * system / answered:.1f})")
    if args.callgrind:
        print(f"user-space instructions per miss (callgrind): {instructions / answered:,.0f}")
    if args.no_profile:
        return 0
    raw: dict = pstats.Stats(str(out)).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values()) or 1e-9
    for title, idx in (("own time (tottime)", 2), ("cumulative time", 3)):
        print(f"\ntop {args.top} by {title} (us per miss):")
        for key, (_cc, nc, tt, ct, _callers) in sorted(raw.items(), key=lambda kv: kv[1][idx], reverse=True)[:args.top]:
            print(f"{nc:>9,} {1e6 * tt / answered:>7.1f} {1e6 * ct / answered:>7.1f} {100 * tt / total:>4.0f}%  "
                  f"{where(key)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
