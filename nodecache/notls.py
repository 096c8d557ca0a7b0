"""Keeping OpenSSL out of the agent's memory: it speaks no TLS, yet what it imports asks for `ssl`.

The agent serves and forwards DNS over UDP and TCP, and its metrics and health
endpoints are plain HTTP. Still, asyncio and uvloop import `ssl` when they are
imported, prometheus_client does too, and the urllib it brings imports hashlib;
`ssl` and hashlib load OpenSSL's libssl and libcrypto. Those were about 4.2 MiB
of an idle agent's 27.4 MiB resident, and 4.7 MiB of its 31.8 once /metrics was
first scraped (docs/performance.md, Memory).

`held_back()` wraps those imports (`nodecache run`'s import of the server and
its event loop, the first scrape's import of the metrics, and pyroute2's when
the agent manages its interface, which imports `ssl` too). Inside it:

- `import ssl` gives a placeholder module: the names these modules read when
  they are imported (TLS classes that refuse to be made, exception classes,
  constants), none of OpenSSL. Any other name, asked at any time, loads the
  real `ssl` then and is taken from it; so a module that really uses TLS still
  gets it, with OpenSSL in memory, and the log says which name it asked for.
- hashlib, if first imported there, uses CPython's built-in hashes instead of
  OpenSSL's (the same digests; the agent hashes nothing on its own).

Afterwards `ssl` is importable as usual. Where it is already imported (an
agent started inside a test process), `held_back()` changes nothing.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

from nodecache.errors import NodecacheError

log = logging.getLogger(__name__)

SSL = "ssl"
HASHLIB = "_hashlib"  # hashlib's OpenSSL half; without it hashlib uses CPython's built-in hashes
# OpenSSL's error numbers, which uvloop keeps as C ints when imported (fixed by OpenSSL's ABI).
SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE, SSL_ERROR_SYSCALL = 2, 3, 5
# ssl.PROTOCOL_TLS_CLIENT and _SERVER, which prometheus_client uses as default arguments.
PROTOCOL_TLS_CLIENT, PROTOCOL_TLS_SERVER = 16, 17
NO_TLS = "TLS is not available in the nodecache agent: it serves DNS over UDP and TCP only (see nodecache/notls.py)"


@contextmanager
def held_back() -> Iterator[None]:
    """Imports made inside get a placeholder `ssl` and hashlib without OpenSSL, unless `ssl` is already loaded."""
    if SSL in sys.modules:
        yield
        return
    placeholder = PlaceholderSsl()
    sys.modules[SSL] = placeholder
    hashlib_held = HASHLIB not in sys.modules
    if hashlib_held:
        sys.modules[HASHLIB] = None  # type: ignore[assignment]  # importlib's "absent": hashlib falls back
    try:
        yield
    finally:
        if sys.modules.get(SSL) is placeholder:
            del sys.modules[SSL]
        if hashlib_held and HASHLIB in sys.modules and sys.modules[HASHLIB] is None:
            del sys.modules[HASHLIB]


class _Refused:
    """A TLS object the agent never makes (SSLContext, MemoryBIO, SSLSocket): making one says why not."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise NodecacheError(NO_TLS)


class _SSLError(OSError):
    """Stands in for ssl.SSLError and its kin in `except` clauses that only TLS connections reach."""


class _TLSVersion:
    """Stands in for ssl.TLSVersion in prometheus_client's annotations."""


def _refuse(*args: object, **kwargs: object) -> Any:
    """Stands in for ssl.create_default_context."""
    raise NodecacheError(NO_TLS)


class PlaceholderSsl(ModuleType):
    """`ssl` without OpenSSL: what asyncio, uvloop and prometheus_client read on import; the rest from the real one."""

    # asyncio (sslproto; SSLSocket at run time), uvloop (ten names, kept for its TLS transports), prometheus_client.
    SSLContext = MemoryBIO = SSLSocket = _Refused
    create_default_context = staticmethod(_refuse)
    SSLError = SSLWantReadError = SSLSyscallError = SSLZeroReturnError = CertificateError = _SSLError
    TLSVersion = _TLSVersion
    SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE, SSL_ERROR_SYSCALL = SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE, SSL_ERROR_SYSCALL
    PROTOCOL_TLS_CLIENT, PROTOCOL_TLS_SERVER = PROTOCOL_TLS_CLIENT, PROTOCOL_TLS_SERVER

    def __init__(self) -> None:
        super().__init__(SSL, "Placeholder for ssl while OpenSSL is held back (nodecache/notls.py).")
        self.__spec__ = ModuleSpec(SSL, None)

    def __getattr__(self, name: str) -> Any:
        """A name the placeholder lacks: load the real ssl (it stays loaded) and take the name from it."""
        if name.startswith("__"):
            raise AttributeError(name)
        if "_ssl" not in sys.modules:
            log.info("ssl.%s was asked for: OpenSSL is loaded after all", name)
        if sys.modules.get(SSL) is self:
            del sys.modules[SSL]
        return getattr(importlib.import_module(SSL), name)
