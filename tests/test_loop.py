"""Loop detection (Corefile `loop`): an upstream that forwards back to the agent is found and dropped.

The loop is real: the agent's `.` zone forwards to a small relay on loopback that
sends every query back to the agent, as a node resolv.conf naming the agent would.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from nodecache.config import Address, ForwardPolicy
from nodecache.server import Server
from tests.conftest import AgentProcess, make_config, with_zone
from tests.dnsmsg import query
from tests.support.clients import raw_udp
from tests.support.fakeupstream import FakeUpstream
from tests.support.net import free_port

RELAY_WAIT = 1.0  # how long the relay waits for the agent's answer to one query


class Relay(threading.Thread):
    """A forwarder on 127.0.0.1 that sends each query to `target` and the answer back; stops on close()."""

    def __init__(self, target_port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.target_port = target_port
        self.relayed = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                data, client = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            self.relayed += 1
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
                out.settimeout(RELAY_WAIT)
                out.sendto(data, ("127.0.0.1", self.target_port))
                try:
                    self.sock.sendto(out.recv(4096), client)
                except TimeoutError:
                    pass

    def close(self) -> None:
        self._done.set()
        self.join(5)
        self.sock.close()


def wait_for(agent: AgentProcess, pattern: str, timeout: float = 10.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, agent.log)
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not logged within {timeout}s:\n{agent.log}")


def test_a_forwarding_loop_is_detected_and_that_upstream_dropped(tmp_path: Path, node_resolv_conf: Path) -> None:
    port = free_port()
    relay = Relay(port)
    relay.start()
    try:
        with FakeUpstream() as up:
            corefile = tmp_path / "Corefile"
            corefile.write_text(
                f"cluster.local:{port} {{\n    loop\n    cache 30\n    bind 127.0.0.1\n"
                f"    forward . 127.0.0.1:{up.port}\n}}\n"
                f".:{port} {{\n    loop\n    cache 30 example.org\n    bind 127.0.0.1\n"
                f"    forward . 127.0.0.1:{relay.port}\n}}\n"
            )
            args = ["--config", str(corefile), "--node-resolv-conf", str(node_resolv_conf)]
            with AgentProcess(args) as agent:
                found = wait_for(agent, r"zone \.: upstream (\S+) sends queries back to this agent")
                assert found.group(1) == f"127.0.0.1:{relay.port}"
                # The cluster zone's upstream does not loop: it is kept and answers.
                reply = raw_udp("127.0.0.1", port, query("kubernetes.default.svc.cluster.local", qid=7))
                assert reply is not None and reply[3] & 0x0F == 0 and reply[7] == 1  # NOERROR, one answer
                assert "zone cluster.local.: upstream" not in agent.log
                # The looping zone no longer forwards: SERVFAIL at once, and the relay sees nothing more.
                before = relay.relayed
                started = time.monotonic()
                for qid, name in enumerate(("example.net", "www.example.org")):  # `.`, and its cached sub-zone
                    reply = raw_udp("127.0.0.1", port, query(name, qid=qid), timeout=3.0)
                    assert reply is not None and reply[3] & 0x0F == 2  # SERVFAIL
                assert time.monotonic() - started < 1.0
                assert relay.relayed == before
                # The operator sees why: the excluded upstream's state is "loop", not "up".
                shown = subprocess.run([sys.executable, "-m", "nodecache", "stats", "--json", "--control-socket",
                                        str(agent.control_socket)], capture_output=True, text=True, timeout=20)
                states = {u["address"]: u["state"] for u in json.loads(shown.stdout)["upstreams"]}
                assert states[f"127.0.0.1:{relay.port}"] == "loop"
                assert states[f"127.0.0.1:{up.port}"] == "up"
            assert agent.log.count("sends queries back to this agent") == 1
    finally:
        relay.close()


def test_without_loop_nothing_is_probed(tmp_path: Path, node_resolv_conf: Path) -> None:
    port = free_port()
    with FakeUpstream() as up:
        corefile = tmp_path / "Corefile"
        corefile.write_text(f".:{port} {{\n    bind 127.0.0.1\n    forward . 127.0.0.1:{up.port}\n}}\n")
        with AgentProcess(["--config", str(corefile), "--node-resolv-conf", str(node_resolv_conf)]):
            time.sleep(0.3)
        assert not any("nodecache-loop-check" in r.qname for r in up.log)


async def test_a_zone_added_by_a_reload_is_probed(upstream: FakeUpstream) -> None:
    port = free_port()
    first = replace(make_config([f"127.0.0.1:{upstream.port}"]), port=port)
    relay = Relay(port)
    relay.start()
    try:
        looping = with_zone(first, ".", forward=ForwardPolicy((Address("127.0.0.1", relay.port),), try_timeout=0.5,
                                                              timeout=1.5))  # fmt: skip
        second = replace(looping, loop_zones=(".",))
        server = Server(first, lambda: second)
        await server.startup()
        try:
            assert not server.resolver.loops  # `first` asks for no loop check
            assert await server.reload()
            for _ in range(60):  # bounded: the probe comes back within a round trip through the relay
                if server.resolver.loops:
                    break
                await asyncio.sleep(0.05)
            assert server.resolver.loops == [f". 127.0.0.1:{relay.port}"]
            assert server.resolver.zones[0].forwarder.active  # the cluster zone was not probed, nor excluded
        finally:
            server.request_stop()
            await server.shutdown()
    finally:
        relay.close()
