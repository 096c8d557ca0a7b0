"""The control socket: the agent's only way to change state, and its client.

A Unix stream socket, mode 0600 in a directory created 0700 when missing, so
only the agent's user (root in the DaemonSet) can connect; the server also
checks the peer's uid (SO_PEERCRED). Nothing that changes state is served
over TCP.

Protocol: one JSON object per line each way, one request per connection.
    request:  {"cmd": "stats", "args": {"top": 10}}
    reply:    {"ok": true, "result": {...}}  or  {"ok": false, "error": "one line"}
Commands are whatever handlers the server registers ("stats", "flush").

The client half (`call`) imports nothing of the agent's runtime, so the
`nodecache stats` and `flush` commands start fast and work from a second
process (`kubectl exec ... -- nodecache stats`). Its errors are one line
saying what failed, where, and what to check.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nodecache.errors import ControlError, ListenError, NodecacheError
from nodecache.logs import Throttle

log = logging.getLogger(__name__)

MAX_MESSAGE = 16 << 20  # a stats reply with large top-N lists stays far below this
READ_TIMEOUT = 5.0  # the server waits this long for a request line
CLIENT_TIMEOUT = 10.0
SOCKET_MODE = 0o600
DIR_MODE = 0o700
MAX_PATH = 107  # sun_path is 108 bytes with its terminating NUL

Handler = Callable[[dict[str, Any]], Any]


# ---------------------------------------------------------------------------- server


class ControlServer:
    """Serves registered handlers on a Unix socket; each handler runs synchronously on the loop.

    Running synchronously matters for `flush`: it completes between two
    event-loop callbacks, so no query is answered from a half-flushed cache.
    """

    def __init__(self, path: str, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self._server: asyncio.AbstractServer | None = None
        self._inode: tuple[int, int] | None = None
        self._throttle = Throttle()

    async def start(self) -> None:
        sock = _bind(self.path)
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        self._server = await asyncio.start_unix_server(self._handle, sock=sock, limit=MAX_MESSAGE)
        log.info("control socket at %s (nodecache stats --control-socket %s)", self.path, self.path)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await self._reply(reader, writer)
            writer.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            writer.close()

    async def _reply(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> dict[str, Any]:
        line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)  # read first: the client is mid-send
        denied = _peer_denied(writer.get_extra_info("socket"))
        if denied:
            return {"ok": False, "error": denied}
        try:
            request = json.loads(line)
            cmd, args = request["cmd"], request.get("args") or {}
            if not isinstance(args, dict):
                raise TypeError("args must be an object")
        except (ValueError, KeyError, TypeError) as exc:
            return {"ok": False, "error": f"malformed request ({exc}); use the nodecache command of the same version"}
        handler = self.handlers.get(cmd)
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            return {"ok": False, "error": f"unknown command {cmd!r}; this agent knows: {known}"}
        try:
            return {"ok": True, "result": handler(args)}
        except NodecacheError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug must not take the control socket down with it
            self._throttle.warning(log, cmd, time.monotonic(), "control command %s failed: %r", cmd, exc)
            return {"ok": False, "error": f"the agent failed to run {cmd!r} ({exc!r}); see its log"}

    def close(self) -> None:
        """Stop serving and remove the socket file, unless another agent has replaced it since."""
        if self._server is not None:
            self._server.close()
            self._server = None
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)
        except OSError:
            pass


def _bind(path: str) -> socket.socket:
    """A listening Unix socket at `path`, mode 0600, replacing a stale one."""
    if len(os.fsencode(path)) > MAX_PATH:
        raise ListenError(f"control socket path {path} is longer than {MAX_PATH} bytes; choose a shorter --control-socket")
    directory = Path(path).parent
    try:
        directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise ListenError(f"cannot create {directory} for the control socket: {exc.strerror}; check --control-socket") from None
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # born 0600: no window in which others could connect
    try:
        sock.bind(path)
        os.chmod(path, SOCKET_MODE)
        sock.listen(16)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on control socket {path}: {exc.strerror}; check --control-socket") from None
    finally:
        os.umask(old)
    return sock


def _clear_stale(path: str) -> None:
    """Remove a socket file left by an agent that is gone; take over from one still running."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenError(f"{path} exists and is not a socket; remove it or choose another --control-socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(path)
            log.warning("another agent answers on %s; taking the control socket over (rolling update?)", path)
        except OSError:
            pass  # nobody there: a leftover of an agent that did not exit cleanly
    os.unlink(path)


def _peer_denied(sock: socket.socket | None) -> str | None:
    """Why the connecting process may not use the socket, or None (root and our own user may)."""
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    except OSError:
        return None
    if uid in (0, os.getuid()):
        return None
    return f"permission denied: uid {uid} may not use the control socket; run as root or as the agent's user"


# ---------------------------------------------------------------------------- client


def call(path: str, cmd: str, args: dict[str, Any] | None = None, timeout: float = CLIENT_TIMEOUT) -> Any:
    """Send one command to the agent at `path`; its result, or ControlError with one clear line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            raise ControlError(_connect_error(path, exc, timeout)) from None
        try:
            sock.sendall(json.dumps({"cmd": cmd, "args": args or {}}).encode() + b"\n")
            data = _read_line(sock)
        except TimeoutError:
            raise ControlError(f"the agent at {path} did not answer within {timeout:g}s; is it stopped or overloaded?") from None
        except OSError as exc:
            raise ControlError(f"lost the connection to the agent at {path}: {exc.strerror or exc}") from None
    try:
        reply = json.loads(data)
        ok = reply["ok"]
    except (ValueError, KeyError, TypeError):
        raise ControlError(f"the agent at {path} sent an unreadable reply; is it the same nodecache version?") from None
    if not ok:
        raise ControlError(f"the agent refused: {reply.get('error')}")
    return reply.get("result")


def _read_line(sock: socket.socket) -> bytes:
    chunks, size = [], 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if chunk.endswith(b"\n") or size > MAX_MESSAGE:
            break
    return b"".join(chunks)


def _connect_error(path: str, exc: OSError, timeout: float) -> str:
    """One line: what failed, where, and what to check."""
    where = "check that --control-socket (NODECACHE_CONTROL_SOCKET) is the agent's"
    if isinstance(exc, FileNotFoundError):
        if not Path(path).parent.exists():
            return f"no control socket at {path} (its directory does not exist): the agent is not running here; {where}"
        return f"no control socket at {path}: the agent is not running, or it uses another path; {where}"
    if isinstance(exc, PermissionError):
        return (f"permission denied on {path}: the socket is mode 0600, owned by the agent's user; "
                "run this as that user (root), e.g. with sudo or kubectl exec")  # fmt: skip
    if isinstance(exc, ConnectionRefusedError):
        if Path(path).exists() and not stat.S_ISSOCK(os.stat(path).st_mode):
            return f"{path} is not a socket; point --control-socket at the agent's control socket"
        return (f"nothing is listening on {path}: the agent is not running (the socket file is left from an "
                "earlier run); start it, or check --control-socket")  # fmt: skip
    if isinstance(exc, TimeoutError):
        return f"the agent at {path} did not accept the connection within {timeout:g}s; is it stopped or overloaded?"
    if exc.errno == errno.ENOTDIR:
        return f"no control socket at {path}: a part of the path is not a directory; check --control-socket"
    return f"cannot connect to the control socket {path}: {exc.strerror or exc}; check --control-socket"
