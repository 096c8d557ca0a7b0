"""The listening UDP sockets' kernel buffers and receive drops, as `nodecache stats` and /metrics show them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nodecache.sockstats import kernel_drops
from tests.conftest import AgentProcess
from tests.dnsmsg import query
from tests.support.clients import raw_udp
from tests.support.fakeupstream import FakeUpstream
from tests.support.http import scrape, value
from tests.support.net import free_port

NAME = "kubernetes.default.svc.cluster.local."
BURST = 400  # queries sent while the agent is stopped: far more than a 4 KiB receive buffer holds


def test_kernel_drops_reads_the_drops_column_of_the_sockets_asked_for(tmp_path: Path) -> None:
    head = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n"
    rows = [
        "  1: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 17\n",
        "  2: 0100007F:0036 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4343 2 0000000000000000 5\n",
    ]  # fmt: skip
    v4, v6 = tmp_path / "udp", tmp_path / "udp6"
    v4.write_text(head + rows[0])
    v6.write_text(head + rows[1])
    assert kernel_drops({4242, 4343, 99}, (v4, v6, tmp_path / "missing")) == {4242: 17, 4343: 5}
    assert kernel_drops(set(), (v4,)) == {}


def test_a_live_sockets_drops_are_found_by_its_inode() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        inode = os.fstat(s.fileno()).st_ino
        assert kernel_drops({inode}) == {inode: 0}


def stats(agent: AgentProcess, text: bool = False) -> Any:
    """`nodecache stats --json` parsed, or the text summary."""
    assert agent.control_socket is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("NODECACHE_")}
    done = subprocess.run([sys.executable, "-m", "nodecache", "stats", *([] if text else ["--json"]),
                           "--control-socket", agent.control_socket], capture_output=True, text=True, timeout=30,
                          env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout if text else json.loads(done.stdout)


@pytest.mark.slow
def test_queries_dropped_by_a_full_receive_buffer_show_in_stats_and_metrics(
    upstream: FakeUpstream, node_resolv_conf: Path
) -> None:
    """The agent is stopped (SIGSTOP), a burst overflows its small receive buffer, and it counts what it lost."""
    port = free_port()
    with AgentProcess(["--listen", "127.0.0.1", "--port", str(port), "--upstream", f"127.0.0.1:{upstream.port}",
                       "--node-resolv-conf", str(node_resolv_conf), "--udp-rcvbuf", "4Ki"]) as agent:  # fmt: skip
        assert raw_udp("127.0.0.1", port, query(NAME, "A", qid=1)) is not None  # cached: the burst is hits
        (before,) = stats(agent)["udp"]
        assert before["listener"] == f"127.0.0.1:{port}" and before["receive_drops"] == 0
        assert before["receive_buffer"] == 4096 and before["batched"]
        assert agent.proc is not None
        os.kill(agent.proc.pid, signal.SIGSTOP)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for i in range(BURST):
                    s.sendto(query(NAME, "A", qid=i), ("127.0.0.1", port))
        finally:
            os.kill(agent.proc.pid, signal.SIGCONT)
        (after,) = stats(agent)["udp"]
        assert 0 < after["receive_drops"] < BURST  # some fit in the buffer and were answered
        assert agent.metrics_port is not None
        metrics = scrape("127.0.0.1", agent.metrics_port)
        listener = f"127.0.0.1:{port}"
        assert value(metrics, "nodecache_udp_receive_drops_total", listener=listener) >= after["receive_drops"]
        assert value(metrics, "nodecache_udp_buffer_bytes", listener=listener, direction="receive") == 4096
        assert f"udp         {listener} batched, buffers 4.0 KiB in" in stats(agent, text=True)
        assert raw_udp("127.0.0.1", port, query(NAME, "A", qid=10000)) is not None
