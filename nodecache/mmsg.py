"""Many datagrams per system call: recvmmsg(2) and sendmmsg(2), called through cffi or ctypes.

A UDP listener that answers hits inline spends most of its time in the
kernel boundary and the event loop's per-datagram machinery, not in the
cache. `Batch` reads up to `size` queries with one recvmmsg and writes the
replies queued for them with one sendmmsg.

Every buffer is allocated once per socket: `size` receive slots of
`datagram` bytes (an anonymous mapping, resident only where used), the
peers' addresses, and the two mmsghdr vectors pointing into them. A reply
goes to the peer of its query: the send vector reuses the receive vector's
addresses, so a hit costs no Python address tuple. Replies are not copied
either: each send slot's two iovecs point at the bytes where they are, a
whole reply, or the query's own ID in its receive slot and the rest of a
remembered reply (cache.ReplyMemo), so a replayed hit allocates nothing.
A datagram larger than `datagram` is dropped and counted (`truncated`).

The two calls go through the cffi extension the build compiled where there
is one (`FfiCalls`), else through ctypes (`CtypesCalls`): mmsgabi.py says
why. Linux only (the calls exist in glibc and musl); `available()` says
whether this process can use them, and the listener falls back to the event
loop's datagram transport when it cannot.
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import mmap
import socket
import struct
import sys
from typing import Any, Final

from nodecache.mmsgabi import FFI_MODULE, IoVec, MMsgHdr

MSG_DONTWAIT: Final = 0x40
MSG_TRUNC: Final = 0x20  # as a recv flag: msg_len is the datagram's real length, so a cut one is seen
_AGAIN: Final = (errno.EAGAIN, errno.EWOULDBLOCK)


_SOCKADDR: Final = 28  # sizeof(struct sockaddr_in6), which also holds a sockaddr_in
_NAMELEN: Final = {socket.AF_INET: 16, socket.AF_INET6: _SOCKADDR}
_HDR: Final = ctypes.sizeof(MMsgHdr)
_LEN_AT: Final = MMsgHdr.msg_len.offset
_IOV: Final = ctypes.sizeof(IoVec)
# A reply goes out as two iovecs: (the query's ID, in its receive slot; the rest of a replayed
# reply) or (a whole reply; nothing). Both point at the bytes where they already are, so no reply
# is copied into a send buffer: set_pair(send_vector, out * PAIR, base, length, base, length).
PAIR: Final = 2 * _IOV
set_pair: Final = struct.Struct("PNPN").pack_into
# Where a bytes object's contents start, from its id(): CPython's PyBytesObject header. Checked
# when the module loads (if it is not so, CALLS is None and the listener uses the loop's transport).
BYTES_AT: Final = bytes.__basicsize__ - 1
_v4: Final = struct.Struct("!2xH4s")  # sockaddr_in: family (host order, skipped), port, address
_v6: Final = struct.Struct("!2xHI16s")  # sockaddr_in6: family, port, flow info, address; then the scope
_scope: Final = struct.Struct("=I")  # sin6_scope_id, in host order


class Calls:
    """recvmmsg and sendmmsg as C functions Batch calls directly (no Python frame between), through cffi or
    ctypes (mmsgabi.py): both take (fd, vector, count, flags[, NULL]) and return -1 with errno set on failure."""

    name = ""

    def __init__(self, recvmmsg: Any, sendmmsg: Any, no_timeout: Any) -> None:
        self.recvmmsg = recvmmsg
        self.sendmmsg = sendmmsg
        self.no_timeout = no_timeout  # recvmmsg's timeout argument: NULL, none

    def pointer(self, address: int) -> Any:
        """What the calls take for a vector at `address`: made once per vector, not per call."""
        raise NotImplementedError

    def errno(self) -> int:
        """The errno of this thread's last failed call (saved by cffi or ctypes right after it)."""
        raise NotImplementedError


class FfiCalls(Calls):
    """Through the cffi extension the build made (mmsgabi.FFI_MODULE): a direct C call, no libffi."""

    name = "cffi"

    def __init__(self, module: Any) -> None:
        super().__init__(module.lib.recvmmsg, module.lib.sendmmsg, module.ffi.NULL)
        self.ffi = module.ffi

    def pointer(self, address: int) -> Any:
        return self.ffi.cast("void *", address)

    def errno(self) -> int:
        return self.ffi.errno  # type: ignore[no-any-return]


class CtypesCalls(Calls):
    """Through ctypes and the process's own libc: where the build made no cffi extension."""

    name = "ctypes"

    def pointer(self, address: int) -> Any:
        return ctypes.c_void_p(address)  # a bare Python int would be cut to a C int

    def errno(self) -> int:
        return ctypes.get_errno()


