"""User-space instructions per one-query wake-up of the batched UDP listener, counted by callgrind.

`perf` needs hardware counters, which a VM often lacks; callgrind counts
instructions deterministically (with PYTHONHASHSEED fixed). This runs the
listener's reader callback in process, over loopback, with a resolver that
answers every query with fixed bytes (a replay from its reply memo, or from
`answer` for a listener that does not replay itself), so the count is the
listener's and mmsg.Batch's own per wake-up cost (plus the test client's
send and receive, the same in every version): recvmmsg of one query, the
answer, sendmmsg.
It runs itself twice under callgrind, for WAKEUPS and 2 * WAKEUPS wake-ups,
and prints the difference per wake-up, so start-up costs cancel out.

    .venv/bin/python benchmarks/wakeup_instructions.py            # needs valgrind
    .venv/bin/python benchmarks/wakeup_instructions.py --src DIR  # another tree: git archive main nodecache
    .venv/bin/python benchmarks/wakeup_instructions.py --drive 1000   # the loop alone, no callgrind
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WAKEUPS = 2000
QUERY = bytes(40)  # what it holds does not matter to the stub resolver
REPLY_TAIL = bytes(60)
BATCH_SLOTS = 64  # the agent's --udp-batch default
REPLY_SLOT = 1232
NEVER = 1 << 40  # a sampling countdown that never fires: the fast branch, as under load
HASH_SEED = "0"  # fixed, so the count repeats exactly
VIAS = 4  # cache.VIAS: UDP and TCP, IPv4 and IPv6


class StubMemo:
    """A reply memo (cache.ReplyMemo) that remembers QUERY's reply, as one asked over and over would be."""

    def __init__(self) -> None:
        self.by_via = tuple({QUERY[2:]: (REPLY_TAIL, float("inf"), [0] * VIAS)} for _ in range(VIAS))


class StubResolver:
    """What UdpListener needs of a Resolver: every query a hit, answered with fixed bytes.

    The listener replays QUERY from the memo; a tree whose listener does not
    read the memo asks `answer`, which gives the same bytes.
    """

    def __init__(self, activity: Any) -> None:
        self.activity = activity
        self.query_log = None
        self.clock = lambda: 0.0
        self.replies = StubMemo()

    def answer(self, data: bytes, via: int) -> bytes:
        return data[:2] + REPLY_TAIL

    def submit(self, *args: Any) -> None:
        raise AssertionError("the stub answers every query")


class NoLoop:
    """Takes the transport's reader registration; the driver calls the callback itself."""

    def add_reader(self, fd: int, callback: Any, *args: Any) -> None:
        self.callback, self.args = callback, args

    def remove_reader(self, fd: int) -> None:
        pass


def drive(wakeups: int, src: Path) -> None:
    """`wakeups` times: the client sends one query, the reader callback answers it, the client reads."""
    sys.path.insert(0, str(src))  # the tree measured: imported here, after --src is known
    from nodecache import listeners
    from nodecache.counters import Activity

    server = listeners.make_socket("127.0.0.1", 0, socket.SOCK_DGRAM)
    listener = listeners.UdpListener(StubResolver(Activity(lambda: 0.0)))  # type: ignore[arg-type]
    listener.countdown = NEVER
    loop = NoLoop()
    # Trees before the replies went out from where they are also took a reply slot size.
    slots = (BATCH_SLOTS, REPLY_SLOT) if "reply" in inspect.signature(listeners.UdpBatchTransport).parameters else (BATCH_SLOTS,)
    transport = listeners.UdpBatchTransport(loop, server, listener, *slots)  # type: ignore[arg-type]
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.connect(server.getsockname())
    callback, args = loop.callback, loop.args
    for _ in range(wakeups):
        client.send(QUERY)
        callback(*args)
        client.recv(REPLY_SLOT)
    batch = transport.batch
    if (batch.received, batch.sent) != (wakeups, wakeups):
        raise SystemExit(f"read {batch.received} and sent {batch.sent} of {wakeups}: the count would mean nothing")
    client.close()
    transport.close()


def counted(wakeups: int, src: Path) -> int:
    """Instructions callgrind counts for a whole run of `wakeups` wake-ups of the tree in `src`."""
    run = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, __file__, "--drive", str(wakeups), "--src", str(src)],
        capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": HASH_SEED}, check=True,
    )  # fmt: skip
    found = re.search(r"Collected : (\d+)", run.stderr)
    if found is None:
        raise SystemExit(f"no instruction count in callgrind's output:\n{run.stderr}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drive", type=int, metavar="N", help="run N wake-ups and exit (what callgrind runs)")
    parser.add_argument("--src", type=Path, default=REPO, help="the source tree whose nodecache is measured")
    parser.add_argument("--wakeups", type=int, default=WAKEUPS, help="wake-ups in the shorter of the two runs")
    args = parser.parse_args()
    if args.drive is not None:
        drive(args.drive, args.src)
        return
    short, long = counted(args.wakeups, args.src), counted(2 * args.wakeups, args.src)
    print(f"{(long - short) / args.wakeups:,.0f} instructions per one-query wake-up "
          f"(callgrind, {args.wakeups:,} vs {2 * args.wakeups:,} wake-ups)")  # fmt: skip


if __name__ == "__main__":
    main()
