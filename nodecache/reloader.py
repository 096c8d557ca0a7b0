"""Reload: on SIGHUP or a changed file, build the configuration again and apply it by equality.

The reloader only decides *whether* and *when*: it rebuilds the Config,
compares it with the running one, hands a changed one to the agent's
`apply` step (which may refuse it by raising a NodecacheError), counts the
outcomes, and warns about fields that only a restart applies.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from nodecache.config import Config
from nodecache.errors import NodecacheError

log = logging.getLogger(__name__)

# Config fields a running agent keeps until it restarts; a reload that changes them says so.
RESTART_ONLY_FIELDS = (
    "control_socket", "metrics_address", "health_address", "query_log", "setup_interface",
    "setup_iptables", "interface_name",
)  # fmt: skip


class Reloader:
    """Rebuilds the configuration when asked, and applies it when it changed."""

    def __init__(
        self,
        rebuild: Callable[[], Config] | None,
        watch: Sequence[str],
        running: Callable[[], Config],
        apply: Callable[[Config], Awaitable[None]],
    ) -> None:
        # `rebuild` reads the configuration again (the CLI's flags + Corefile);
        # `watch` are the files and directories whose change triggers it.
        self.rebuild = rebuild
        self.watch = tuple(watch)
        self.running = running
        self.apply = apply
        self.wanted = asyncio.Event()
        self.failed = 0
        self.done = 0
        self._watcher: asyncio.Task[None] | None = None

    def request(self) -> None:
        """Ask for a reload (SIGHUP, or a changed file); safe to call from a signal handler."""
        self.wanted.set()

    def start_watching(self) -> None:
        """Poll the watched files in the background, when there are any and polling is on."""
        if self.rebuild is not None and self.watch and self.running().reload_interval > 0:
            self._watcher = asyncio.get_running_loop().create_task(self._watch_forever())

    def stop_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()

    async def reload(self) -> bool:
        """Build the configuration again and swap it in; keep the old one if the new one is invalid.

        Returns whether the running configuration is now the new one (or already was).
        """
        if self.rebuild is None:
            log.info("reload asked for, but this agent was not started from the command line; nothing to read")
            return False
        try:
            new = self.rebuild()
        except NodecacheError as exc:
            self.failed += 1
            log.error("reload failed, still running the previous configuration: %s", exc)
            return False
        if new == self.running():
            log.info("reload: configuration unchanged")
            return True
        try:
            await self.apply(new)
        except NodecacheError as exc:
            self.failed += 1
            log.error("reload failed, still running the previous configuration: %s", exc)
            return False
        self.done += 1
        return True

    async def _watch_forever(self) -> None:
        """Poll the watched paths; a change of what they resolve to asks for a reload.

        ConfigMap volumes update by pointing a `..data` symlink at a new directory, so
        the identity (inode, mtime, size) of each path's resolved target is compared,
        and a directory's entries are compared one by one.
        """
        seen = watch_signature(self.watch)
        while True:
            await asyncio.sleep(self.running().reload_interval)
            now = watch_signature(self.watch)
            if now != seen:
                seen = now
                log.info("configuration files changed; reloading")
                self.request()


def warn_restart_only(old: Config, new: Config) -> None:
    """Log a warning for each change a reload cannot apply to a running agent."""
    for what in RESTART_ONLY_FIELDS:
        if getattr(new, what) != getattr(old, what):
            log.warning("reload: %s changed; it takes effect when the agent restarts", what)
    if (new.setup_interface or new.setup_iptables) and set(new.listen) != set(old.listen):
        log.warning("reload: the interface and iptables rules keep the previous local IPs until the agent restarts")


def watch_signature(paths: Sequence[str]) -> tuple[Any, ...]:
    """What each path resolves to now: (path, inode, mtime, size) of its target, None when missing.

    A directory contributes its visible entries (and its `..data` link target).
    """
    out: list[Any] = []
    for path in paths:
        targets = [path]
        if os.path.isdir(path):
            targets = [os.path.join(path, "..data")]
            targets += sorted(os.path.join(path, n) for n in os.listdir(path) if not n.startswith("."))
        for target in targets:
            real = os.path.realpath(target)
            try:
                st = os.stat(real)
            except OSError:
                out.append((target, None))
                continue
            out.append((target, real, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)