def ffi_calls() -> FfiCalls | None:
    """The cffi extension's calls, or None: a pure-Python build, NODECACHE_PURE_PYTHON=1, or no cffi installed."""
    try:
        return FfiCalls(importlib.import_module(FFI_MODULE))
    except ImportError:
        return None


def ctypes_calls() -> CtypesCalls | None:
    """libc's calls through ctypes, or None where this C library lacks them."""
    try:
        lib = ctypes.PyDLL(None, use_errno=True)  # the process's own libc, glibc or musl
        lib.recvmmsg, lib.sendmmsg  # noqa: B018  (both must exist)
    except (OSError, AttributeError):
        return None
    # No argtypes: converting through them costs about 1 µs a call, more than the rest of a
    # one-query batch's Python. Ints (fd, count, flags) go as Python ints, which ctypes passes as
    # C int without looking up a type; the vectors as c_void_p. restype: int.
    # PyDLL rather than CDLL: the call keeps the GIL instead of releasing and taking it again
    # (~400 instructions a call). Both calls are non-blocking (MSG_DONTWAIT), so no other
    # thread waits on them for longer than the system call itself.
    return CtypesCalls(lib.recvmmsg, lib.sendmmsg, None)


def _bytes_address_holds() -> bool:
    """Whether id(b) + BYTES_AT is where a bytes object's contents are (CPython's layout)."""
    if sys.implementation.name != "cpython":
        return False  # id() need not be an address there: reading at it could crash
    probe = b"nodecache mmsg probe"
    return ctypes.string_at(id(probe) + BYTES_AT, len(probe)) == probe


_BYTES_ADDRESS_HOLDS: Final = _bytes_address_holds()
# The calls every Batch uses unless given others (the tests run each kind): cffi's where built.
CALLS: Final = (ffi_calls() or ctypes_calls()) if _BYTES_ADDRESS_HOLDS else None


def available() -> str | None:
    """None when recvmmsg/sendmmsg can be used here, else why not (for the log line)."""
    if not _BYTES_ADDRESS_HOLDS:
        return "this Python does not lay out bytes objects as CPython does"
    if CALLS is None:
        return "this C library has no recvmmsg/sendmmsg"
    return None


