"""A counting DNS proxy in front of NSD: every reply that reaches a client is classified and counted.

Why a proxy rather than NSD's own statistics: NSD counts rcodes but not NODATA apart from positive
answers per type, and its counters cover the harness's readiness probes too. The proxy counts exactly
what a cache (or a pod with no cache) asked, by kind and type, over UDP and TCP, and is reset between
contenders. It forwards everything to NSD over UDP (the answers are small); NSD does the answering.

It runs on its own event loop in a thread of the harness; its sockets may belong to another network
namespace (the caller creates them there, see benchmarks/load.py).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable

from loadmix import classify

ID_SPACE = 1 << 16
TCP_READ_TIMEOUT = 30.0


class CountingUpstream:
    """Listens on `udp` and `tcp` (bound sockets), forwards to NSD through `upstream` (a connected UDP socket)."""

    def __init__(self, udp: socket.socket, tcp: socket.socket, upstream: socket.socket) -> None:
        self._udp, self._tcp, self._up = udp, tcp, upstream
        self.counts: Counter[tuple[str, str]] = Counter()
        self.received = 0
        self._pending: dict[int, tuple[bytes, Callable[[bytes], None]]] = {}  # our ID -> (client's ID, reply to)
        self._next_id = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="counting-upstream", daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def start(self) -> CountingUpstream:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the counting upstream did not start")
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        for s in (self._udp, self._tcp, self._up):
            s.close()

    def take(self) -> Counter[tuple[str, str]]:
        """The counts so far, starting afresh (between contenders, when no query is in flight)."""
        counts, self.counts = self.counts, Counter()
        self.received = 0
        return counts

    # -- the loop thread

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        loop = self._loop
        for s in (self._udp, self._tcp, self._up):
            s.setblocking(False)
        loop.add_reader(self._up.fileno(), self._from_upstream)
        loop.add_reader(self._udp.fileno(), self._from_udp_client)
        self._server = loop.run_until_complete(asyncio.start_server(self._tcp_client, sock=self._tcp))
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            loop.close()

    def _forward(self, query: bytes, reply_to: Callable[[bytes], None]) -> None:
        if len(query) < 12:
            return
        self.received += 1
        qid = self._next_id
        self._next_id = (qid + 1) % ID_SPACE
        self._pending[qid] = (query[:2], reply_to)
        try:
            self._up.send(struct.pack("!H", qid) + query[2:])
        except OSError:
            self._pending.pop(qid, None)

    def _from_upstream(self) -> None:
        for _ in range(64):
            try:
                reply = self._up.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(reply) < 12:
                continue
            pending = self._pending.pop(struct.unpack("!H", reply[:2])[0], None)
            if pending is None:
                continue
            self.counts[classify(reply)] += 1
            client_id, reply_to = pending
            reply_to(client_id + reply[2:])

    def _from_udp_client(self) -> None:
        for _ in range(64):
            try:
                query, addr = self._udp.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self._forward(query, lambda reply, addr=addr: self._udp_reply(reply, addr))

    def _udp_reply(self, reply: bytes, addr: tuple[str, int]) -> None:
        try:
            self._udp.sendto(reply, addr)
        except OSError:
            pass

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def reply_to(reply: bytes) -> None:
            if not writer.is_closing():
                writer.write(struct.pack("!H", len(reply)) + reply)

        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), TCP_READ_TIMEOUT)
                query = await reader.readexactly(struct.unpack("!H", head)[0])
                self._forward(query, reply_to)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
