"""The agent's interface, made and kept with pyroute2 inside a namespace of the test's own (root only)."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from nodecache.config import Config, ConfigError, check_interface_name
from nodecache.errors import NetworkSetupError
from nodecache.listeners import make_socket
from nodecache.netif import (
    FALLBACK_KIND,
    OWN_KINDS,
    InterfaceKeeper,
    ensure_interface,
    missing_addresses,
    remove_interface,
    run_netlink,
)
from tests.support import netns as ns

NAME = "nodelocaldns"
LOCAL_IPS = ["169.254.20.10", "192.0.2.53", "2001:db8::a"]
HEAL_WITHIN = 1.0  # seconds, as the issue asks


def test_interface_names_the_kernel_would_refuse_are_rejected_up_front() -> None:
    assert check_interface_name("nodelocaldns") == "nodelocaldns"
    for bad in ["", "a" * 16, "no/slash", "no:colon", "no space", ".."]:
        with pytest.raises(ConfigError, match="not usable"):
            check_interface_name(bad)
    with pytest.raises(ConfigError, match="not usable"):
        Config(listen=("192.0.2.53",), port=53, zones=(), interface_name="much-too-long-name")


@pytest.mark.parametrize("host", ["192.0.2.99", "2001:db8::99"])
@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM], ids=["udp", "tcp"])
def test_listeners_bind_before_the_address_exists(host: str, kind: socket.SocketKind) -> None:
    """Serve first, then add the address: binding an address no interface has works (FREEBIND)."""
    with make_socket(host, 0, kind) as sock:
        assert sock.getsockname()[0] == host


def test_loopback_addresses_are_never_put_on_the_interface() -> None:
    keeper = InterfaceKeeper(NAME, ["127.0.0.1", "::1", "192.0.2.53"], manage=True, sync_interval=60, errors={})
    assert keeper.addresses == ("192.0.2.53",)


# -------------------------------------------------------------------- in a namespace


@pytest.fixture
def node() -> Iterator[str]:
    yield from ns.namespace_or_skip("nc-if")


def _link(node: str, name: str = NAME) -> dict[str, Any] | None:
    done = ns.ip("-n", node, "-j", "-d", "addr", "show", "dev", name, check=False)
    return json.loads(done.stdout)[0] if done.returncode == 0 and done.stdout.strip() else None


def _addresses(node: str) -> dict[str, dict[str, Any]]:
    link = _link(node)
    return {a["local"]: a for a in link["addr_info"]} if link else {}


def _wait(predicate: Any, timeout: float) -> float:
    """Seconds until predicate() held; fails after `timeout`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not healed within {timeout} s")
        time.sleep(0.005)
    return time.monotonic() - start


def _errors() -> dict[str, int]:
    return {"interface_add": 0, "interface_check": 0}


@pytest.mark.root
def test_the_interface_is_created_up_with_host_addresses(node: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "nodecache.netif")
    changes = run_netlink(lambda ipr: ensure_interface(ipr, NAME, LOCAL_IPS), netns=node)
    link = _link(node)
    assert link is not None and "UP" in link["flags"]
    kind = link["linkinfo"]["info_kind"]
    assert kind in OWN_KINDS
    assert changes[0] == f"created interface {NAME} ({kind})" and changes[1] == f"set interface {NAME} up"
    addrs = _addresses(node)
    assert addrs["169.254.20.10"]["prefixlen"] == 32 and addrs["192.0.2.53"]["prefixlen"] == 32
    assert addrs["2001:db8::a"]["prefixlen"] == 128 and addrs["2001:db8::a"].get("nodad") is True
    assert "tentative" not in addrs["2001:db8::a"]  # usable at once
    if kind == FALLBACK_KIND:  # this machine's kernel has no dummy driver: the log must say so
        assert any("no dummy interface driver" in r.message and "bridge" in r.message for r in caplog.records)
    assert run_netlink(lambda ipr: ensure_interface(ipr, NAME, LOCAL_IPS), netns=node) == []
    assert run_netlink(lambda ipr: missing_addresses(ipr, [*LOCAL_IPS, "192.0.2.99"]), netns=node) == ["192.0.2.99"]
    assert run_netlink(lambda ipr: remove_interface(ipr, NAME), netns=node) is True
    assert _link(node) is None
    assert run_netlink(lambda ipr: remove_interface(ipr, NAME), netns=node) is False


