"""Many datagrams per system call: recvmmsg(2) and sendmmsg(2) through ctypes (libc).

A UDP listener that answers hits inline spends most of its time in the
kernel boundary and the event loop's per-datagram machinery, not in the
cache. `Batch` reads up to `size` queries with one recvmmsg and writes the
replies queued for them with one sendmmsg.

Every buffer is allocated once per socket: `size` receive slots of
`datagram` bytes, `size` reply slots of `reply` bytes (both anonymous
mappings, resident only where used), the peers' addresses, and the two
mmsghdr vectors pointing into them. A reply goes to
the peer of the query in the same slot: the send vector reuses the
receive vector's addresses, so a hit costs a copy of its reply bytes and
one length, and no Python address tuple. A datagram larger than `datagram`
is dropped and counted (`truncated`); a reply larger than a reply slot goes
out alone with sendto.

Linux only (the calls exist in glibc and musl); `available()` says whether
this process can use them, and the listener falls back to the event loop's
datagram transport when it cannot.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import socket
import struct
from typing import Any

MSG_DONTWAIT = 0x40
MSG_TRUNC = 0x20  # as a recv flag: msg_len is the datagram's real length, so a cut one is seen
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK)


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


_SOCKADDR = 28  # sizeof(struct sockaddr_in6), which also holds a sockaddr_in
_NAMELEN = {socket.AF_INET: 16, socket.AF_INET6: _SOCKADDR}
_HDR = ctypes.sizeof(_MMsgHdr)
_LEN_AT = _MMsgHdr.msg_len.offset
_IOV_LEN_AT = _IoVec.iov_len.offset
_IOV = ctypes.sizeof(_IoVec)
_set_size = struct.Struct("N").pack_into  # iov_len (size_t)
_v4 = struct.Struct("!2xH4s")  # sockaddr_in: family (host order, skipped), port, address
_v6 = struct.Struct("!2xHI16s")  # sockaddr_in6: family, port, flow info, address; then the scope
_scope = struct.Struct("=I")  # sin6_scope_id, in host order


def _libc() -> Any:
    try:
        lib = ctypes.PyDLL(None, use_errno=True)  # the process's own libc, glibc or musl
        lib.recvmmsg, lib.sendmmsg  # noqa: B018  (both must exist)
    except (OSError, AttributeError):
        return None
    # No argtypes: converting through them costs about 1 µs a call, more than the rest of a
    # one-query batch's Python. Ints (fd, count, flags) go as Python ints, which ctypes passes as
    # C int without looking up a type; the vectors as the ctypes arrays themselves (passed by
    # address), or as c_void_p (a bare Python int would be cut to a 32-bit int). restype: int.
    # PyDLL rather than CDLL: the call keeps the GIL instead of releasing and taking it again
    # (~400 instructions a call). Both calls are non-blocking (MSG_DONTWAIT), so no other
    # thread waits on them for longer than the system call itself.
    return lib


_LIB = _libc()


def available() -> str | None:
    """None when recvmmsg/sendmmsg can be used here, else why not (for the log line)."""
    if _LIB is None:
        return "this C library has no recvmmsg/sendmmsg"
    return None


class Batch:
    """Receive and send buffers of one UDP socket, for up to `size` datagrams per system call.

    `receive()` returns the queries read (b"" for one dropped as too large);
    the caller puts a reply for query i in `replies[i]` (None: no reply now)
    and calls `send(n)`. The counters are read by the stats and metrics.
    """

    def __init__(self, sock: socket.socket, size: int, datagram: int, reply: int) -> None:
        if _LIB is None:
            raise OSError(errno.ENOSYS, available())
        self.sock = sock
        self.fd = sock.fileno()
        self.size = size
        self.datagram = datagram
        self.reply = reply
        self.family = sock.family
        self.replies: list[bytes | None] = [None] * size
        # Buffers, each one ctypes array for all slots (their addresses stay fixed). The two large
        # ones are anonymous mappings: their pages become resident only once a datagram or reply
        # is written to them, so an agent that never sees a burst does not pay for 64 slots.
        self._in_map = mmap.mmap(-1, size * datagram)
        self._out_map = mmap.mmap(-1, size * reply)
        self._in = (ctypes.c_char * (size * datagram)).from_buffer(self._in_map)
        self._out = (ctypes.c_char * (size * reply)).from_buffer(self._out_map)
        self._names = ctypes.create_string_buffer(size * _SOCKADDR)
        self._iov_in = (_IoVec * size)()
        self._iov_out = (_IoVec * size)()
        self._hdr_in = (_MMsgHdr * size)()
        self._hdr_out = (_MMsgHdr * size)()
        namelen = _NAMELEN.get(self.family, _SOCKADDR)
        in_at, out_at, names_at = (ctypes.addressof(b) for b in (self._in, self._out, self._names))
        for i in range(size):
            self._iov_in[i].iov_base, self._iov_in[i].iov_len = in_at + i * datagram, datagram
            self._iov_out[i].iov_base = out_at + i * reply
            for hdrs, iov in ((self._hdr_in, self._iov_in), (self._hdr_out, self._iov_out)):
                h = hdrs[i].msg_hdr
                h.msg_name, h.msg_namelen = names_at + i * _SOCKADDR, namelen
                h.msg_iov, h.msg_iovlen = ctypes.addressof(iov) + i * _IOV, 1
        self._hdr_in_at = ctypes.addressof(self._hdr_in)
        self._hdr_out_at = ctypes.addressof(self._hdr_out)
        # Datagrams are read and replies written by slicing the mappings themselves: an mmap slice
        # is bytes at once, where a memoryview slice is one more object before its tobytes().
        self._names_view = memoryview(self._names).cast("B")
        self._iov_out_view = memoryview(self._iov_out).cast("B")
        # The receive vector's msg_len fields of the first n entries, read with one unpack (_lengths[n]).
        entry = f"{_LEN_AT}xI{_HDR - _LEN_AT - 4}x"
        self._lengths = [struct.Struct(entry * n) for n in range(size + 1)]
        self._first_length = self._lengths[1].unpack_from
        # recvmmsg's arguments, made once: plain ints and the vector itself (see _libc).
        self._recv_args = (self.fd, self._hdr_in, size, MSG_DONTWAIT | MSG_TRUNC, None)
        self._hdr_in_view = memoryview(self._hdr_in).cast("B")
        self.received = 0  # datagrams read
        self.batches = 0  # recvmmsg calls that read at least one
        self.truncated = 0  # datagrams larger than `datagram`: dropped
        self.errors = 0  # recvmmsg errors other than "nothing to read" (e.g. a queued ICMP error)
        self.sent = 0  # replies handed to the kernel by sendmmsg or sendto
        self.send_dropped = 0  # replies the kernel would not take now (send buffer full): dropped
        self.send_failed = 0  # replies refused with another error (e.g. no route to the client)

    def receive(self) -> list[bytes]:
        """The datagrams waiting, up to `size` (an empty list: none, or an error, counted)."""
        while True:
            n = _LIB.recvmmsg(*self._recv_args)
            if n > 0:
                break
            err = ctypes.get_errno()
            if n == 0 or err in _AGAIN:
                return []
            if err != errno.EINTR:
                self.errors += 1  # ICMP errors and the like: nothing to answer; the next read goes on
                return []
        self.batches += 1
        size = self.datagram
        if n == 1:  # most wake-ups at a moderate rate: no loop, one length read
            self.received += 1
            length = self._first_length(self._hdr_in_view)[0]
            if length > size:
                self.truncated += 1
                return [b""]
            return [self._in_map[:length]]
        self.received += n
        data = self._in_map
        lengths = self._lengths[n].unpack_from(self._hdr_in_view)
        out = []
        for i in range(n):
            length = lengths[i]
            if length > size:
                self.truncated += 1
                out.append(b"")
            else:
                out.append(data[i * size : i * size + length])
        return out

    def peer(self, i: int) -> tuple[Any, ...]:
        """The address datagram i came from, as the socket module writes it: (host, port[, flow, scope])."""
        at = i * _SOCKADDR
        if self.family == socket.AF_INET6:
            port, flow, addr = _v6.unpack_from(self._names_view, at)
            scope = _scope.unpack_from(self._names_view, at + 24)[0]
            return socket.inet_ntop(socket.AF_INET6, addr), port, flow, scope
        port, addr = _v4.unpack_from(self._names_view, at)
        return socket.inet_ntop(socket.AF_INET, addr), port

    def send(self, n: int) -> None:
        """Send `replies[:n]` that are set, each to the peer of its query, and clear them."""
        replies = self.replies
        size = self.reply
        out = 0
        slots, iov, names = self._out_map, self._iov_out_view, self._names_view
        for i in range(n):
            r = replies[i]
            if r is None:
                continue
            replies[i] = None
            length = len(r)
            if length > size:
                self.sendto(r, self.peer(i))
                continue
            if out != i:  # an earlier slot had no reply: move this peer's address down to the send slot
                names[out * _SOCKADDR : (out + 1) * _SOCKADDR] = names[i * _SOCKADDR : (i + 1) * _SOCKADDR]
            slots[out * size : out * size + length] = r
            _set_size(iov, out * _IOV + _IOV_LEN_AT, length)
            out += 1
        self._flush(out)

    def send_one(self, reply: bytes) -> None:
        """send(1) with `reply` for query 0, without the loop: a wake-up that read one query."""
        length = len(reply)
        if length > self.reply:
            self.sendto(reply, self.peer(0))
            return
        self._out_map[:length] = reply
        _set_size(self._iov_out_view, _IOV_LEN_AT, length)
        if _LIB.sendmmsg(self.fd, self._hdr_out, 1, MSG_DONTWAIT) == 1:
            self.sent += 1
            return
        err = ctypes.get_errno()
        if err == errno.EINTR:
            self._flush(1)  # interrupted before it went: again, as send() would
        elif err in _AGAIN:
            self.send_dropped += 1
        else:
            self.send_failed += 1

    def _flush(self, out: int) -> None:
        """Hand the first `out` send slots to the kernel, counting what it takes and what it refuses."""
        done = 0
        while done < out:
            at = self._hdr_out if not done else ctypes.c_void_p(self._hdr_out_at + done * _HDR)
            k = _LIB.sendmmsg(self.fd, at, out - done, MSG_DONTWAIT)
            if k > 0:
                done += k
                self.sent += k
                continue
            err = ctypes.get_errno()
            if err == errno.EINTR:
                continue
            if err in _AGAIN:  # the send buffer is full: what is left would wait on it; drop it, counted
                self.send_dropped += out - done
                return
            self.send_failed += 1  # this reply's peer cannot be reached; the rest still go
            done += 1

    def sendto(self, reply: bytes, addr: Any) -> None:
        """One reply now (a miss's answer, a sampled hit): sendto, failures counted as send() counts them."""
        try:
            self.sock.sendto(reply, addr)
            self.sent += 1
        except BlockingIOError:
            self.send_dropped += 1
        except OSError:
            self.send_failed += 1