class Batch:
    """Receive and send vectors of one UDP socket, for up to `size` datagrams per system call.

    `read()` reads the waiting queries into the receive slots and gives
    their lengths; `datagram(i, length)` is query i's bytes. The caller puts
    the reply to query i in send slot `out` (`put`, or the listener's replay
    branch, which writes the slot's iovecs itself) and `flush(out)` sends
    slots 0..out-1. The counters are read by the stats and metrics.
    """

    def __init__(self, sock: socket.socket, size: int, datagram: int, calls: Calls | None = None) -> None:
        calls = calls or CALLS
        if calls is None:
            raise OSError(errno.ENOSYS, available())
        self.calls = calls
        self._recvmmsg, self._sendmmsg, self._no_timeout = calls.recvmmsg, calls.sendmmsg, calls.no_timeout
        self.sock = sock
        self.fd = sock.fileno()
        self.size = size
        self.slot = datagram
        self.family = sock.family
        # The reply in each send slot, referenced until flush() has sent it, as the kernel reads its
        # bytes where they are (see BYTES_AT), and then until the slot is used again: at most `size`.
        self.replies: list[bytes | None] = [None] * size
        # The receive slots are one anonymous mapping: its pages become resident only once a
        # datagram is written to them, so an agent that never sees a burst does not pay for 64 slots.
        self.incoming = mmap.mmap(-1, size * datagram)
        # The ctypes buffers and vectors, typed Any: only ctypes itself reads them.
        self._in: Any = (ctypes.c_char * (size * datagram)).from_buffer(self.incoming)
        self._names: Any = ctypes.create_string_buffer(size * _SOCKADDR)
        self._iov_in: Any = (IoVec * size)()
        self._iov_out: Any = (IoVec * (2 * size))()  # two per reply: see PAIR
        self._hdr_in: Any = (MMsgHdr * size)()
        self._hdr_out: Any = (MMsgHdr * size)()
        namelen = _NAMELEN.get(self.family, _SOCKADDR)
        self.ids_at = ctypes.addressof(self._in)  # query i's ID is at ids_at + i * datagram
        names_at, iov_out_at = ctypes.addressof(self._names), ctypes.addressof(self._iov_out)
        for i in range(size):
            self._iov_in[i].iov_base, self._iov_in[i].iov_len = self.ids_at + i * datagram, datagram
            for hdr, iov, count in ((self._hdr_in[i].msg_hdr, ctypes.addressof(self._iov_in) + i * _IOV, 1),
                                    (self._hdr_out[i].msg_hdr, iov_out_at + i * PAIR, 2)):  # fmt: skip
                hdr.msg_name, hdr.msg_namelen = names_at + i * _SOCKADDR, namelen
                hdr.msg_iov, hdr.msg_iovlen = iov, count
        self._hdr_out_at = ctypes.addressof(self._hdr_out)
        self._in_vector = calls.pointer(ctypes.addressof(self._hdr_in))  # what the calls take: made once
        self._out_vector = calls.pointer(self._hdr_out_at)
        self.names = memoryview(self._names).cast("B")
        self.send_vector = memoryview(self._iov_out).cast("B")
        # The receive vector's msg_len fields of the first n entries, read with one unpack (_lengths[n]).
        entry = f"{_LEN_AT}xI{_HDR - _LEN_AT - 4}x"
        self._lengths = [struct.Struct(entry * n).unpack_from for n in range(size + 1)]
        self._hdr_in_view = memoryview(self._hdr_in).cast("B")
        self.received = 0  # datagrams read
        self.batches = 0  # recvmmsg calls that read at least one
        self.truncated = 0  # datagrams larger than `datagram`: dropped
        self.errors = 0  # recvmmsg errors other than "nothing to read" (e.g. a queued ICMP error)
        self.sent = 0  # replies handed to the kernel by sendmmsg or sendto
        self.send_dropped = 0  # replies the kernel would not take now (send buffer full): dropped
        self.send_failed = 0  # replies refused with another error (e.g. no route to the client)

    def read(self) -> tuple[int, ...]:
        """recvmmsg: the lengths of the datagrams it read into the receive slots, as they came (larger
        than `slot` when cut); none when nothing waited, or on an error, counted."""
        while True:
            n: int = self._recvmmsg(self.fd, self._in_vector, self.size, MSG_DONTWAIT | MSG_TRUNC, self._no_timeout)
            if n > 0:
                self.batches += 1
                self.received += n
                return self._lengths[n](self._hdr_in_view)  # type: ignore[no-any-return]
            err = self.calls.errno()
            if n == 0 or err in _AGAIN:
                return ()
            if err != errno.EINTR:
                self.errors += 1  # ICMP errors and the like: nothing to answer; the next read goes on
                return ()

    def datagram(self, i: int, length: int) -> bytes:
        """Datagram i, of `length` bytes; b"" for one too large for its slot, dropped and counted."""
        if length > self.slot:
            self.truncated += 1
            return b""
        return self.incoming[i * self.slot : i * self.slot + length]

    def peer(self, i: int) -> tuple[Any, ...]:
        """The address datagram i came from, as the socket module writes it: (host, port[, flow, scope])."""
        at = i * _SOCKADDR
        if self.family == socket.AF_INET6:
            port, flow, addr = _v6.unpack_from(self.names, at)
            scope = _scope.unpack_from(self.names, at + 24)[0]
            return socket.inet_ntop(socket.AF_INET6, addr), port, flow, scope
        port, addr = _v4.unpack_from(self.names, at)
        return socket.inet_ntop(socket.AF_INET, addr), port

    def move_peer(self, i: int, out: int) -> None:
        """Address send slot `out` to the peer of query i (out < i: an earlier query got no reply now)."""
        self.names[out * _SOCKADDR : (out + 1) * _SOCKADDR] = self.names[i * _SOCKADDR : (i + 1) * _SOCKADDR]

    def put(self, out: int, i: int, reply: bytes) -> None:
        """`reply` (a whole message) into send slot `out`, to the peer of query i."""
        if out != i:
            self.move_peer(i, out)
        set_pair(self.send_vector, out * PAIR, id(reply) + BYTES_AT, len(reply), 0, 0)
        self.replies[out] = reply

    def flush(self, out: int) -> None:
        """Hand send slots 0..out-1 to the kernel, counting what it takes and what it refuses.

        `replies` keeps each slot's last reply until the slot is used again:
        at most `size` replies, and nothing to clear per wake-up.
        """
        if not out:
            return
        k: int = self._sendmmsg(self.fd, self._out_vector, out, MSG_DONTWAIT)
        if k == out:  # all of them, at once: nearly always
            self.sent += k
            return
        done = 0
        while True:
            if k > 0:
                done += k
                self.sent += k
            else:
                err = self.calls.errno()
                if err in _AGAIN:  # the send buffer is full: what is left would wait on it; drop it, counted
                    self.send_dropped += out - done
                    return
                if err != errno.EINTR:
                    self.send_failed += 1  # this reply's peer cannot be reached; the rest still go
                    done += 1
            if done >= out:
                return
            k = self._sendmmsg(self.fd, self.calls.pointer(self._hdr_out_at + done * _HDR), out - done, MSG_DONTWAIT)

    def sendto(self, reply: bytes, addr: Any) -> None:
        """One reply now (a miss's answer): sendto, failures counted as flush() counts them."""
        try:
            self.sock.sendto(reply, addr)
            self.sent += 1
        except BlockingIOError:
            self.send_dropped += 1
        except OSError:
            self.send_failed += 1
