"""UDP and TCP listeners (asyncio protocols).

Sockets are made here with SO_REUSEPORT, so a new agent can bind beside the
old one during a rolling update, and handed to the event loop. A cache hit
is answered inside the receive callback without creating a task; only a miss
spawns one.

Observability costs the hit path one countdown: every so many queries (see
counters.Activity) one takes the sampled branch, which times the answer and
feeds the top names and clients. With the query log on, the UDP listener
swaps in a receive method that takes that branch for every query (the TCP
one tests one flag), so with it off nothing is paid for it at all. Each
listener thus has two copies of the answering logic, the fast one and the
observed one; a test holds every combination to the same reply bytes.

Client TCP connections are bounded (RFC 7766 section 10): capped in number,
in total and per client address (TcpClients), and each holds about 1 MiB at
most, whether or not its client reads its replies (TcpConnection).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from typing import Any, Final, Protocol

from nodecache import mmsg, wire
from nodecache.cache import VIA_TCP4, VIA_TCP6, VIA_UDP4, VIA_UDP6, Replay
from nodecache.counters import Activity
from nodecache.errors import ListenError
from nodecache.framing import FramedConnection
from nodecache.logs import QueryLog
from nodecache.resolver import Deliver
from nodecache.sockstats import buffer_size

log: Final = logging.getLogger(__name__)

TCP_BACKLOG: Final = 1024
# Memory a client TCP connection may hold, however its client behaves (RFC 7766 section 10).
# Reading pauses once the unsent replies pass TCP_WRITE_HIGH, but misses already in flight
# still write their answers when they come. So the worst case is: just under TCP_WRITE_HIGH
# buffered, one answer of up to MAX_DNS_MESSAGE pushing it over, then MAX_PIPELINED in-flight
# misses each adding one more. With 64 KiB answers, (1 MiB - 32 KiB - 64 KiB) / 64 KiB leaves
# 14 misses per connection: plenty for a resolver pipelining small answers (cache hits are not
# limited by it, only by the write buffer). Queries read but not yet answered wait in the
# frame buffer, at most one socket read (256 KiB) on top, and only while reading is paused.
TCP_CONNECTION_BUDGET: Final = 1 << 20
MAX_DNS_MESSAGE: Final = 65535 + 2  # with its length prefix
TCP_WRITE_HIGH: Final = 32 << 10  # unsent reply bytes above which reading the connection pauses
TCP_WRITE_LOW: Final = 8 << 10  # ... and below which it resumes
MAX_PIPELINED: Final = (TCP_CONNECTION_BUDGET - TCP_WRITE_HIGH - MAX_DNS_MESSAGE) // MAX_DNS_MESSAGE  # misses in flight
# The kernel's send buffer for a client connection, set rather than autotuned (up to 4 MiB on
# Linux), so a client that never reads costs little kernel memory, which the pod's memory
# limit counts too. The kernel doubles it; a 64 KiB answer still goes out in one write.
TCP_SNDBUF: Final = 64 << 10
LINGER_RESET: Final = struct.pack("ii", 1, 0)  # struct linger {l_onoff = 1, l_linger = 0}
REFUSAL_LOG_INTERVAL: Final = 60.0  # seconds between log lines about refused TCP connections
# Bind before the address exists: the agent serves first, then adds its
# addresses to the interface, then steers traffic with iptables rules.
# Batched UDP (UdpBatchTransport, mmsg.Batch): datagrams per recvmmsg/sendmmsg, and the receive slots.
# A query is small (a name of at most 255 bytes, an OPT with a cookie or padding), so a query larger
# than UDP_BATCH_DATAGRAM (no real client sends one) is dropped and counted; 64 slots of 2 KiB are
# 128 KiB per socket. Replies need no slots: sendmmsg reads them where they are (mmsg.PAIR).
UDP_BATCH_DATAGRAM: Final = 2048
# Every wake-up reads with recvmmsg, even when it finds one query: measured at 40k q/s offered (a
# wake-up then finds a few, often one), that costs ~1.3 us of CPU a query less than reading a quiet socket
# with recvfrom and sendto, which an earlier version did after a batch of one (docs/performance.md).
IP_FREEBIND: Final = getattr(socket, "IP_FREEBIND", 15)
IPV6_FREEBIND: Final = 78  # Linux 4.15+; not exported by the socket module


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def make_socket(
    host: str, port: int, kind: socket.SocketKind, rcvbuf: int = 0, sndbuf: int = 0
) -> socket.socket:
    """A bound, non-blocking socket with SO_REUSEPORT (and v6-only for IPv6).

    A UDP socket gets `rcvbuf`/`sndbuf` bytes of kernel buffer (0: the
    system's default), as unbound's so-rcvbuf/so-sndbuf.
    """
    sock = socket.socket(_family(host), kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        _set_freebind(sock)
        if kind == socket.SOCK_DGRAM:
            set_buffer(sock, "receive", rcvbuf)
            set_buffer(sock, "send", sndbuf)
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(TCP_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        proto = "udp" if kind == socket.SOCK_DGRAM else "tcp"
        hint = (
            "ports below 1024 need root or CAP_NET_BIND_SERVICE"
            if exc.errno == 13
            else "is the address configured on this host, and is the port free?"
        )
        raise ListenError(f"cannot listen on {host} port {port}/{proto}: {exc.strerror}; {hint}") from None
    return sock


_BUFFER_OPTIONS: Final = {
    "receive": (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF, "net.core.rmem_max"),
    "send": (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF, "net.core.wmem_max"),
}


def set_buffer(sock: socket.socket, which: str, size: int) -> None:
    """Ask for `size` bytes of kernel buffer (0: keep the default); log when the kernel gives less.

    The *FORCE option (CAP_NET_ADMIN) may pass the sysctl cap; without the
    capability the plain option is capped at it.
    """
    if not size:
        return
    force, plain, sysctl = _BUFFER_OPTIONS[which]
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)
    got = buffer_size(sock, plain)
    if got < size:
        log.warning("UDP %s buffer is %d bytes, not the %d asked for: the kernel caps it at %s "
                    "(raise it, or give the agent CAP_NET_ADMIN)", which, got, size, sysctl)  # fmt: skip


def _is_v6(transport: asyncio.BaseTransport) -> bool:
    sock = transport.get_extra_info("socket")
    return sock is not None and sock.family == socket.AF_INET6


def _lname(data: bytes) -> bytes | None:
    try:
        return wire.scan_query(data).lname
    except wire.Malformed:
        return None


def _outcome(reply: bytes) -> str:
    """How a reply made inside the receive callback came about: a hit, or an error we wrote."""
    return "error" if reply[3] & 0x0F in (wire.FORMERR, wire.NOTIMP, wire.REFUSED) else "hit"


def _set_freebind(sock: socket.socket) -> None:
    """Let bind() succeed for an address the node does not have (yet)."""
    if sock.family == socket.AF_INET6:
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
            return
        except OSError:
            pass  # older kernels: IP_FREEBIND covers IPv6 sockets too
    sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)


class Memo(Protocol):
    """The part of the resolver's reply memo (cache.ReplyMemo) a UDP listener replays from."""

    @property
    def by_via(self) -> tuple[dict[bytes, Replay], ...]: ...


class Answerer(Protocol):
    """What a listener needs of the resolver: a Resolver, or a stand-in (test and benchmark stubs).

    Typed as this rather than Resolver because the compiled module checks a Resolver argument's
    class at run time; the attributes are read once per socket or connection, so the looser type
    costs nothing per query.
    """

    activity: Activity
    query_log: QueryLog | None

    @property
    def replies(self) -> Memo: ...

    def clock(self) -> float: ...

    def answer(self, data: bytes, via: int) -> bytes | wire.Query | None: ...

    def submit(self, data: bytes, q: wire.Query, via: int, deliver: Deliver, token: Any) -> None: ...


class UdpListener(asyncio.DatagramProtocol):
    """Answers datagrams; hits inline, misses through Resolver.submit."""

    def __init__(self, resolver: Answerer) -> None:
        self.resolver = resolver
        self.answer = resolver.answer
        self.submit = resolver.submit
        self.transport: asyncio.DatagramTransport | None = None
        self.via = VIA_UDP4
        self.activity = resolver.activity
        self.countdown = self.activity.countdown()
        self.query_log = resolver.query_log
        self.clock = resolver.clock
        # What readable replays: the resolver's own memo map for this socket's way (set again in
        # connection_made), which cache.ReplyMemo clears in place and never replaces.
        self.replays = resolver.replies.by_via[VIA_UDP4]
        if self.query_log is not None:
            self.datagram_received = self._logged  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.via = VIA_UDP6 if _is_v6(transport) else VIA_UDP4
        self.replays = self.resolver.replies.by_via[self.via]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.countdown -= 1
        if not self.countdown:
            self._observed(data, addr)
            return
        r = self.answer(data, self.via)
        if r.__class__ is bytes:
            self.transport.sendto(r, addr)  # type: ignore[union-attr]
        elif r is not None:
            self.submit(data, r, self.via, self._deliver, addr)  # type: ignore[arg-type]

    def readable(self, batch: mmsg.Batch) -> None:
        """The batched socket's reader callback (UdpBatchTransport): one recvmmsg, the answers, one sendmmsg.

        A query answered from the cache this second (cache.ReplyMemo) is
        replayed here, as Resolver.answer would replay it, without a call:
        its reply goes out as the query's own ID, where recvmmsg put it, and
        the memo's bytes, neither copied. Every other query, and each one
        the sampling countdown or the query log wants, takes
        datagram_received's logic; test_hitpath_variants holds the branches
        to the same bytes.
        """
        lengths = batch.read()
        if not lengths:
            return
        memo = self.replays if self.query_log is None else {}  # the query log sees every query
        via = self.via
        now = self.clock()
        incoming, slot, ids_at = batch.incoming, batch.slot, batch.ids_at
        vector, kept = batch.send_vector, batch.replies
        observe_all = self.query_log is not None
        countdown = self.countdown
        at = out = i = 0
        try:
            for length in lengths:
                countdown -= 1
                # The bytes after the ID, straight from the slot (a cut datagram, length > slot, is not looked up).
                # `incoming` is an mmap, sliced as Python slices even compiled: a datagram shorter than an ID
                # looks up b"" (docs/performance.md, "Compiled modules", on bytes slices).
                replay = memo.get(incoming[at + 2 : at + length]) if length <= slot and countdown else None
                if replay is not None and now < replay[1]:  # as Resolver.answer replays it
                    replay[2][via] += 1
                    tail = replay[0]
                    if out != i:
                        batch.move_peer(i, out)
                    mmsg.set_pair(vector, out * mmsg.PAIR, ids_at + at, 2, id(tail) + mmsg.BYTES_AT, len(tail))
                    kept[out] = tail  # the kernel reads it in flush(): held until then
                    out += 1
                else:
                    data = batch.datagram(i, length)
                    if observe_all or not countdown:
                        self.countdown = countdown
                        r: bytes | wire.Query | None = self._observed(data, batch.peer(i), batched=True)
                        countdown = self.countdown
                    else:
                        r = self.answer(data, via)
                        if r.__class__ is not bytes and r is not None:
                            self.submit(data, r, via, self._deliver, batch.peer(i))  # type: ignore[arg-type]
                    if r.__class__ is bytes:
                        batch.put(out, i, r)  # type: ignore[arg-type]
                        out += 1
                at += slot
                i += 1
        finally:
            self.countdown = countdown
            batch.flush(out)

    def _logged(self, data: bytes, addr: Any) -> None:
        """datagram_received with the query log on: every query takes the observed branch."""
        self.countdown -= 1
        self._observed(data, addr)

    def _observed(self, data: bytes, addr: Any, batched: bool = False) -> bytes | None:
        """One query on the sampled or logged branch: timed, sampled when due, logged when on.

        The one copy of the answering logic besides the fast branches;
        tests/test_hitpath_variants.py holds them to the same bytes. Inside a
        batch (`batched`) a hit's reply is returned, to go out with the
        batch's sendmmsg, rather than in a system call of its own.
        """
        started = time.perf_counter()
        sampled = not self.countdown
        ql = self.query_log
        r = self.answer(data, self.via)
        reply: bytes | None = None
        if r.__class__ is bytes:
            if batched:
                reply = r  # type: ignore[assignment]
            else:
                self.transport.sendto(r, addr)  # type: ignore[union-attr]
            took = time.perf_counter() - started
            if sampled:
                self.activity.hit_took(took)
            if ql is not None and ql.wants(r):  # type: ignore[arg-type]
                ql.record(addr, data, r, _outcome(r), "udp", took)  # type: ignore[arg-type]
        elif r is not None:
            if ql is None:
                self.submit(data, r, self.via, self._deliver, addr)  # type: ignore[arg-type]
            else:
                self.submit(data, r, self.via, self._deliver_logged, (addr, data, started))  # type: ignore[arg-type]
        if sampled:
            self.countdown = self.activity.countdown()
            self.activity.sample(_lname(data), addr[0] if isinstance(addr, tuple) else None)
        return reply

    def _deliver(self, addr: Any, reply: bytes, _outcome: str) -> None:
        """A miss's answer (Resolver.submit); the socket may have closed meanwhile."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)

    def _deliver_logged(self, token: tuple[Any, bytes, float], reply: bytes, outcome: str) -> None:
        addr, data, started = token
        self._deliver(addr, reply, outcome)
        ql = self.query_log
        if ql is not None and ql.wants(reply):
            ql.record(addr, data, reply, outcome, "udp", time.perf_counter() - started)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp socket error: %s", exc)  # e.g. ICMP unreachable from a client


class UdpBatchTransport:
    """A UDP socket read in batches: the event loop's reader callback drains it with recvmmsg.

    It stands in for the loop's datagram transport (the listener set, the
    health check and shutdown's divert/drain use the same few methods), and
    registers UdpListener.readable as the socket's reader callback, which
    answers the hits of each batch with one sendmmsg. Replies to misses go
    out one by one (`sendto`).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: UdpListener, size: int) -> None:
        self.loop = loop
        self.sock = sock
        self.protocol = protocol
        self.batch = mmsg.Batch(sock, size, UDP_BATCH_DATAGRAM)
        self.sendto = self.batch.sendto
        self._closing = False
        self._fd = sock.fileno()
        protocol.connection_made(self)  # type: ignore[arg-type]
        loop.add_reader(self._fd, protocol.readable, self.batch)  # no frame of ours between loop and listener

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self.sock
        if name == "sockname":
            return self.sock.getsockname()
        return default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Stop reading and close the socket (what is still queued in it is lost, as with the loop's transport)."""
        if self._closing:
            return
        self._closing = True
        self.loop.remove_reader(self._fd)
        self.sock.close()
        self.protocol.connection_lost(None)


class TcpClients:
    """Client TCP connections open now, capped in total and per client address (RFC 7766 section 10).

    One per agent, shared by every TCP listener. It also keeps what the caps
    and the per-connection bounds did, for `nodecache stats` and /metrics.
    The per-address map has a key only while that address has a connection
    open, so it never holds more than `max_total` keys.
    """

    def __init__(self, max_total: int, max_per_client: int) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.open = 0
        self.by_address: dict[str, int] = {}
        self.refused_total = 0  # accepted and closed at once: max_total were open
        self.refused_per_client = 0  # ... max_per_client were open from that address
        self.aborted_blocked = 0  # reset: replies left unread for the idle timeout
        self.paused_unread = 0  # reading paused: unsent replies passed TCP_WRITE_HIGH
        self.paused_pipelined = 0  # reading paused: MAX_PIPELINED misses in flight
        self._warned = -REFUSAL_LOG_INTERVAL

    def admit(self, address: str) -> bool:
        """Count a new connection from `address` in, or count its refusal and say no."""
        held = self.by_address.get(address, 0)
        if self.open >= self.max_total:
            self.refused_total += 1
            self._warn(f"{self.max_total} client TCP connections are open (--max-tcp-connections)", address)
            return False
        if held >= self.max_per_client:
            self.refused_per_client += 1
            self._warn(f"{held} are open from this address (--max-tcp-per-client)", address)
            return False
        self.by_address[address] = held + 1
        self.open += 1
        return True

    def release(self, address: str) -> None:
        """A connection `admit` let in has closed."""
        self.open -= 1
        held = self.by_address.pop(address) - 1
        if held:
            self.by_address[address] = held

    def _warn(self, why: str, address: str) -> None:
        """At most one log line per REFUSAL_LOG_INTERVAL: a flood of refusals must not flood the log too."""
        now = time.monotonic()
        if now - self._warned >= REFUSAL_LOG_INTERVAL:
            self._warned = now
            log.warning("closing a TCP connection from %s at once: %s; refusals are counted in stats", address, why)


class TcpConnection(FramedConnection):
    """One client connection: 2-byte framing, pipelined queries, idle timeout, bounded memory.

    Replies are written as each is ready, so a slow miss does not hold back
    hits queued behind it (RFC 7766 6.2.1.1). The connection closes after
    `idle` seconds with no query and nothing outstanding.

    A client that does not read its replies is not read either: once the
    unsent replies pass TCP_WRITE_HIGH, or MAX_PIPELINED misses are in
    flight, reading pauses (queries already read wait in the frame buffer)
    and resumes when the replies drain below TCP_WRITE_LOW / the misses are
    down to half. A connection whose writing stays blocked for `idle`
    seconds is reset. The checks live in the transport's callbacks and on
    the miss path; the hit path tests one flag per query.
    """

    def __init__(self, resolver: Answerer, idle: float, clients: TcpClients) -> None:
        super().__init__(idle)
        self.answer = resolver.answer
        self.submit = resolver.submit
        self.clients = clients
        self.client = ""  # the peer's address: its key in clients.by_address
        self.admitted = False
        self.outstanding = 0
        self.stalled = False  # reading is paused, for either reason below
        self.pipeline_full = False
        self.writing_paused = False
        self._blocked: asyncio.TimerHandle | None = None
        self.via = VIA_TCP4
        self.peer: Any = None
        self.activity = resolver.activity
        self.countdown = self.activity.countdown()
        self.query_log = resolver.query_log

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.via = VIA_TCP6 if _is_v6(transport) else VIA_TCP4
        self.peer = transport.get_extra_info("peername")
        self.client = str(self.peer[0]) if isinstance(self.peer, tuple) else ""
        if not self.clients.admit(self.client):
            transport.close()  # accepted, then closed at once: the client sees the connection end
            return
        self.admitted = True
        transport.set_write_buffer_limits(high=TCP_WRITE_HIGH, low=TCP_WRITE_LOW)  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, TCP_SNDBUF)
            except OSError:
                pass  # the kernel's autotuned buffer then; the agent's own memory is bounded all the same
        super().connection_made(transport)

    def busy(self) -> bool:
        return self.outstanding > 0  # answers are still coming; the clock restarts after them

    def data_received(self, data: bytes) -> None:
        for msg in self.frames(data):
            self._arm()
            self.countdown -= 1
            if not self.countdown or self.query_log is not None:
                self._one_observed(msg)
            else:
                r = self.answer(msg, self.via)
                if r.__class__ is bytes:
                    self._send(r)  # type: ignore[arg-type]
                elif r is not None:
                    self._start_miss(msg, r, None)  # type: ignore[arg-type]
            if self.stalled:
                break  # the queries after this one wait in the frame buffer; see _unstall

    def _send(self, reply: bytes) -> None:
        self.write_message(reply)

    def _one_observed(self, msg: bytes) -> None:
        """One query on the sampled or logged branch: timed, sampled when due, logged when on."""
        started = time.perf_counter()
        sampled = not self.countdown
        if sampled:
            self.countdown = self.activity.countdown()
            peer = self.peer
            self.activity.sample(_lname(msg), peer[0] if isinstance(peer, tuple) else None)
        r = self.answer(msg, self.via)
        if r.__class__ is bytes:
            self._send(r)  # type: ignore[arg-type]
            if sampled:
                self.activity.hit_took(time.perf_counter() - started)
            ql = self.query_log
            if ql is not None and ql.wants(r):  # type: ignore[arg-type]
                ql.record(self.peer, msg, r, _outcome(r), "tcp", time.perf_counter() - started)  # type: ignore[arg-type]
        elif r is not None:
            self._start_miss(msg, r, (msg, started) if self.query_log is not None else None)  # type: ignore[arg-type]

    def _start_miss(self, msg: bytes, q: wire.Query, token: tuple[bytes, float] | None) -> None:
        """Hand a miss to the resolver; with MAX_PIPELINED in flight, stop reading until half are answered."""
        self.outstanding += 1
        self.submit(msg, q, self.via, self._deliver, token)
        if self.outstanding >= MAX_PIPELINED and not self.pipeline_full:
            self.pipeline_full = True
            self.clients.paused_pipelined += 1
            self._stall()

    def _deliver(self, token: tuple[bytes, float] | None, reply: bytes, outcome: str) -> None:
        """A miss's answer (Resolver.submit): write it, log it when the query log is on, read again at half."""
        self._send(reply)
        ql = self.query_log
        if token is not None and ql is not None and ql.wants(reply):
            msg, started = token
            ql.record(self.peer, msg, reply, outcome, "tcp", time.perf_counter() - started)
        self.outstanding -= 1
        if self.pipeline_full and self.outstanding <= MAX_PIPELINED // 2:
            self.pipeline_full = False
            self._unstall()

    # -- back-pressure: the transport calls these when its unsent bytes cross the limits

    def pause_writing(self) -> None:
        """Unsent replies passed TCP_WRITE_HIGH: read no more queries, and reset the connection if it stays so."""
        self.writing_paused = True
        self.clients.paused_unread += 1
        self._stall()
        if self._blocked is None:
            self._blocked = asyncio.get_running_loop().call_later(self.idle, self._abort_blocked)

    def resume_writing(self) -> None:
        """The client read its replies down to TCP_WRITE_LOW: read and answer again."""
        self.writing_paused = False
        if self._blocked is not None:
            self._blocked.cancel()
            self._blocked = None
        self._unstall()

    def _stall(self) -> None:
        if not self.stalled:
            self.stalled = True
            if self.transport is not None and not self.transport.is_closing():
                self.transport.pause_reading()

    def _unstall(self) -> None:
        """Read again once neither reason to pause holds; queries already read are answered next."""
        if not self.stalled or self.pipeline_full or self.writing_paused:
            return
        self.stalled = False
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()
            if len(self._buf) >= 2:
                # Not from inside the transport's callback that resumed us: on the next loop pass.
                asyncio.get_running_loop().call_soon(self._answer_buffered)

    def _answer_buffered(self) -> None:
        if not self.stalled and self.transport is not None:
            self.data_received(b"")

    def _abort_blocked(self) -> None:
        """Writing stayed paused for the whole idle timeout: the client is not reading; drop what it left."""
        self._blocked = None
        self._abort_unread()

    def _abort_unread(self) -> None:
        """Reset the connection, once: the idle and the blocked timers may both come due in one loop pass."""
        if self.transport is not None and not self.transport.is_closing():
            self.clients.aborted_blocked += 1
            log.debug("resetting the TCP connection from %s: its replies went unread for %gs", self.client, self.idle)
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                try:  # linger 0: close() sends a reset and drops what the kernel still holds for the client
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
                except OSError:
                    pass  # then the kernel sends what it holds and a FIN, as for any close
            self.transport.abort()

    def idle_close(self) -> None:
        """Close when idle; reset instead when replies are still unsent, as close() would wait for them forever."""
        if self.transport is not None and self.transport.get_write_buffer_size():
            self._abort_unread()
        else:
            super().idle_close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._blocked is not None:
            self._blocked.cancel()
            self._blocked = None
        if self.admitted:
            self.admitted = False
            self.clients.release(self.client)
        self.transport = None