@pytest.mark.root
def test_a_foreign_interface_of_that_name_is_never_touched(node: str) -> None:
    ns.ip("-n", node, "link", "add", NAME, "type", "veth", "peer", "name", "other")
    with pytest.raises(NetworkSetupError, match="is a veth, not a dummy or bridge of ours"):
        run_netlink(lambda ipr: ensure_interface(ipr, NAME, LOCAL_IPS), netns=node)
    with pytest.raises(NetworkSetupError, match="not ours"):
        run_netlink(lambda ipr: remove_interface(ipr, NAME), netns=node)
    errors = _errors()
    keeper = InterfaceKeeper(NAME, LOCAL_IPS, manage=True, sync_interval=60, errors=errors, netns=node)
    keeper.start()
    keeper.stop(remove=True)
    assert errors["interface_add"] == 1
    assert _link(node) is not None and _addresses(node) == {}


@pytest.fixture
def keeper(node: str) -> Iterator[InterfaceKeeper]:
    k = InterfaceKeeper(NAME, LOCAL_IPS, manage=True, sync_interval=60, errors=_errors(), netns=node)
    k.start()
    try:
        yield k
    finally:
        k.stop(remove=True)


@pytest.mark.root
def test_a_deleted_address_is_put_back_within_a_second(node: str, keeper: InterfaceKeeper) -> None:
    assert set(_addresses(node)) >= set(LOCAL_IPS)
    for ip, prefix in (("169.254.20.10", 32), ("2001:db8::a", 128)):
        ns.ip("-n", node, "addr", "del", f"{ip}/{prefix}", "dev", NAME)
        took = _wait(lambda ip=ip: ip in _addresses(node), HEAL_WITHIN)
        print(f"address {ip} healed in {took * 1000:.1f} ms")
    assert _addresses(node)["2001:db8::a"].get("nodad") is True
    assert keeper.healed >= 2 and keeper.errors == _errors()


@pytest.mark.root
def test_a_deleted_or_downed_link_is_put_back_within_a_second(node: str, keeper: InterfaceKeeper) -> None:
    ns.ip("-n", node, "link", "del", NAME)
    took = _wait(lambda: set(_addresses(node)) >= set(LOCAL_IPS) and "UP" in (_link(node) or {}).get("flags", []), HEAL_WITHIN)
    print(f"link healed in {took * 1000:.1f} ms")
    ns.ip("-n", node, "link", "set", NAME, "down")
    _wait(lambda: "UP" in (_link(node) or {}).get("flags", []), HEAL_WITHIN)


@pytest.mark.root
def test_without_events_the_periodic_check_still_heals(node: str) -> None:
    k = InterfaceKeeper(NAME, LOCAL_IPS, manage=True, sync_interval=0.2, errors=_errors(), netns=node, watch=False)
    k.start()
    try:
        ns.ip("-n", node, "addr", "del", "192.0.2.53/32", "dev", NAME)
        _wait(lambda: "192.0.2.53" in _addresses(node), 2.0)
        assert k.checks >= 2
    finally:
        k.stop(remove=False)
    assert _link(node) is not None  # stop without remove leaves it (--skip-teardown)


@pytest.mark.root
def test_check_only_mode_says_which_address_is_missing_and_creates_nothing(
    node: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "nodecache.netif")
    ns.ip("-n", node, "addr", "add", "169.254.20.10/32", "dev", "lo")
    errors = _errors()
    k = InterfaceKeeper(NAME, ["169.254.20.10", "192.0.2.53"], manage=False, sync_interval=60, errors=errors, netns=node)
    k.start()
    try:
        warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "local IP 192.0.2.53 is on no interface" in warnings[0]
        assert "--no-setup-interface" in warnings[0]
        assert errors["interface_check"] == 1 and errors["interface_add"] == 0
        ns.ip("-n", node, "addr", "add", "192.0.2.53/32", "dev", "lo")  # someone else adds it
        _wait(lambda: any("192.0.2.53 is configured again" in r.message for r in caplog.records), HEAL_WITHIN)
    finally:
        assert k.stop(remove=True) == []  # not ours to remove
    assert _link(node) is None


@pytest.mark.root
def test_stop_with_remove_deletes_the_interface(node: str) -> None:
    k = InterfaceKeeper(NAME, LOCAL_IPS, manage=True, sync_interval=60, errors=_errors(), netns=node)
    k.start()
    assert k.stop(remove=True) == [f"removed interface {NAME}"]
    assert _link(node) is None
    assert subprocess.run(["ip", "-n", node, "link", "show", NAME], capture_output=True).returncode != 0
