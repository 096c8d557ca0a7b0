"""A hung cluster DNS: NSD stopped with SIGSTOP (alive, connections open, silent), asked with dig.

The agent runs as an operator starts it, with the default answer deadline
(1.8 s), serve-stale (on) and the cluster zone over TCP. glibc gives up after
5 s, so every answer must come well before that.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import pytest

from nodecache.config import DEFAULT_ANSWER_DEADLINE, STALE_REPLY_TTL
from tests.conftest import AgentProcess
from tests.support.clients import DigResult, dig
from tests.support.net import free_port
from tests.support.nsd import NSD
from tests.support.samplezone import zone_texts

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("nsd") is None, reason="NSD is not installed (Debian package nsd; `make test` installs it)"),
    pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed (Debian package bind9-dnsutils)"),
]

HOST = "127.0.0.1"
SVC = "kubernetes.default.svc.cluster.local"
SLACK = 0.5  # scheduling noise on a shared machine, on top of the deadline
FAST = 0.3  # "at once": well under any client's first retry (glibc: 5 s / attempts)


@pytest.fixture
def nsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NSD]:
    with NSD(zone_texts("cluster.local"), tmp_path_factory.mktemp("nsd")) as server:
        yield server


@pytest.fixture
def agent(nsd: NSD, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    conf = tmp_path_factory.mktemp("node") / "resolv.conf"
    conf.write_text("# test node resolver: nothing listens here\nnameserver 127.0.0.254\n")
    port = free_port()
    args = ["--listen", HOST, "--port", str(port), "--upstream", f"{nsd.address}:{nsd.port}",
            "--node-resolv-conf", str(conf), "--cluster-success-ttl", "1", "--cluster-denial-ttl", "1"]  # fmt: skip
    with AgentProcess(args) as proc:
        proc.port = port  # type: ignore[attr-defined]
        yield proc


def ask(agent: AgentProcess, name: str, qtype: str = "A") -> tuple[DigResult, float]:
    started = time.monotonic()
    result = dig(HOST, agent.port, name, qtype, timeout=6)  # type: ignore[attr-defined]
    return result, time.monotonic() - started


def test_every_query_is_answered_before_the_client_gives_up(agent: AgentProcess, nsd: NSD) -> None:
    warm, _ = ask(agent, SVC)
    assert warm.rcode == "NOERROR" and warm.answer
    time.sleep(1.2)  # the answer expired (TTL capped at 1 s)
    took: list[float] = []
    with nsd.hung():
        stale, t = ask(agent, SVC)
        took.append(t)
        uncached, t = ask(agent, "web.default.svc.cluster.local")
        took.append(t)
        # The tries of those queries time out in the background; then the upstream is marked down
        # and every later miss is answered at once, from the cache or with SERVFAIL.
        fast = None
        for i in range(40):
            result, t = ask(agent, f"svc-{i}.default.svc.cluster.local")
            took.append(t)
            assert result.rcode == "SERVFAIL"
            if t < FAST:
                fast = result
                break
        assert fast is not None, f"misses never failed fast while the upstream hung: {took}"
        stale_again, t = ask(agent, SVC)
        took.append(t)
    assert stale.rcode == "NOERROR" and [r.ttl for r in stale.answer] == [STALE_REPLY_TTL]
    assert [r.rdata for r in stale.answer] == [r.rdata for r in warm.answer]
    assert uncached.rcode == "SERVFAIL"
    assert stale_again.rcode == "NOERROR" and t < FAST
    assert max(took) < DEFAULT_ANSWER_DEADLINE + SLACK, f"slowest answer {max(took):.2f}s"
    print(f"slowest answer while the upstream hung: {max(took):.3f}s; answers: {len(took)}")

    # NSD continues: the background probe marks it up again and fresh answers return.
    for _ in range(40):
        back, _t = ask(agent, "web.default.svc.cluster.local")
        if back.rcode == "NOERROR":
            break
        time.sleep(0.25)
    assert back.rcode == "NOERROR" and back.answer
