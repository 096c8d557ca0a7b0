"""Node integration: the agent's interface and iptables rules, set up in order and kept in place.

Start (once the listeners serve): the interface and its local IPs first, then
the rules that steer traffic to them; then the work that keeps both: netlink
events for the interface (netif.InterfaceKeeper), a full rule check every
sync interval, and the heartbeat behind the host-network clients' rule.
Stop: rules first, then the interface, so traffic is never steered to an
address that is gone; but only by the last agent of the node (NodeLock): in a
surge rollout the old agent leaves both to the new one that serves with them.
`teardown_leftovers` cleans up after an agent that could not stop that way
(SIGKILL, OOM).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from nodecache import notls
from nodecache.config import DEFAULT_HEALTH_PORT, DNS_PORT, Config, parse_ip
from nodecache.errors import ConfigError, FirewallError, NetworkSetupError

if TYPE_CHECKING:  # pyroute2 takes ~0.1 s to import: only agents with an interface to keep pay for it
    from nodecache.firewall import Firewall  # and iptables code (with shutil, ~1 MiB) only those with rules
    from nodecache.netif import InterfaceKeeper

log = logging.getLogger(__name__)

# Labels of coredns_nodecache_setup_errors_total, as node-local-dns has them; all start at 0.
# "node_lock" (ours): the node lock could not be opened or taken, so rollouts may lose queries (the log says why).
SETUP_ERROR_TYPES = ("interface_add", "interface_check", "iptables", "iptables_lock", "configmap", "node_lock")
RULES_RECHECK_GAP = 2.0  # seconds: a failing heartbeat triggers a rule check at most this often
MAX_LOGGED_CHANGES = 8  # rule changes logged one by one; the rest are summed up (all at debug)
NODE_LOCK_WAIT = 60.0  # seconds a starting agent waits for another agent's teardown (two iptables timeouts)
NODE_LOCK_POLL = 0.02  # seconds between tries meanwhile


def health_port(config: Config) -> int:
    """The health endpoint's port: from --health-address when set, else the reference's 8080."""
    try:
        endpoint = config.health_endpoint
    except ConfigError:  # a Config the loader did not make (its addresses are checked there)
        endpoint = None
    return endpoint.port if endpoint and endpoint.port else DEFAULT_HEALTH_PORT


def address_is_local(ip: str) -> bool:
    """True when `ip` is assigned to an interface here (a non-free bind to it succeeds)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((ip, 0))
        except OSError:
            return False
    return True


class NodeLock:
    """A lock file every agent managing the node's interface and rules holds, shared, while it runs.

    At exit an agent drops its share and asks for the lock exclusively without
    waiting: refused means another agent still holds its share, so it still
    serves with the interface and rules and they must stay; granted means this
    is the last agent, and it tears down holding the lock, so a starting agent
    (which waits for its share) never sets up while a teardown runs.

    Why flock: the kernel drops the lock with the last descriptor, so an agent
    that is SIGKILLed or OOM-killed stops counting as alive at once, with no
    stale mark to clean up, and the file itself never needs removing. Other
    ways were weighed: looking for another process's listening sockets on the
    local IPs (a socket also lingers in a process that is only shutting down,
    and one in a stopped process still looks alive), and an ownership mark on
    the rules or interface (it outlives a killed owner). The lock is only as
    good as its path: every agent of a node must see the same file.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire_shared(self, wait: float = NODE_LOCK_WAIT) -> bool:
        """Open the file and take a share, waiting (bounded) while a teardown holds it; blocking.

        Raises NetworkSetupError when the file cannot be opened; False when the wait ran out.
        """
        directory = os.path.dirname(self.path)
        try:
            if directory:
                os.makedirs(directory, mode=0o755, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise NetworkSetupError(
                f"cannot open the node lock {self.path}: {exc.strerror}; mount a directory of the node there "
                "(daemonset.yaml's node-lock hostPath) or pick another --node-lock"
            ) from None
        deadline = time.monotonic() + wait
        while True:
            if self._try(fcntl.LOCK_SH):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(NODE_LOCK_POLL)

    def last_one(self) -> bool:
        """Drop our share; True (holding the lock exclusively) when no other agent holds one; never blocks."""
        if self._fd is None:
            return True
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        return self._try(fcntl.LOCK_EX)

    def release(self) -> None:
        """Close the file, which drops whatever we hold; the file stays for the next agent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _try(self, operation: int) -> bool:
        assert self._fd is not None
        try:
            fcntl.flock(self._fd, operation | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EINTR):
                return False
            raise
        return True


