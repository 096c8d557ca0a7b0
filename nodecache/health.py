"""Liveness and readiness.

/health (liveness) is answered by the event loop itself: 200 while the
process is alive and its loop turns, which is what the reference
DaemonSet's liveness probe expects.

/ready is a real DNS check. For every listen address it sends a query over
UDP and over TCP to the agent's own listeners, for the agent's own name
(TXT ready.nodecache.invalid., see resolver.LocalZone) which is answered from
the local cache and never needs an upstream, so an upstream outage does not
make every node unready at once (stale answers and SERVFAILs are the
agent's business, not the probe's). Then, when node setup is on, the
interface and rules must be in place (`node_check`). Any failure gives 503
with the failed check in the body. The result is cached for CACHE_SECONDS,
so probes, however many, send at most one round of queries a second.

During shutdown `draining` is set first: /ready says 503 from then on,
while the listeners keep answering for the lameduck delay.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable

from nodecache import wire
from nodecache.names import name_to_wire
from nodecache.resolver import PROBE_NAME, PROBE_TYPE
from nodecache.upstream import random_id  # the OS CSPRNG, without secrets' hmac and hashlib

log = logging.getLogger(__name__)

CACHE_SECONDS = 1.0
PROBE_TIMEOUT = 1.0  # per query; a healthy agent answers its own cache in well under a millisecond


def probe_query(qid: int) -> bytes:
    """TXT ready.nodecache.invalid., RD set, no EDNS: the exact key the local zone keeps cached."""
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + name_to_wire(PROBE_NAME) + struct.pack("!HH", PROBE_TYPE, 1)


def check_reply(qid: int, reply: bytes | None) -> str | None:
    """Why `reply` is not the probe's answer, or None when it is."""
    if reply is None:
        return f"no answer within {PROBE_TIMEOUT:g}s"
    if len(reply) < wire.HEADER_LEN or wire.reply_id(reply) != qid or not reply[2] & wire.QR:
        return "answer is not a reply to the probe"
    if reply[3] & 0x0F != wire.NOERROR or not (reply[6] or reply[7]):
        return f"answer has rcode {reply[3] & 0x0F} and {reply[6] << 8 | reply[7]} records"
    return None


class _OneReply(asyncio.DatagramProtocol):
    def __init__(self, qid: int) -> None:
        self.qid = qid
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: object) -> None:
        if wire.reply_id(data) == self.qid and not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


async def probe_udp(host: str, port: int) -> str | None:
    qid = random_id()
    loop = asyncio.get_running_loop()
    try:
        transport, proto = await loop.create_datagram_endpoint(lambda: _OneReply(qid), remote_addr=(host, port))
    except OSError as exc:
        return f"cannot send: {exc.strerror or exc}"
    try:
        transport.sendto(probe_query(qid))
        async with asyncio.timeout(PROBE_TIMEOUT):
            reply: bytes | None = await proto.reply
    except TimeoutError:
        reply = None
    except OSError as exc:
        return f"{exc.strerror or exc}"
    finally:
        transport.close()
    return check_reply(qid, reply)


async def probe_tcp(host: str, port: int) -> str | None:
    qid = random_id()
    query = probe_query(qid)
    writer = None
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(struct.pack("!H", len(query)) + query)
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            reply: bytes | None = await reader.readexactly(size)
    except TimeoutError:
        reply = None
    except asyncio.IncompleteReadError:
        return "connection closed before the answer"
    except OSError as exc:
        return f"{exc.strerror or exc}"
    finally:
        if writer is not None:
            writer.close()
    return check_reply(qid, reply)


class Readiness:
    """Decides /ready: own listeners answer over UDP and TCP, node setup in place, not draining."""

    def __init__(
        self,
        targets: Callable[[], list[tuple[str, int]]],
        node_check: Callable[[], str | None] = lambda: None,
        cache_seconds: float = CACHE_SECONDS,
    ) -> None:
        self.targets = targets
        self.node_check = node_check
        self.cache_seconds = cache_seconds
        self.draining = False
        self.checked = False
        self.last: str | None = None
        self._at = -cache_seconds
        self._running: asyncio.Task[str | None] | None = None

    async def check(self) -> str | None:
        """None when ready, else what failed (one line). At most one probe round per CACHE_SECONDS."""
        if self.draining:
            return "shutting down: lameduck, no new traffic please"
        if time.monotonic() - self._at < self.cache_seconds:
            return self.last
        if self._running is None or self._running.done():
            self._running = asyncio.get_running_loop().create_task(self._probe())
        return await asyncio.shield(self._running)

    def state(self) -> tuple[bool | None, str | None]:
        """(ready, why not) as last found, without probing; ready is None before the first probe."""
        if self.draining:
            return False, "shutting down: lameduck, no new traffic please"
        if not self.checked:
            return None, "not probed yet (nothing asked /ready)"
        return self.last is None, self.last

    async def _probe(self) -> str | None:
        targets = self.targets()
        checks = []
        for host, port in targets:
            checks.append((f"udp {host} port {port}", probe_udp(host, port)))
            checks.append((f"tcp {host} port {port}", probe_tcp(host, port)))
        results = await asyncio.gather(*(c for _, c in checks))
        failed = [f"{what}: {why}" for (what, _), why in zip(checks, results) if why is not None]
        if not targets:
            failed.append("no DNS listener is open")
        node = self.node_check()
        if node is not None:
            failed.append(node)
        result = "; ".join(failed) if failed else None
        if result != self.last or not self.checked:
            if result is None:
                log.info("ready: the listeners answer over UDP and TCP")
            else:
                log.warning("not ready: %s", result)
        self.last, self._at, self.checked = result, time.monotonic(), True
        return result
