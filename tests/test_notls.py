"""OpenSSL stays out of the agent's memory (nodecache/notls.py), and TLS fails with a reason, not silently.

The import checks run in a fresh interpreter: the test process has imported `ssl` already, and
then held_back() rightly changes nothing.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from nodecache import notls
from nodecache.errors import NodecacheError
from tests.conftest import AgentProcess
from tests.dnsmsg import query
from tests.support.clients import raw_udp
from tests.support.fakeupstream import FakeUpstream
from tests.support.http import scrape

OPENSSL_LIBRARIES = ("libssl", "libcrypto")


def fresh(code: str) -> list[str]:
    """The lines `code` prints, run by a new interpreter (with the test's nodecache on its path)."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


def openssl_mapped(pid: int) -> list[str]:
    """The OpenSSL libraries in a process's memory map."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return [lib for lib in OPENSSL_LIBRARIES if lib in maps]


OPENSSL_MAPPED = "import pathlib; maps = pathlib.Path('/proc/self/maps').read_text(); " + " ".join(
    f"print('{lib}' in maps);" for lib in OPENSSL_LIBRARIES
)


def test_the_event_loops_metrics_and_pyroute2_import_without_openssl() -> None:
    """What the agent imports (asyncio, uvloop, prometheus_client, pyroute2) loads no OpenSSL, and works."""
    out = fresh(
        "import sys\n"
        "from nodecache import notls\n"
        "with notls.held_back():\n"
        "    import asyncio, uvloop, prometheus_client, nodecache.netif\n"
        "print('_ssl' in sys.modules, '_hashlib' in sys.modules)\n"
        f"{OPENSSL_MAPPED}\n"
        "loop = uvloop.new_event_loop()\n"
        "print(loop.run_until_complete(asyncio.sleep(0, 'ran')))\n"
        "import hashlib; print(hashlib.sha256(b'').hexdigest()[:8])\n"
    )
    assert out == ["False", "False", "False", "False", "ran", "e3b0c442"]


def test_ssl_is_the_real_one_again_after_the_imports() -> None:
    """held_back() only covers what it wraps: a later `import ssl` gets OpenSSL's ssl."""
    out = fresh(
        "from nodecache import notls\n"
        "with notls.held_back():\n"
        "    import asyncio\n"
        "import ssl\n"
        "print(type(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)).__module__)\n"
    )
    assert out == ["ssl"]


def test_a_name_the_placeholder_lacks_comes_from_the_real_ssl() -> None:
    """A module that reads more of ssl than the placeholder has still gets it (OpenSSL is loaded then)."""
    out = fresh(
        "import sys\n"
        "from nodecache import notls\n"
        "with notls.held_back():\n"
        "    import ssl\n"
        "    print(ssl.OPENSSL_VERSION.split()[0])\n"
        "print(type(sys.modules['ssl']).__name__, '_ssl' in sys.modules)\n"
    )
    assert out == ["OpenSSL", "module", "True"]


@pytest.mark.parametrize("make", [lambda m: m.SSLContext(), lambda m: m.create_default_context()])
def test_making_a_tls_object_says_the_agent_has_no_tls(make: object) -> None:
    with pytest.raises(NodecacheError, match="TLS is not available in the nodecache agent"):
        make(notls.PlaceholderSsl())  # type: ignore[operator]


def test_nothing_is_held_back_once_ssl_is_loaded() -> None:
    """In a process that has ssl (this one), the imports inside get the real module."""
    with notls.held_back():
        import ssl as inside

    assert inside is ssl
    assert sys.modules["ssl"] is ssl


def test_a_scraped_agent_on_uvloop_has_no_openssl_in_memory(
    upstream: FakeUpstream, node_resolv_conf: Path, agent_port: int
) -> None:
    """`nodecache run` answers, is scraped, and has mapped neither libssl nor libcrypto."""
    cluster = f"127.0.0.1:{upstream.port}"
    with AgentProcess(["--listen", "127.0.0.1", "--port", str(agent_port), "--upstream", cluster,
                       "--node-resolv-conf", str(node_resolv_conf)]) as agent:  # fmt: skip
        assert raw_udp("127.0.0.1", agent_port, query("kubernetes.default.svc.cluster.local", qid=7))
        assert agent.metrics_port is not None and agent.proc is not None
        assert "coredns_cache_misses_total" in scrape("127.0.0.1", agent.metrics_port)
        mapped = openssl_mapped(agent.proc.pid)
    assert "event loop: uvloop" in agent.log
    assert mapped == []
