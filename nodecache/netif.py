"""The agent's own interface and its local IPs, kept in place with pyroute2.

The link (`nodelocaldns`) is a dummy device, set UP, holding each local IP as
a host address (/32, /128); IPv6 ones are added with IFA_F_NODAD so they are
usable at once. Kernels without the dummy driver get an empty bridge instead,
which holds local addresses just the same. When someone deletes the link or
an address, a netlink event wakes the keeper and it puts them back (in
milliseconds); a full check also runs every sync interval, in case an event
was lost.

Why a thread: pyroute2's asyncio sockets cannot run on uvloop (it will not
open a netlink socket as a UDP handle), so the keeper runs on a small
stock-asyncio loop of its own; the agent's loop only starts and stops it.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, TypeVar

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from nodecache.config import check_interface_name
from nodecache.errors import NetworkSetupError

log = logging.getLogger(__name__)
T = TypeVar("T")

LINK_KIND = "dummy"
FALLBACK_KIND = "bridge"  # an empty bridge holds local addresses like a dummy does
OWN_KINDS = (LINK_KIND, FALLBACK_KIND)
IFF_UP = 0x1
EVENT_GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
START_TIMEOUT = 10.0  # seconds the agent waits for the first check before going on
STOP_TIMEOUT = 10.0


def host_prefix(ip: str) -> int:
    return 32 if ipaddress.ip_address(ip).version == 4 else 128


def _canonical(ip: str) -> str:
    return str(ipaddress.ip_address(ip))


def _setup_error(what: str, exc: NetlinkError) -> NetworkSetupError:
    if exc.code == errno.EPERM:
        hint = "run the agent as root (CAP_NET_ADMIN) or pass --no-setup-interface"
    else:
        hint = "fix that, or pass --no-setup-interface and have something else add the addresses"
    return NetworkSetupError(f"cannot {what}: {exc.args[-1] if exc.args else exc} (errno {exc.code}); {hint}")


async def find_link(ipr: AsyncIPRoute, name: str) -> Any | None:
    """The link called `name`, or None."""
    try:
        links = await _collect(await ipr.link("get", ifname=name))
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise _setup_error(f"look up interface {name}", exc) from None
    return links[0] if links else None


async def _collect(result: Any) -> list[Any]:
    """pyroute2 answers a "get" with a list and a "dump" with an async iterator."""
    if hasattr(result, "__aiter__"):
        return [msg async for msg in result]
    return list(result)


def link_kind(link: Any) -> str | None:
    kind = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    return str(kind) if kind is not None else None


async def ensure_interface(ipr: AsyncIPRoute, name: str, addresses: Iterable[str]) -> list[str]:
    """Create the link if missing, set it UP, add missing addresses; one line per change."""
    changes: list[str] = []
    link = await find_link(ipr, name)
    if link is None:
        kind = await _create_link(ipr, name)
        if kind is not None:
            changes.append(f"created interface {name} ({kind})")
        link = await find_link(ipr, name)
        if link is None:
            raise NetworkSetupError(f"interface {name} vanished right after it was created; is another program removing it?")
    kind = link_kind(link)
    if kind not in OWN_KINDS:
        raise NetworkSetupError(
            f"interface {name} exists and is a {kind or 'device of unknown kind'}, not a dummy or bridge of ours; "
            "pick another --interface-name or remove that interface"
        )
    index = link["index"]
    if not link["flags"] & IFF_UP:
        try:
            await ipr.link("set", index=index, state="up")
        except NetlinkError as exc:
            raise _setup_error(f"set interface {name} up", exc) from None
        changes.append(f"set interface {name} up")
    present = {_canonical(m.get("address")) for m in await _collect(await ipr.addr("dump", index=index)) if m.get("address")}
    for ip in addresses:
        ip = _canonical(ip)
        if ip in present:
            continue
        spec: dict[str, Any] = {"index": index, "address": ip, "prefixlen": host_prefix(ip)}
        if ":" in ip:
            spec["flags"] = IFA_F_NODAD  # usable at once: no duplicate address detection delay
        try:
            await ipr.addr("add", **spec)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise _setup_error(f"add {ip}/{host_prefix(ip)} to {name}", exc) from None
            continue
        changes.append(f"added {ip}/{host_prefix(ip)} to {name}")
    return changes


async def _create_link(ipr: AsyncIPRoute, name: str) -> str | None:
    """Add the link; its kind, or None when another program created it first."""
    try:
        await ipr.link("add", ifname=name, kind=LINK_KIND)
        return LINK_KIND
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            return None
        if exc.code != errno.EOPNOTSUPP:
            raise _setup_error(f"create interface {name} (kind {LINK_KIND})", exc) from None
    log.warning(
        "this kernel has no %s interface driver; creating %s as an empty %s instead (it holds the local IPs the same way)",
        LINK_KIND, name, FALLBACK_KIND,
    )  # fmt: skip
    try:
        await ipr.link("add", ifname=name, kind=FALLBACK_KIND)
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            return None
        raise _setup_error(f"create interface {name} (kind {FALLBACK_KIND}, after {LINK_KIND} was unsupported)", exc) from None
    return FALLBACK_KIND


async def missing_addresses(ipr: AsyncIPRoute, addresses: Iterable[str]) -> list[str]:
    """Which of `addresses` no interface of this node has."""
    present = {_canonical(m.get("address")) for m in await _collect(await ipr.addr("dump")) if m.get("address")}
    return [ip for ip in (_canonical(a) for a in addresses) if ip not in present]


async def remove_interface(ipr: AsyncIPRoute, name: str) -> bool:
    """Delete the link (and so its addresses) if it is ours; False when there was none."""
    link = await find_link(ipr, name)
    if link is None:
        return False
    kind = link_kind(link)
    if kind not in OWN_KINDS:
        raise NetworkSetupError(f"interface {name} is a {kind or 'device of unknown kind'}, not ours; leaving it in place")
    try:
        await ipr.link("del", index=link["index"])
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return False
        raise _setup_error(f"delete interface {name}", exc) from None
    return True


def run_netlink(coro_fn: Callable[[AsyncIPRoute], Awaitable[T]], netns: str | None = None) -> T:
    """Run `coro_fn(ipr)` to completion on a fresh stock asyncio loop (for the CLI and tests)."""

    async def main() -> T:
        async with AsyncIPRoute(netns=netns) as ipr:
            return await coro_fn(ipr)

    return asyncio.run(main())


class InterfaceKeeper:
    """Keeps the interface and addresses in place, or (manage=False) only checks them.

    `errors` is the setup-error count by type; the keeper bumps
    "interface_add" and "interface_check". `netns` (tests) works in a named
    network namespace instead of the agent's own.
    """

    def __init__(
        self,
        name: str,
        addresses: Iterable[str],
        manage: bool,
        sync_interval: float,
        errors: MutableMapping[str, int],
        netns: str | None = None,
        watch: bool = True,
    ) -> None:
        self.name = check_interface_name(name)
        self.addresses = tuple(dict.fromkeys(_canonical(a) for a in addresses if not ipaddress.ip_address(a).is_loopback))
        self.manage = manage
        self.sync_interval = sync_interval
        self.errors = errors
        self.netns = netns
        self.watch = watch  # False: periodic checks only (tests of the fallback path)
        self.checks = 0  # full checks run so far (tests read it)
        self.healed = 0  # checks that had to put something back
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._remove_on_stop = False
        self._first = threading.Event()
        self._removed: list[str] = []
        self._missing: list[str] = []

    # -- called from the agent's thread

    def start(self) -> None:
        """Start the keeper thread and wait (bounded) for its first check; blocking."""
        self._thread = threading.Thread(target=self._thread_main, name=f"netif-{self.name}", daemon=True)
        self._thread.start()
        if not self._first.wait(START_TIMEOUT):
            log.warning("the first check of interface %s takes over %g s; going on without waiting", self.name, START_TIMEOUT)

    def stop(self, remove: bool) -> list[str]:
        """Stop the thread; with `remove`, delete the interface first. Blocking; returns what was removed."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return []
        self._remove_on_stop = remove
        try:
            loop.call_soon_threadsafe(self._request_stop)
        except RuntimeError:
            pass  # the loop already ended
        thread.join(STOP_TIMEOUT)
        if thread.is_alive():
            log.warning("interface keeper did not stop within %g s", STOP_TIMEOUT)
        return self._removed

    def wake(self) -> None:
        """Ask for a full check now (thread-safe)."""
        if self._loop is not None and self._wake is not None:
            try:
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:
                pass

    # -- the keeper thread

    def _request_stop(self) -> None:
        self._stopping = True
        if self._wake is not None:
            self._wake.set()

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:  # never let the thread die silently
            log.error("interface keeper stopped: %s", exc)
        finally:
            self._first.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        async with AsyncIPRoute(netns=self.netns) as ipr:
            watcher = asyncio.create_task(self._watch() if self.watch else asyncio.sleep(0))
            try:
                await self._check(ipr, first=True)
                self._first.set()
                while not self._stopping:
                    try:
                        await asyncio.wait_for(self._wake.wait(), self.sync_interval)
                    except TimeoutError:
                        pass
                    self._wake.clear()
                    if not self._stopping:
                        await self._check(ipr, first=False)
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
                if self._remove_on_stop and self.manage:
                    await self._remove(ipr)

    async def _check(self, ipr: AsyncIPRoute, first: bool) -> None:
        self.checks += 1
        if not self.manage:
            await self._check_only(ipr)
            return
        try:
            changes = await ensure_interface(ipr, self.name, self.addresses)
        except NetworkSetupError as exc:
            self.errors["interface_add"] += 1
            log.error("%s", exc)
            return
        except Exception as exc:  # netlink itself failing: count, say so, retry at the next event or sync
            self.errors["interface_check"] += 1
            log.error("cannot check interface %s: %s; retrying within %g s", self.name, exc, self.sync_interval)
            return
        if changes and not first:
            self.healed += 1
        for change in changes:
            log.info("%s%s", "" if first else "put back what was removed: ", change)

    async def _check_only(self, ipr: AsyncIPRoute) -> None:
        try:
            missing = await missing_addresses(ipr, self.addresses)
        except Exception as exc:
            self.errors["interface_check"] += 1
            log.error("cannot list this node's addresses: %s", exc)
            return
        if missing:
            self.errors["interface_check"] += 1
        if missing != self._missing:
            for ip in missing:
                log.warning(
                    "local IP %s is on no interface of this node, so nothing reaches the cache there; with "
                    "--no-setup-interface something else must add it (or drop --no-setup-interface)", ip,
                )  # fmt: skip
            for ip in set(self._missing) - set(missing):
                log.info("local IP %s is configured again", ip)
            self._missing = missing

    async def _remove(self, ipr: AsyncIPRoute) -> None:
        try:
            if await remove_interface(ipr, self.name):
                self._removed.append(f"removed interface {self.name}")
        except Exception as exc:
            log.error("%s", exc)

    async def _watch(self) -> None:
        """Wake the keeper on any netlink event about our link or our addresses."""
        assert self._wake is not None
        try:
            monitor = AsyncIPRoute(netns=self.netns)
            await monitor.bind(groups=EVENT_GROUPS)
        except Exception as exc:
            log.warning("cannot watch netlink events (%s); interface checks run every %g s only", exc, self.sync_interval)
            return
        try:
            while True:
                async for msg in monitor.get():
                    if self._concerns(msg):
                        self._wake.set()
        finally:
            monitor.close()

    def _concerns(self, msg: Any) -> bool:
        event = msg.get("event")
        if event in ("RTM_NEWLINK", "RTM_DELLINK"):
            return bool(msg.get("ifname") == self.name)
        if event in ("RTM_NEWADDR", "RTM_DELADDR"):
            address = msg.get("address")
            return address is not None and _canonical(address) in self.addresses
        return False