class NodeSetup:
    """The node side of one agent. `setup_errors` counts failures by type (for metrics).

    `netns`, `command_prefix` and `recent_dir` let tests aim it at a network
    namespace of theirs; the agent leaves them at their defaults.
    """

    def __init__(
        self,
        config: Config,
        port: int = DNS_PORT,
        *,
        netns: str | None = None,
        command_prefix: Sequence[str] = (),
        recent_dir: str | None = None,
    ) -> None:
        self.config = config
        self.port = port
        self.setup_errors: dict[str, int] = dict.fromkeys(SETUP_ERROR_TYPES, 0)
        self.local_ips = tuple(ip for ip in config.listen if not parse_ip(ip).is_loopback)
        self.keeper: InterfaceKeeper | None = None
        if self.local_ips:
            with notls.held_back():  # pyroute2 imports ssl (notls.py)
                from nodecache.netif import InterfaceKeeper

            self.keeper = InterfaceKeeper(
                config.interface_name, self.local_ips, manage=config.setup_interface,
                sync_interval=config.sync_interval, errors=self.setup_errors, netns=netns,
            )  # fmt: skip
        self.firewall: Firewall | None = None
        self._prefix = tuple(command_prefix)
        self._recent_dir = recent_dir  # None: firewall.RECENT_DIR
        self._tasks: list[asyncio.Task[None]] = []
        self._rules_wake = asyncio.Event()
        self._last_recheck = 0.0
        self._heartbeat_ok = True
        self._rules_ok = False  # the last rule check succeeded: only then may the heartbeat ask for another
        manages = bool(self.local_ips) and (config.setup_interface or config.setup_iptables)
        self.lock = NodeLock(config.node_lock) if manages and config.node_lock else None

    async def start(self) -> None:
        """Node lock, interface, then rules; then keep both. Failures are logged and counted, never fatal:
        the agent keeps answering wherever traffic does reach it, and retries at each sync."""
        if self.lock is not None:
            await self._take_lock(self.lock)
        if self.keeper is not None:
            await asyncio.to_thread(self.keeper.start)
        if self.config.setup_iptables and self.local_ips:
            from nodecache.firewall import RECENT_DIR, Firewall

            try:
                self.firewall = await asyncio.to_thread(
                    Firewall, self.local_ips, self.port, health_port(self.config), self.config.iptables_backend,
                    self._prefix, self._recent_dir or RECENT_DIR,
                )  # fmt: skip
            except NetworkSetupError as exc:
                self.setup_errors["iptables"] += 1
                log.error("%s", exc)
            if self.firewall is not None:
                log.info("iptables backend: %s", self.firewall.describe_backend())
                await self.sync_rules(first=True)
                self._heartbeat()
                self._tasks.append(asyncio.create_task(self._sync_rules_forever()))
                self._tasks.append(asyncio.create_task(self._heartbeat_forever()))
        log.info(
            "node setup complete: interface %s %s, iptables rules %s",
            self.config.interface_name,
            "managed" if self.config.setup_interface else "checked only (--no-setup-interface)",
            "managed" if self.firewall is not None else "not installed",
        )

    async def _take_lock(self, lock: NodeLock) -> None:
        """Our share of the node lock (waiting out another agent's teardown); without it, go on and say so."""
        try:
            if await asyncio.to_thread(lock.acquire_shared):
                return
            problem = f"another agent held the node lock {lock.path} for over {NODE_LOCK_WAIT:g} s (a teardown stuck?)"
        except (NetworkSetupError, OSError) as exc:
            problem = str(exc)
        self.setup_errors["node_lock"] += 1
        log.error("%s; going on without it: at exit this agent may remove what a newer agent still serves with",
                  problem)  # fmt: skip

    async def stop(self, teardown: bool) -> None:
        """Stop keeping things in place; with `teardown`, and if no other agent holds the node lock,
        remove the rules, then the interface."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self._stop(teardown)
        finally:
            if self.lock is not None:
                self.lock.release()  # only now: a starting agent waits until the teardown is done

    async def _stop(self, teardown: bool) -> None:
        if not teardown:
            log.info("leaving interface %s and iptables rules in place (--skip-teardown)", self.config.interface_name)
        elif self.lock is not None and not self.lock.last_one():
            teardown = False
            log.info(
                "another agent on this node still serves %s; leaving the interface %s and the iptables rules to it",
                ", ".join(self.local_ips), self.config.interface_name,
            )  # fmt: skip
        if teardown and self.firewall is not None:
            try:
                removed = await asyncio.to_thread(self.firewall.remove)
                log.info("removed %d iptables rules", len(removed))
            except FirewallError as exc:
                self.setup_errors["iptables_lock" if exc.lock else "iptables"] += 1
                log.error("%s; remove leftovers with `nodecache teardown`", exc)
        if self.keeper is not None:
            for line in await asyncio.to_thread(self.keeper.stop, teardown and self.config.setup_interface):
                log.info("%s", line)

    def problem(self) -> str | None:
        """What stops this node from reaching the cache, as one line (for /ready); None when all is in place.

        Asks the kernel directly rather than trusting the last check: binding a
        socket to an address fails with EADDRNOTAVAIL unless some interface has it.
        """
        for ip in self.local_ips:
            if not address_is_local(ip):
                return f"local IP {ip} is on no interface of this node"
        if self.config.setup_iptables and self.local_ips and (self.firewall is None or not self._rules_ok):
            return "iptables rules are not in place (the log says why)"
        return None

    async def sync_rules(self, first: bool = False) -> bool:
        """One full rule check (add missing, delete duplicates); False when iptables failed."""
        assert self.firewall is not None
        try:
            changes = await asyncio.to_thread(self.firewall.reconcile)
        except FirewallError as exc:
            self.setup_errors["iptables_lock" if exc.lock else "iptables"] += 1
            log.error("%s", exc)
            self._rules_ok = False
            return False
        self._rules_ok = True
        if first:
            added = sum(c.startswith("added") for c in changes)
            log.info("iptables: %d rules in place for %s (%d added, %d removed)", len(self.firewall.desired_all()),
                     ", ".join(self.local_ips), added, len(changes) - added)  # fmt: skip
        for i, change in enumerate(changes):
            shown = not first and i < MAX_LOGGED_CHANGES
            log.log(logging.INFO if shown else logging.DEBUG, "iptables: %s%s", "" if first else "repaired: ", change)
        if not first and len(changes) > MAX_LOGGED_CHANGES:
            log.info("iptables: repaired %d more rules (--log-level debug shows them)", len(changes) - MAX_LOGGED_CHANGES)
        return True

    async def _sync_rules_forever(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._rules_wake.wait(), self.config.sync_interval)
            except TimeoutError:
                pass
            self._rules_wake.clear()
            await self.sync_rules()

    async def _heartbeat_forever(self) -> None:
        from nodecache.firewall import HEARTBEAT_INTERVAL

        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            self._heartbeat()

    def _heartbeat(self) -> None:
        """Refresh the host-network clients' rule; if its list is gone, so are (some of) our rules."""
        assert self.firewall is not None
        failed = self.firewall.heartbeat()
        if not failed:
            if not self._heartbeat_ok:
                log.info("heartbeat for host-network clients works again")
            self._heartbeat_ok = True
            return
        if not self._rules_ok:
            return  # the rules never got in (or the last check failed): the periodic check retries them
        if self._heartbeat_ok:
            log.warning(
                "cannot refresh the heartbeat for %s (are our iptables rules gone?); checking the rules; meanwhile "
                "host-network clients of these addresses are sent to kube-proxy's backends", ", ".join(failed),
            )  # fmt: skip
        self._heartbeat_ok = False
        now = time.monotonic()
        if now - self._last_recheck >= RULES_RECHECK_GAP:
            self._last_recheck = now
            self._rules_wake.set()


def teardown_leftovers(
    interface_name: str, local_ips: Sequence[str] = (), backend: str = "auto", echo: Callable[[str], None] = print
) -> list[str]:
    """Remove what an agent left behind (our rules by comment, then the interface); idempotent.

    Each removal is passed to `echo` as it happens, so a failure later on
    does not hide what was already done.
    """
    from nodecache.firewall import Firewall
    from nodecache.netif import remove_interface, run_netlink

    removed: list[str] = []
    firewall = Firewall(local_ips, backend=backend)
    for line in firewall.remove(ips=local_ips or None, families=(4, 6)):
        removed.append(line)
        echo(line)
    if run_netlink(lambda ipr: remove_interface(ipr, interface_name)):
        line = f"removed interface {interface_name}"
        removed.append(line)
        echo(line)
    return removed
