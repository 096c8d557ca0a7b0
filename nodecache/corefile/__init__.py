"""The Corefile subset node-local-dns uses, parsed into frozen data, then into a Config.

Operators moving from node-local-dns keep their ConfigMap: this package reads the
Corefile syntax (server blocks, directives, option blocks) and the directives
node-local-dns and its users actually write, with CoreDNS's defaults and meanings.
Anything it does not understand is refused with `FILE:LINE: what is wrong and what
is expected`, never skipped: a silently ignored line is a cache that behaves
differently from what its operator reads.

Two steps, so a half-applied config never exists:

1. `parse_corefile` (parse.py) reads the whole text into `CorefileConfig` (pure
   data, every value checked, each item remembering its line);
2. `to_config` (translate.py) turns that into the agent's complete `Config`,
   combined with command-line overrides, refusing what the agent cannot honour yet.

The layers: lexer (words) -> reader (blocks of lines) -> keys and directives/ (one
module per directive, its parser and its translation side by side, each declaring
what its options reach in registry.Option) -> parse -> translate; check holds the
`check-config` table.
"""

from __future__ import annotations

from nodecache.corefile.check import check_config_table
from nodecache.corefile.directives import REPEATABLE_DIRECTIVES, SUPPORTED_DIRECTIVES
from nodecache.corefile.directives.bind import WILDCARD_LISTEN
from nodecache.corefile.directives.cache import (
    COREDNS_CACHE_CAPACITY,
    COREDNS_CACHE_MIN_SHARD,
    COREDNS_CACHE_SHARDS,
    COREDNS_DENIAL_MAX_TTL,
    COREDNS_MIN_TTL,
    COREDNS_PREFETCH_DURATION,
    COREDNS_PREFETCH_PERCENTAGE,
    COREDNS_SERVFAIL_MAX,
    COREDNS_SERVFAIL_TTL,
    COREDNS_STALE_DURATION,
    COREDNS_SUCCESS_MAX_TTL,
    NO_CACHE,
    PREFETCH_PERCENTAGE_RANGE,
    STALE_REFRESH_MODES,
    CacheSpec,
    PrefetchSpec,
    StaleSpec,
    cache_policy,
    coredns_capacity,
    prefetch_fields,
    prefetch_flag,
)
from nodecache.corefile.directives.forward import ForwardSpec
from nodecache.corefile.directives.health import COREDNS_HEALTH_PORT, COREDNS_METRICS_ADDRESS
from nodecache.corefile.directives.hosts import (
    COREDNS_HOSTS_FILE,
    COREDNS_HOSTS_RELOAD,
    COREDNS_HOSTS_TTL,
    HostsEntry,
    HostsSpec,
)
from nodecache.corefile.directives.reload import (
    COREDNS_RELOAD_INTERVAL,
    COREDNS_RELOAD_JITTER,
    RELOAD_MIN_INTERVAL,
    RELOAD_MIN_JITTER,
    ReloadSpec,
)
from nodecache.corefile.directives.template import DNS_CLASSES, TEMPLATE_RCODES, TemplateSpec
from nodecache.corefile.keys import ZoneKey
from nodecache.corefile.lexer import Token, tokenize
from nodecache.corefile.model import CorefileConfig, Overrides, ServerBlock
from nodecache.corefile.parse import parse_corefile, read_corefile, read_text
from nodecache.corefile.translate import to_config
from nodecache.corefile.values import ALL_ADDRESSES, Endpoint, parse_duration

__all__ = [
    "ALL_ADDRESSES",
    "COREDNS_CACHE_CAPACITY",
    "COREDNS_CACHE_MIN_SHARD",
    "COREDNS_CACHE_SHARDS",
    "COREDNS_DENIAL_MAX_TTL",
    "COREDNS_HEALTH_PORT",
    "COREDNS_HOSTS_FILE",
    "COREDNS_HOSTS_RELOAD",
    "COREDNS_HOSTS_TTL",
    "COREDNS_METRICS_ADDRESS",
    "COREDNS_MIN_TTL",
    "COREDNS_PREFETCH_DURATION",
    "COREDNS_PREFETCH_PERCENTAGE",
    "COREDNS_RELOAD_INTERVAL",
    "COREDNS_RELOAD_JITTER",
    "COREDNS_SERVFAIL_MAX",
    "COREDNS_SERVFAIL_TTL",
    "COREDNS_STALE_DURATION",
    "COREDNS_SUCCESS_MAX_TTL",
    "DNS_CLASSES",
    "NO_CACHE",
    "PREFETCH_PERCENTAGE_RANGE",
    "RELOAD_MIN_INTERVAL",
    "RELOAD_MIN_JITTER",
    "REPEATABLE_DIRECTIVES",
    "STALE_REFRESH_MODES",
    "SUPPORTED_DIRECTIVES",
    "TEMPLATE_RCODES",
    "WILDCARD_LISTEN",
    "CacheSpec",
    "CorefileConfig",
    "Endpoint",
    "ForwardSpec",
    "HostsEntry",
    "HostsSpec",
    "Overrides",
    "PrefetchSpec",
    "ReloadSpec",
    "ServerBlock",
    "StaleSpec",
    "prefetch_fields",
    "prefetch_flag",
    "TemplateSpec",
    "Token",
    "ZoneKey",
    "cache_policy",
    "check_config_table",
    "coredns_capacity",
    "parse_corefile",
    "parse_duration",
    "read_corefile",
    "read_text",
    "to_config",
    "tokenize",
]
