"""NodeSetup, the piece of the agent that orders and keeps the interface and the rules.

The first tests need nothing (a test Config never touches the host); the others run it
in-process against a namespace of their own (root only).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from nodecache.config import Config
from nodecache.node import SETUP_ERROR_TYPES, NodeSetup, health_port
from nodecache.server import Server
from tests.conftest import make_config
from tests.support import netns as ns


def test_setup_errors_start_at_zero_for_every_type() -> None:
    setup = NodeSetup(make_config(["127.0.0.1:53"]))
    assert setup.setup_errors == dict.fromkeys(
        ("interface_add", "interface_check", "iptables", "iptables_lock", "configmap", "node_lock"), 0
    )
    assert tuple(setup.setup_errors) == SETUP_ERROR_TYPES


def test_health_port_follows_the_health_address_else_8080() -> None:
    base = make_config(["127.0.0.1:53"])
    assert health_port(base) == 8080
    assert health_port(replace(base, health_address="169.254.20.10:8081")) == 8081
    assert health_port(replace(base, health_address="[2001:db8::a]:9000")) == 9000
    assert health_port(replace(base, health_address="nonsense")) == 8080


async def test_a_test_config_touches_nothing_on_the_host() -> None:
    """Defaults off and loopback addresses: no interface keeper, no firewall, no thread."""
    server = Server(make_config(["127.0.0.1:53"]))
    await server.startup()
    try:
        assert server.node is not None and server.node.keeper is None and server.node.firewall is None
    finally:
        server.request_stop()
        await server.shutdown()


# -------------------------------------------------------------------- in a namespace


@pytest.fixture
def node() -> Iterator[str]:
    yield from ns.namespace_or_skip("nc-setup")


def _config(**kw: object) -> Config:
    base = make_config(["127.0.0.1:53"])
    return replace(base, listen=("192.0.2.53",), setup_interface=True, setup_iptables=True, **kw)  # type: ignore[arg-type]


@pytest.mark.root
async def test_rules_deleted_by_someone_else_come_back_through_the_heartbeat(node: str) -> None:
    """E.g. the old agent of a rolling update tearing down: the new one must not wait a whole sync interval."""
    sleeper = ns.pid_in(node)
    prefix = ["ip", "netns", "exec", node]
    setup = NodeSetup(_config(sync_interval=3600), netns=node, command_prefix=prefix,
                      recent_dir=f"/proc/{sleeper.pid}/net/xt_recent")  # fmt: skip
    try:
        await setup.start()
        assert setup.firewall is not None and setup.firewall.count(4) == 12
        await asyncio.to_thread(setup.firewall.remove)
        for _ in range(60):  # the heartbeat notices within 1 s, then one reconcile
            await asyncio.sleep(0.1)
            if await asyncio.to_thread(setup.firewall.count, 4) == 12:
                break
        assert setup.firewall.count(4) == 12
        assert setup.setup_errors == dict.fromkeys(SETUP_ERROR_TYPES, 0)
    finally:
        await setup.stop(teardown=True)
        sleeper.kill()
        sleeper.wait()
    assert ns.ip("-n", node, "link", "show", "nodelocaldns", check=False).returncode != 0


@pytest.mark.root
async def test_iptables_failures_are_counted_and_never_fatal(node: str, tmp_path: Path) -> None:
    setup = NodeSetup(_config(), netns=node, command_prefix=["ip", "netns", "exec", "nc-no-such-namespace"],
                      recent_dir=str(tmp_path))  # fmt: skip
    try:
        await setup.start()  # the interface still comes up; the rules fail and are counted
        await asyncio.sleep(1.5)  # heartbeats fail too, but do not turn into an iptables retry storm
        assert setup.setup_errors["iptables"] == 1 and setup.setup_errors["interface_add"] == 0
        assert "192.0.2.53" in ns.ip("-n", node, "addr", "show", "dev", "nodelocaldns").stdout
    finally:
        await setup.stop(teardown=True)


def test_readiness_names_a_local_ip_that_is_on_no_interface() -> None:
    """/ready's node check asks the kernel: an address nobody configured fails it, by name."""
    from nodecache.config import Config
    from nodecache.node import NodeSetup

    absent = NodeSetup(Config(listen=("127.0.0.1", "203.0.113.254"), port=0, zones=()))
    assert absent.problem() == "local IP 203.0.113.254 is on no interface of this node"
    loopback_only = NodeSetup(Config(listen=("127.0.0.1",), port=0, zones=()))
    assert loopback_only.problem() is None
