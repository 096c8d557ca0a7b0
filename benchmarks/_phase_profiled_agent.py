"""Run `python -m nodecache ...` with a cProfile profiler that records one phase only.

Usage: python _phase_profiled_agent.py OUT.prof [nodecache arguments...]

SIGUSR1 starts recording, SIGUSR2 stops it and writes OUT.prof (then
OUT.prof.done, so the reader never sees a half-written file). Profiling the
whole process would mix startup and cache-filling misses, which rightly use
dnslib, into the hit phase that profile_hit.py wants to look at alone.
The agent itself runs unchanged, in this process, as `python -m nodecache`.
"""

from __future__ import annotations

import cProfile
import os
import runpy
import signal
import sys


def main() -> None:
    out, agent_args = sys.argv[1], sys.argv[2:]
    profiler = cProfile.Profile()

    def start(signum: int, frame: object) -> None:
        # Marker first, then enable: the marker's own calls stay out of the profile.
        os.close(os.open(out + ".recording", os.O_CREAT | os.O_WRONLY, 0o644))
        profiler.enable()

    def stop(signum: int, frame: object) -> None:
        profiler.disable()
        profiler.dump_stats(out)
        os.close(os.open(out + ".done", os.O_CREAT | os.O_WRONLY, 0o644))

    # Installed before the agent starts; the agent handles only SIGTERM/SIGINT.
    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    sys.argv = ["nodecache", *agent_args]
    runpy.run_module("nodecache", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
