"""A minimal HTTP/1.1 server on the agent's event loop, for /metrics, /health and /ready.

Why asyncio here and not prometheus_client's WSGI server on a thread: every
counter is a plain int or dict changed on the loop thread without locks. A
scrape on another thread would iterate those dicts while the loop changes
them ("dictionary changed size during iteration") and could read totals
half way through an update. On the loop, a scrape runs between two
callbacks and sees one consistent state. Readiness sends real DNS queries
to the agent's own listeners, which needs the loop anyway, and a liveness
probe answered by the loop shows the loop is not wedged.

Deliberately small: GET and HEAD, one request per connection (Connection:
close), a request head of at most MAX_HEAD bytes read within READ_TIMEOUT.
That is all Prometheus and kubelet probes need. Sockets are made like the
DNS ones (listeners.make_socket): SO_REUSEPORT, so an old and a new agent can
overlap in a rollout, and IP_FREEBIND, so /health can bind to the local IP
before it is on the interface.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable

from nodecache.config import Address
from nodecache.errors import ListenError
from nodecache.listeners import make_socket
from nodecache.logs import Throttle

log = logging.getLogger(__name__)

MAX_HEAD = 8192
READ_TIMEOUT = 5.0
CLOSE_WAIT = 1.0  # at shutdown, for requests still being answered
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error",
           503: "Service Unavailable"}  # fmt: skip
TEXT = "text/plain; charset=utf-8"

Response = tuple[int, str, bytes]  # status, content type, body
Handler = Callable[[], Awaitable[Response]]


class HttpEndpoint:
    """One listening address with its routes (path -> handler)."""

    def __init__(self, address: Address, routes: dict[str, Handler]) -> None:
        self.address = address
        self.routes = routes
        self.port = address.port
        self._server: asyncio.Server | None = None
        self._throttle = Throttle()

    async def start(self) -> None:
        """Bind as the DNS listeners do (SO_REUSEPORT, and IP_FREEBIND: the local IP
        may not be on the interface yet), then serve."""
        try:
            sock = make_socket(self.address.host, self.address.port, socket.SOCK_STREAM)
        except ListenError as exc:
            paths = " ".join(sorted(self.routes))
            raise ListenError(f"cannot serve {paths}: {exc} (--metrics-address, --health-address)") from None
        self._server = await asyncio.start_server(self._handle, sock=sock, limit=MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("serving %s on http://%s", " ".join(sorted(self.routes)), Address(self.address.host, self.port))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                return
            status, ctype, body, method = await self._respond(head)
            reason = REASONS.get(status, "")
            extra = "Allow: GET, HEAD\r\n" if status == 405 else ""
            writer.write(
                (
                    f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    f"{extra}Cache-Control: no-store\r\nConnection: close\r\n\r\n"
                ).encode("ascii")
                + (b"" if method == "HEAD" else body)
            )
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _respond(self, head: bytes) -> tuple[int, str, bytes, str]:
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return 400, TEXT, b"bad request\n", "GET"
        method, path = parts[0], parts[1].split("?", 1)[0]
        handler = self.routes.get(path)
        if handler is None:
            return 404, TEXT, f"not found; try {' '.join(sorted(self.routes))}\n".encode(), method
        if method not in ("GET", "HEAD"):
            return 405, TEXT, b"only GET and HEAD\n", method
        try:
            status, ctype, body = await handler()
        except Exception as exc:  # a bug must not take the endpoint down with it
            self._throttle.warning(log, path, time.monotonic(), "%s failed: %r", path, exc)
            return 500, TEXT, b"internal error; see the agent's log\n", method
        return status, ctype, body, method

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def wait_closed(self) -> None:
        """Wait (at most CLOSE_WAIT) for requests being answered; a slow client cannot hold up shutdown."""
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), CLOSE_WAIT)
            except TimeoutError:
                pass
