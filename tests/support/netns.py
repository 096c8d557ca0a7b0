"""Network namespaces for tests: made with unique names, always deleted.

Everything the node tests build (links, addresses, iptables rules, servers)
lives inside namespaces created here, never in the host's own. A socket can
be opened inside a namespace from the test process itself: a short-lived
thread joins the namespace (setns affects only the calling thread), creates
the socket, and exits; the socket stays in that namespace for its lifetime.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")
COMMAND_TIMEOUT = 30.0


@functools.cache
def unavailable_reason() -> str | None:
    """Why namespace tests cannot run here (None: they can); probed once per test run."""
    if os.geteuid() != 0:
        return "needs root: network namespaces, veth links and iptables rules (run `make test` as root)"
    if shutil.which("ip") is None:
        return "`ip` (Debian package iproute2) is not installed"
    probe = f"nc-probe-{secrets.token_hex(3)}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    if done.returncode != 0:
        return f"`ip netns add` does not work here: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=COMMAND_TIMEOUT)
    return None


def unique(prefix: str) -> str:
    """A namespace name no other test run uses (short: it also names veth peers)."""
    return f"{prefix}-{secrets.token_hex(3)}"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS` (use `-n NAME` to aim inside a namespace)."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def exec_in(name: str, argv: Sequence[str], check: bool = True, timeout: float = COMMAND_TIMEOUT,
            input: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run a command inside namespace `name` (`ip netns exec`), capturing its output."""
    done = subprocess.run(["ip", "netns", "exec", name, *argv], capture_output=True, text=True, timeout=timeout,
                          input=input)  # fmt: skip
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {name} failed ({done.returncode}): {done.stdout}{done.stderr}")
    return done


@contextmanager
def namespace(prefix: str) -> Iterator[str]:
    """A fresh namespace with `lo` up; deleted afterwards, with its /etc/netns directory."""
    name = unique(prefix)
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        ip("netns", "del", name, check=False)
        shutil.rmtree(ETC_NETNS / name, ignore_errors=True)
        if _created_etc_netns:
            with contextlib.suppress(OSError):  # only once empty: another namespace may still use it
                ETC_NETNS.rmdir()


_created_etc_netns = False


def namespace_or_skip(prefix: str) -> Iterator[str]:
    """A pytest fixture body: a fresh namespace, or a skip that says why there can be none."""
    import pytest

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with namespace(prefix) as name:
        yield name


def write_etc(name: str, filename: str, text: str) -> Path:
    """A file `ip netns exec NAME` shows at /etc/FILENAME (e.g. a pod's resolv.conf)."""
    global _created_etc_netns
    if not ETC_NETNS.exists():
        _created_etc_netns = True  # then it goes again with the last namespace that used it
    path = ETC_NETNS / name / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


_libc = ctypes.CDLL(None, use_errno=True)


def socket_in(name: str, family: socket.AddressFamily, kind: socket.SocketKind) -> socket.socket:
    """A socket created inside namespace `name`, usable from any thread of this process."""
    result: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            fd = os.open(NETNS_DIR / name, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {name}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(socket.socket(family, kind))
        except BaseException as exc:  # handed back to the caller's thread
            result.append(exc)

    t = threading.Thread(target=make, name=f"setns-{name}")
    t.start()
    t.join()
    made = result[0]
    if isinstance(made, BaseException):
        raise made
    return made


def veth(a: str, a_if: str, b: str, b_if: str) -> None:
    """A veth pair joining namespaces `a` (end `a_if`) and `b` (end `b_if`), both ends up."""
    ip("-n", a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b)
    ip("-n", a, "link", "set", a_if, "up")
    ip("-n", b, "link", "set", b_if, "up")


def pid_in(name: str, timeout: float = 5.0) -> subprocess.Popen[bytes]:
    """A sleeping process inside `name`: its /proc/PID/net shows that namespace's files.

    Returns once the process has joined the namespace; stop it by its PID (kill, wait).
    """
    proc = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "3600"], stdin=subprocess.DEVNULL)
    want = os.stat(NETNS_DIR / name).st_ino
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.stat(f"/proc/{proc.pid}/ns/net").st_ino == want:
                return proc
        except FileNotFoundError:
            break
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"a process did not join namespace {name} within {timeout} s")
