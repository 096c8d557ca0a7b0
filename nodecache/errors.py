"""One exception root for everything nodecache raises on purpose.

Every message is written for the operator: it says what is wrong and what to
do about it, so the CLI can print it as one line without a traceback.
"""

from __future__ import annotations


class NodecacheError(Exception):
    """Root of every error nodecache raises deliberately."""


class ConfigError(NodecacheError):
    """The configuration (flags, files) cannot be used as given."""


class ResolvConfError(ConfigError):
    """The node's resolv.conf cannot supply upstream servers."""


class ListenError(NodecacheError):
    """A listening socket could not be opened."""


class UpstreamError(NodecacheError):
    """An upstream exchange failed (timeout, refused, unusable reply).

    Never reaches the operator directly: the forwarder turns it into a
    failover, a stale answer or a SERVFAIL.
    """
