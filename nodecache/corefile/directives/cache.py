"""`cache [TTL] [ZONES...] { success, denial, prefetch, serve_stale, servfail, disable, keepttl }`.

Parsed with CoreDNS's defaults, then translated into each zone's CachePolicy.
`prefetch` and `keepttl` are honoured with CoreDNS's meaning (see resolver.py's
Prefetch and cache.py's KeptTtlEntry). `--prefetch` takes the same words.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from nodecache.config import PREFETCH_PERCENTAGE_RANGE, CachePolicy, ForwardPolicy, Zone
from nodecache.corefile.lexer import Token
from nodecache.corefile.reader import Line
from nodecache.corefile.registry import Directive, Option, sample
from nodecache.corefile.values import (
    PLAIN_NUMBER,
    Ctx,
    arity,
    duration,
    integer,
    looks_like_duration,
    whole_seconds,
    within,
    zone,
)
from nodecache.errors import ConfigError

if TYPE_CHECKING:
    from nodecache.corefile.model import ServerBlock

# Named as CoreDNS names them, so each can be checked against its plugin's README.
COREDNS_CACHE_CAPACITY = 10000  # `cache` without CAPACITY
COREDNS_CACHE_SHARDS = 256  # a CoreDNS cache is 256 shards of CAPACITY // 256 entries...
COREDNS_CACHE_MIN_SHARD = 4  # ...and never fewer than 4 per shard
COREDNS_SUCCESS_MAX_TTL = 3600  # `cache` without TTL, NOERROR answers
COREDNS_DENIAL_MAX_TTL = 1800  # `cache` without TTL, NXDOMAIN/NODATA
COREDNS_MIN_TTL = 5  # MINTTL when not given; a TTL of 0 still means "do not cache" here
COREDNS_SERVFAIL_TTL = 5.0  # `servfail` when not given
COREDNS_SERVFAIL_MAX = 300.0  # RFC 2308: SERVFAIL may not be cached longer than 5 minutes
COREDNS_PREFETCH_DURATION = 60.0  # `prefetch AMOUNT` without DURATION
COREDNS_PREFETCH_PERCENTAGE = 10  # ... without PERCENTAGE%
COREDNS_STALE_DURATION = 3600.0  # `serve_stale` without DURATION
STALE_REFRESH_MODES = ("immediate", "verify")

NO_CACHE = CachePolicy(success_capacity=0, denial_capacity=0, servfail_ttl=0, stale_window=0)  # a block without `cache`


@dataclass(frozen=True)
class PrefetchSpec:
    """`prefetch AMOUNT [DURATION [PERCENTAGE%]]`: refresh popular entries before they expire."""

    amount: int
    duration: float = COREDNS_PREFETCH_DURATION
    percentage: int = COREDNS_PREFETCH_PERCENTAGE


@dataclass(frozen=True)
class StaleSpec:
    """`serve_stale [DURATION [REFRESH_MODE]]`: answer from expired entries for DURATION."""

    duration: float = COREDNS_STALE_DURATION
    refresh_mode: str = "immediate"


@dataclass(frozen=True)
class CacheSpec:
    """The `cache` directive with its options, CoreDNS defaults filled in."""

    line: int
    zones: tuple[str, ...] = ()  # empty: the server block's zones
    success_capacity: int = COREDNS_CACHE_CAPACITY
    success_max_ttl: int = COREDNS_SUCCESS_MAX_TTL
    success_min_ttl: int = COREDNS_MIN_TTL
    denial_capacity: int = COREDNS_CACHE_CAPACITY
    denial_max_ttl: int = COREDNS_DENIAL_MAX_TTL
    denial_min_ttl: int = COREDNS_MIN_TTL
    servfail_ttl: float = COREDNS_SERVFAIL_TTL
    prefetch: PrefetchSpec | None = None
    serve_stale: StaleSpec | None = None
    disable_success: tuple[str, ...] = ()  # zones where positive answers are not cached
    disable_denial: tuple[str, ...] = ()
    keepttl: bool = False
    option_lines: tuple[tuple[str, int], ...] = field(default=(), compare=False)  # (option, line), for errors

    def line_of(self, option: str) -> int:
        """The line an option was written on (the directive's when not found)."""
        return next((line for name, line in self.option_lines if name == option), self.line)


_Option = Callable[[CacheSpec, Ctx, list[Token]], CacheSpec]


def parse(block: ServerBlock, ctx: Ctx, item: Line) -> ServerBlock:
    spec = CacheSpec(item.line)
    args = list(item.args)
    if args and args[0].text.isascii() and args[0].text.isdigit():
        ttl = integer(ctx, args.pop(0), "TTL", minimum=1)
        spec = replace(spec, success_max_ttl=ttl, denial_max_ttl=ttl)
    elif args and looks_like_duration(args[0].text) and not PLAIN_NUMBER.fullmatch(args[0].text):
        raise ctx.at(args[0].line).fail(f"TTL is whole seconds: write {args[0].text!r} as a number, e.g. cache 30")
    if args:
        spec = replace(spec, zones=tuple(zone(ctx, t) for t in args))
    seen: dict[str, int] = {}
    for opt in item.block or ():
        name = opt.name.text
        octx = Ctx(ctx.source, opt.line, f"cache {name}")
        if name not in _OPTIONS:
            raise octx.fail(f"unknown cache option; use one of {', '.join(_OPTIONS)}")
        if name in seen and name != "disable":
            raise octx.fail(f"appears twice in this cache block (first on line {seen[name]}); keep one")
        seen.setdefault(name, opt.line)
        if opt.block is not None:
            raise octx.fail("takes no block of its own")
        spec = _OPTIONS[name](spec, octx, opt.args)
    return replace(block, cache=replace(spec, option_lines=tuple(seen.items())))


def _kind(kind: str) -> _Option:
    def handle(spec: CacheSpec, ctx: Ctx, args: list[Token]) -> CacheSpec:
        arity(ctx, args, 1, 3, f"{kind} CAPACITY [TTL [MINTTL]]")
        values: dict[str, Any] = {f"{kind}_capacity": integer(ctx, args[0], "CAPACITY")}
        if len(args) > 1:
            values[f"{kind}_max_ttl"] = integer(ctx, args[1], "TTL", minimum=1)
        if len(args) > 2:
            values[f"{kind}_min_ttl"] = integer(ctx, args[2], "MINTTL")
        return replace(spec, **values)

    return handle


def _prefetch(spec: CacheSpec, ctx: Ctx, args: list[Token]) -> CacheSpec:
    arity(ctx, args, 1, 3, "prefetch AMOUNT [DURATION [PERCENTAGE%]]")
    amount = integer(ctx, args[0], "AMOUNT")  # 0: off, as in CoreDNS
    seconds = duration(ctx, args[1], "DURATION") if len(args) > 1 else COREDNS_PREFETCH_DURATION
    if seconds <= 0:
        raise ctx.at(args[1].line).fail(f"DURATION must be more than 0, got {args[1].text!r}")
    percentage = COREDNS_PREFETCH_PERCENTAGE
    if len(args) > 2:
        text = args[2].text
        low, high = PREFETCH_PERCENTAGE_RANGE
        if not text.endswith("%") or not text[:-1].isascii() or not text[:-1].isdigit() or not low <= int(text[:-1]) <= high:
            raise ctx.at(args[2].line).fail(f"PERCENTAGE must be {low}% to {high}% with the % sign, got {text!r}")
        percentage = int(text[:-1])
    return replace(spec, prefetch=PrefetchSpec(amount, seconds, percentage))


class _FlagCtx(Ctx):
    """Words of a command-line flag rather than a Corefile line: messages name the flag."""

    def at(self, line: int) -> Ctx:
        return self

    def fail(self, message: str) -> ConfigError:
        return ConfigError(f"{self.directive}: {message}")


def prefetch_flag(text: str) -> PrefetchSpec:
    """`--prefetch "AMOUNT [DURATION [PERCENTAGE%]]"`: the directive's words, checked by the same parser."""
    words = [Token(w, 1, 1) for w in text.split()]
    spec = _prefetch(CacheSpec(0), _FlagCtx("--prefetch", 1, f"--prefetch {text!r}"), words)
    assert spec.prefetch is not None
    return spec.prefetch


def _serve_stale(spec: CacheSpec, ctx: Ctx, args: list[Token]) -> CacheSpec:
    arity(ctx, args, 0, 2, "serve_stale [DURATION [immediate|verify]]")
    seconds = whole_seconds(ctx, args[0], "DURATION") if args else COREDNS_STALE_DURATION
    mode = args[1].text.lower() if len(args) > 1 else "immediate"
    if mode not in STALE_REFRESH_MODES:
        raise ctx.at(args[1].line).fail(f"REFRESH_MODE must be {' or '.join(STALE_REFRESH_MODES)}, got {args[1].text!r}")
    return replace(spec, serve_stale=StaleSpec(float(seconds), mode))


def _servfail(spec: CacheSpec, ctx: Ctx, args: list[Token]) -> CacheSpec:
    arity(ctx, args, 1, 1, "servfail DURATION")
    seconds = whole_seconds(ctx, args[0], "DURATION")
    if seconds > COREDNS_SERVFAIL_MAX:
        raise ctx.at(args[0].line).fail("SERVFAIL may be cached at most 5m (RFC 2308); 0 disables it")
    return replace(spec, servfail_ttl=float(seconds))


def _disable(spec: CacheSpec, ctx: Ctx, args: list[Token]) -> CacheSpec:
    if not args or args[0].text not in ("success", "denial"):
        raise ctx.fail("expected disable success|denial [ZONES...]")
    zones = tuple(zone(ctx, t) for t in args[1:]) or (".",)
    if args[0].text == "success":
        return replace(spec, disable_success=tuple(dict.fromkeys((*spec.disable_success, *zones))))
    return replace(spec, disable_denial=tuple(dict.fromkeys((*spec.disable_denial, *zones))))


def _keepttl(spec: CacheSpec, ctx: Ctx, args: list[Token]) -> CacheSpec:
    arity(ctx, args, 0, 0, "keepttl without arguments")
    return replace(spec, keepttl=True)


_OPTIONS: dict[str, _Option] = {
    "success": _kind("success"),
    "denial": _kind("denial"),
    "prefetch": _prefetch,
    "serve_stale": _serve_stale,
    "servfail": _servfail,
    "disable": _disable,
    "keepttl": _keepttl,
}

# ------------------------------------------------------------------ to Config


def coredns_capacity(requested: int) -> int:
    """Entries a CoreDNS cache really holds: 256 shards of requested // 256, at least 4 each.

    So `cache` without CAPACITY (10000) and node-local-dns's explicit 9984 both hold 9984.
    """
    return max(requested // COREDNS_CACHE_SHARDS, COREDNS_CACHE_MIN_SHARD) * COREDNS_CACHE_SHARDS


def cache_policy(spec: CacheSpec, success: bool = True, denial: bool = True) -> CachePolicy:
    """The CachePolicy a `cache` directive means; `success`/`denial` False: that half disabled.

    A minimum TTL above the maximum yields to the maximum, as CoreDNS clamps.
    Disabling denial also stops SERVFAIL caching: CoreDNS keeps both in one cache.
    """
    # Without `serve_stale` the agent's default applies (on, verify): nodecache serves stale by default.
    stale = int(spec.serve_stale.duration) if spec.serve_stale else CachePolicy.stale_window
    mode = spec.serve_stale.refresh_mode if spec.serve_stale else CachePolicy.stale_mode
    return CachePolicy(
        success_capacity=coredns_capacity(spec.success_capacity) if success else 0,
        success_max_ttl=spec.success_max_ttl,
        success_min_ttl=min(spec.success_min_ttl, spec.success_max_ttl),
        denial_capacity=coredns_capacity(spec.denial_capacity) if denial else 0,
        denial_max_ttl=spec.denial_max_ttl,
        denial_min_ttl=min(spec.denial_min_ttl, spec.denial_max_ttl),
        servfail_ttl=int(spec.servfail_ttl) if denial else 0,
        stale_window=stale,
        stale_mode=mode,
        **prefetch_fields(spec.prefetch),
        keepttl=spec.keepttl,
    )


def prefetch_fields(prefetch: PrefetchSpec | None) -> dict[str, Any]:
    """CachePolicy's prefetch fields for a `prefetch` option (None: off)."""
    if prefetch is None:
        return {}
    return {
        "prefetch_amount": prefetch.amount,
        "prefetch_duration": prefetch.duration,
        "prefetch_percentage": prefetch.percentage,
    }


def zones_of(block: ServerBlock, name: str, forward: ForwardPolicy, explicit: set[str]) -> list[Zone]:
    """The Zones one block zone becomes: itself, plus sub-zones whose caching differs.

    `cache 30 example.org` in a `.` block caches only below example.org, and
    `disable success example.org` stops positive caching there. A Zone has one
    CachePolicy, so such names get their own Zone with the same upstreams. A name
    that another server block owns is left to that block, as CoreDNS routes it there.
    """
    spec = block.cache
    if spec is None:
        return [Zone(name, forward, NO_CACHE)]
    cached = spec.zones or block.zones

    def policy_at(point: str) -> CachePolicy:
        if not any(within(point, z) for z in cached):
            return NO_CACHE
        return cache_policy(
            spec,
            success=not any(within(point, z) for z in spec.disable_success),
            denial=not any(within(point, z) for z in spec.disable_denial),
        )

    def owned_elsewhere(point: str) -> bool:
        return any(e != name and within(e, name) and within(point, e) for e in explicit)

    points = {
        p
        for p in (*spec.zones, *spec.disable_success, *spec.disable_denial)
        if p != name and within(p, name) and not owned_elsewhere(p)
    }
    result = [(name, policy_at(name))]
    for point in sorted(points, key=lambda n: n.count(".")):
        parent = max((r for r in result if within(point, r[0])), key=lambda r: r[0].count("."))
        policy = policy_at(point)
        if policy != parent[1]:
            result.append((point, policy))
    return [Zone(z, forward, policy) for z, policy in result]


def _in_cache(*options: str) -> str:
    return sample("cache {\n" + "\n".join(options) + "\n}")


CACHE = Directive(
    "cache",
    parse,
    (
        Option("cache", sample("cache"), reaches=("zones.cache",)),
        Option("cache TTL", sample("cache 30"), sample("cache"),
               reaches=("zones.cache.success_max_ttl", "zones.cache.denial_max_ttl")),
        Option("cache ZONES", sample("cache example.org"), sample("cache"), reaches=("zones",)),
        Option("cache success", _in_cache("success 5000 60 10"), sample("cache"),
               reaches=("zones.cache.success_capacity", "zones.cache.success_max_ttl", "zones.cache.success_min_ttl")),
        Option("cache denial", _in_cache("denial 5000 60 10"), sample("cache"),
               reaches=("zones.cache.denial_capacity", "zones.cache.denial_max_ttl", "zones.cache.denial_min_ttl")),
        Option("cache prefetch", _in_cache("prefetch 5 30s 20%"), sample("cache"),
               reaches=("zones.cache.prefetch_amount", "zones.cache.prefetch_duration", "zones.cache.prefetch_percentage")),
        Option("cache serve_stale", _in_cache("serve_stale 10m immediate"), sample("cache"),
               reaches=("zones.cache.stale_window", "zones.cache.stale_mode")),
        Option("cache servfail", _in_cache("servfail 2s"), sample("cache"), reaches=("zones.cache.servfail_ttl",)),
        Option("cache disable", _in_cache("disable denial"), sample("cache"),
               reaches=("zones.cache.denial_capacity", "zones.cache.servfail_ttl")),
        Option("cache disable ZONES", _in_cache("disable success example.org"), sample("cache"), reaches=("zones",)),
        Option("cache keepttl", _in_cache("keepttl"), sample("cache"), reaches=("zones.cache.keepttl",)),
    ),
    words=tuple(_OPTIONS),
)
