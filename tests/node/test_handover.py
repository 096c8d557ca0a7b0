"""The pieces of a rollout that need no root: the node lock, and an agent handing its UDP port over.

The node lock (node.NodeLock) tells a leaving agent whether another still serves; the kernel
drops a dead holder's share. At shutdown a UDP socket sharing its port with another agent's
(SO_REUSEPORT) stops getting new datagrams, answers what it holds, then closes: nothing sent
to the port goes unanswered. tests/node/test_rollout.py does the whole thing on a node.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from nodecache.node import NodeLock, NodeSetup
from nodecache.server import Server
from tests.conftest import make_config
from tests.dnsmsg import query
from tests.support.fakeupstream import Behaviour, FakeUpstream

HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_SH)
print("held", flush=True)
time.sleep(60)
"""


def test_the_last_agent_is_the_one_whose_exclusive_try_succeeds(tmp_path: Path) -> None:
    path = str(tmp_path / "run" / "node.lock")  # the directory is made if missing
    old, new = NodeLock(path), NodeLock(path)
    try:
        assert old.acquire_shared(wait=0) and new.acquire_shared(wait=0)
        assert not old.last_one()  # the new agent still holds its share: leave the node to it
        old.release()
        assert new.last_one()  # alone now: it tears down, holding the lock exclusively
        starting = NodeLock(path)
        began = time.monotonic()
        assert not starting.acquire_shared(wait=0.2)  # a starting agent waits while a teardown runs
        assert time.monotonic() - began >= 0.2
        new.release()
        assert starting.acquire_shared(wait=0)
        starting.release()
    finally:
        old.release()
        new.release()


def test_a_killed_agent_stops_counting_at_once(tmp_path: Path) -> None:
    """SIGKILL (or the OOM killer) leaves no stale mark: the kernel drops the lock with the process."""
    path = str(tmp_path / "node.lock")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, path], stdout=subprocess.PIPE, text=True)
    survivor = NodeLock(path)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert survivor.acquire_shared(wait=0)
        assert not survivor.last_one()
        survivor.release()
        holder.send_signal(signal.SIGKILL)
        holder.wait(5)
        assert survivor.acquire_shared(wait=0) and survivor.last_one()
    finally:
        survivor.release()
        if holder.poll() is None:
            holder.kill()
            holder.wait(5)


def test_an_unusable_lock_path_is_counted_and_not_fatal(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    config = replace(make_config(["127.0.0.1:53"]), listen=("192.0.2.53",), setup_interface=True,
                     node_lock=str(blocker / "node.lock"))  # fmt: skip
    setup = NodeSetup(config)
    assert setup.lock is not None
    asyncio.run(setup._take_lock(setup.lock))
    assert setup.setup_errors["node_lock"] == 1
    assert setup.lock.last_one()  # without the lock it tears down alone, as before the lock existed


def test_no_lock_when_the_agent_manages_nothing_on_the_node(tmp_path: Path) -> None:
    config = replace(make_config(["127.0.0.1:53"]), node_lock=str(tmp_path / "node.lock"))
    assert NodeSetup(config).lock is None


async def test_a_leaving_agent_answers_what_it_holds_and_its_port_partner_takes_the_rest() -> None:
    """Queries queued in the old agent's socket and a miss it is resolving are answered, not dropped."""
    with FakeUpstream() as upstream:
        slow = "slow.wild.cluster.local"
        upstream.set_behaviour(slow, Behaviour.delay(0.5))
        old = Server(make_config([f"127.0.0.1:{upstream.port}"]))
        await old.startup()
        port = old.bound[0][1]
        new = Server(replace(make_config([f"127.0.0.1:{upstream.port}"]), port=port))
        await new.startup()
        clients = []
        try:
            resolving = _send(port, slow, 0)  # to whichever agent; if the old one, it is still resolving at stop
            clients.append(resolving)
            await asyncio.to_thread(upstream.wait_for_count, 1, slow)
            # Sent without letting either agent read: about half wait in the old agent's socket when it stops.
            clients += [_send(port, f"q{i}.wild.cluster.local", i + 1) for i in range(40)]
            old.request_stop()
            await old.shutdown()
            late = [_send(port, f"late{i}.wild.cluster.local", 100 + i) for i in range(20)]  # only the new one is left
            clients += late
            answered = await asyncio.gather(*(asyncio.to_thread(_answer, c) for c in clients))
            assert answered.count(True) == len(clients), f"{answered.count(False)} of {len(clients)} got no answer"
        finally:
            for c in clients:
                c.close()
            new.request_stop()
            await new.shutdown()


def _send(port: int, name: str, qid: int) -> socket.socket:
    """A client socket of its own (its own source port, so its own reuseport hash) with one query sent."""
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.sendto(query(name, qid=qid), ("127.0.0.1", port))
    return client


def _answer(client: socket.socket, timeout: float = 3.0) -> bool:
    client.settimeout(timeout)
    try:
        return len(client.recv(4096)) > 12
    except TimeoutError:
        return False
