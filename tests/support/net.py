"""Loopback port helpers shared by the servers the tests start."""

from __future__ import annotations

import socket

_ATTEMPTS = 50


def free_port(family: socket.AddressFamily = socket.AF_INET, host: str = "127.0.0.1") -> int:
    """A port that is free for both UDP and TCP on `host` right now.

    DNS servers bind both transports on one port, and the kernel's ephemeral pick for one
    says nothing about the other, so try until one port suits both (bounded).
    """
    if family == socket.AF_INET6 and host == "127.0.0.1":
        host = "::1"
    for _ in range(_ATTEMPTS):
        with socket.socket(family, socket.SOCK_STREAM) as tcp, socket.socket(family, socket.SOCK_DGRAM) as udp:
            tcp.bind((host, 0))
            port: int = tcp.getsockname()[1]
            try:
                udp.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no port free for both UDP and TCP on {host} after {_ATTEMPTS} attempts")
