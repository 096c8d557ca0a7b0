"""DNS over TCP (RFC 1035 4.2.2, RFC 7766): 2-byte length framing and an idle timer.

Shared by the client listener (listeners.TcpConnection) and the upstream
connection pool (upstream._TcpConnection): both read pipelined messages from
one byte stream and close the connection after a quiet spell, unless answers
are still owed.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator


class FramedConnection(asyncio.Protocol):
    """A TCP connection carrying length-prefixed DNS messages, closed when idle."""

    def __init__(self, idle: float) -> None:
        self.idle = idle
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._arm()

    def busy(self) -> bool:
        """True while answers are still owed: the idle clock then starts again."""
        raise NotImplementedError

    def idle_close(self) -> None:
        """Close after `idle` quiet seconds; subclasses may add their own cleanup."""
        if self.transport is not None:
            self.transport.close()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self.idle, self._idle_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _idle_out(self) -> None:
        if self.busy():
            self._arm()
        else:
            self.idle_close()

    def frames(self, data: bytes) -> Iterator[bytes]:
        """The whole messages `data` completes; a partial one waits for more bytes."""
        buf = self._buf
        buf += data
        while len(buf) >= 2:
            size = buf[0] << 8 | buf[1]
            if len(buf) < 2 + size:
                return
            msg = bytes(buf[2 : 2 + size])
            del buf[: 2 + size]
            yield msg

    def write_message(self, msg: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(struct.pack("!H", len(msg)) + msg)
