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


class NetworkSetupError(NodecacheError):
    """The node's interface, addresses or iptables rules could not be put in place or removed."""


class FirewallError(NetworkSetupError):
    """iptables-save or iptables-restore failed; `lock` says whether the xtables lock was the cause."""

    def __init__(self, message: str, lock: bool = False) -> None:
        super().__init__(message)
        self.lock = lock


class ControlError(NodecacheError):
    """`nodecache stats` / `flush` could not talk to the agent, or the agent refused the request."""


class HandoverError(NodecacheError):
    """A cache dump cannot be loaded: corrupt, cut short, from another format version, or not a dump."""
