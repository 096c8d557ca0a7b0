"""What the kernel and the batch reader say about the listening UDP sockets, read when asked.

The kernel's receive-buffer drops (queries that arrived while the socket's
buffer was full: the agent never saw them) come from the `drops` column of
/proc/net/udp and /proc/net/udp6, matched by the sockets' inode numbers.
That costs nothing per query and works in whatever network namespace the
agent runs in; it is read only when `nodecache stats` or a scrape asks.
SO_RXQ_OVFL would report the same count, but as a control message on every
receive, which the hit path would pay for.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from nodecache.mmsg import Batch

PROC_UDP = (Path("/proc/net/udp"), Path("/proc/net/udp6"))


@dataclass(frozen=True)
class UdpSocketStats:
    """One listening UDP socket, as `nodecache stats` and /metrics show it."""

    listener: str  # HOST:PORT ([HOST]:PORT for IPv6)
    batched: bool  # read with recvmmsg (mmsg.Batch), else through the event loop's transport
    rcvbuf: int  # kernel buffers in bytes, as asked for (the kernel reports twice as much)
    sndbuf: int
    drops: int | None  # queries the kernel dropped, its receive buffer full; None: unknown
    truncated: int = 0  # queries too large for a batch slot: dropped
    send_dropped: int = 0  # replies dropped: the send buffer was full
    send_failed: int = 0  # replies the kernel refused (e.g. no route to the client)


def buffer_size(sock: socket.socket, option: int) -> int:
    """SO_RCVBUF or SO_SNDBUF as asked for: the kernel reports twice that (it counts its own overhead)."""
    return sock.getsockopt(socket.SOL_SOCKET, option) // 2


def kernel_drops(inodes: set[int], tables: tuple[Path, ...] = PROC_UDP) -> dict[int, int]:
    """Receive-buffer drops by socket inode, for those of `inodes` found in `tables`."""
    found: dict[int, int] = {}
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue  # no IPv6, or no /proc: unknown
        for line in lines:
            cols = line.split()
            # sl local rem st tx:rx tr:when retr uid timeout inode ref pointer drops
            if len(cols) >= 13 and cols[9].isdigit() and int(cols[9]) in inodes:
                found[int(cols[9])] = int(cols[-1])
    return found


def udp_socket_stats(sockets: list[tuple[socket.socket, Batch | None]]) -> list[UdpSocketStats]:
    """The stats of each (socket, its batch reader or None); closed sockets are left out."""
    live = [(s, b) for s, b in sockets if s.fileno() >= 0]
    inodes = {os.fstat(s.fileno()).st_ino: i for i, (s, _) in enumerate(live)}
    drops = kernel_drops(set(inodes))
    out = []
    for inode, i in inodes.items():
        sock, batch = live[i]
        host, port = sock.getsockname()[:2]
        out.append(
            UdpSocketStats(
                listener=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                batched=batch is not None,
                rcvbuf=buffer_size(sock, socket.SO_RCVBUF),
                sndbuf=buffer_size(sock, socket.SO_SNDBUF),
                drops=drops.get(inode),
                truncated=batch.truncated if batch else 0,
                send_dropped=batch.send_dropped if batch else 0,
                send_failed=batch.send_failed if batch else 0,
            )
        )
    return out
