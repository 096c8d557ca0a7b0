"""The Corefile subset node-local-dns uses, parsed into frozen data, then into a Config.

Operators moving from node-local-dns keep their ConfigMap: this module reads the
Corefile syntax (server blocks, directives, option blocks) and the directives
node-local-dns and its users actually write, with CoreDNS's defaults and meanings.
Anything it does not understand is refused with `FILE:LINE: what is wrong and what
is expected`, never skipped: a silently ignored line is a cache that behaves
differently from what its operator reads.

Two steps, so a half-applied config never exists:

1. `parse_corefile` reads the whole text into `CorefileConfig` (pure data, every
   value checked, each item remembering its line);
2. `to_config` turns that into the agent's `Config`, combined with command-line
   overrides, refusing what the running agent cannot honour yet.

Only once both succeed does the caller have anything to run.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nodecache.config import (
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_TIMEOUT,
    DEFAULT_TRY_TIMEOUT,
    DNS_PORT,
    POLICIES,
    Address,
    CachePolicy,
    Config,
    ForwardPolicy,
    Zone,
    canonical_zone,
    read_resolv_conf,
    without_self,
)
from nodecache.errors import ConfigError

# ------------------------------------------------------------------ CoreDNS defaults
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
PREFETCH_PERCENTAGE_RANGE = (10, 90)
COREDNS_STALE_DURATION = 3600.0  # `serve_stale` without DURATION
STALE_REFRESH_MODES = ("immediate", "verify")
COREDNS_RELOAD_INTERVAL = 30.0
COREDNS_RELOAD_JITTER = 15.0
RELOAD_MIN_INTERVAL = 2.0
RELOAD_MIN_JITTER = 1.0
COREDNS_HEALTH_PORT = 8080  # `health` without an address listens on :8080
COREDNS_METRICS_ADDRESS = ("127.0.0.1", 9153)  # `prometheus` without an address: localhost:9153
COREDNS_HOSTS_FILE = "/etc/hosts"  # `hosts` without FILE
COREDNS_HOSTS_TTL = 3600
COREDNS_HOSTS_RELOAD = 5.0
# forward: CoreDNS's max_fails 2, health_check 0.5s, expire 10s and policy random are
# ForwardPolicy's defaults already. CoreDNS leaves max_concurrent unlimited; nodecache
# keeps its bound (DEFAULT_MAX_CONCURRENT) so in-flight work cannot grow without limit.

WILDCARD_LISTEN = ("0.0.0.0", "::")  # a block without `bind` listens everywhere, as CoreDNS
ALL_ADDRESSES = "0.0.0.0"  # `:PORT` endpoints (health, prometheus) listen on every address
SUPPORTED_DIRECTIVES = (
    "errors", "log", "reload", "loop", "bind", "health", "prometheus", "cache", "forward", "template", "hosts",
)
REPEATABLE_DIRECTIVES = ("bind", "template")
DNS_CLASSES = {"IN": 1, "CH": 3, "HS": 4, "ANY": 255}
TEMPLATE_RCODES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED")

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_PLAIN_NUMBER = re.compile(r"\d+(?:\.\d+)?")


# ------------------------------------------------------------------ parsed data


@dataclass(frozen=True)
class Endpoint:
    """An HTTP listen address of `health` or `prometheus`; host "" means every address."""

    host: str
    port: int

    def __str__(self) -> str:
        host = self.host or ALL_ADDRESSES
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


@dataclass(frozen=True)
class ZoneKey:
    """One `ZONE[:PORT]` of a server block's header."""

    zone: str  # canonical: lowercase, trailing dot
    port: int


@dataclass(frozen=True)
class ReloadSpec:
    """`reload [INTERVAL [JITTER]]`: how often the Corefile is checked for changes."""

    interval: float = COREDNS_RELOAD_INTERVAL
    jitter: float = COREDNS_RELOAD_JITTER


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


@dataclass(frozen=True)
class ForwardSpec:
    """The `forward` directive: where misses go and how."""

    line: int
    from_zone: str
    upstreams: tuple[Address, ...]
    resolv_conf_upstreams: tuple[Address, ...] = ()  # the subset read from resolv.conf files
    force_tcp: bool = False
    prefer_udp: bool = False  # nodecache's default already: UDP first, TCP when truncated
    policy: str = "random"
    max_fails: int = ForwardPolicy.max_fails
    health_check: float = ForwardPolicy.health_check
    expire: float = ForwardPolicy.expire
    max_concurrent: int = DEFAULT_MAX_CONCURRENT


@dataclass(frozen=True)
class TemplateSpec:
    """`template CLASS TYPE [ZONES...] { rcode RCODE }`: a fixed, answerless reply."""

    line: int
    qclass: str  # IN, CH, HS or ANY
    qtype: str  # a type name, or ANY
    zones: tuple[str, ...]  # empty: the server block's zones
    rcode: str = "NOERROR"


@dataclass(frozen=True)
class HostsEntry:
    """One `IP NAME...` line of a hosts table."""

    address: str
    names: tuple[str, ...]  # canonical


@dataclass(frozen=True)
class HostsSpec:
    """`hosts [FILE [ZONES...]] { IP NAME...; ttl; no_reverse; reload; fallthrough }`."""

    line: int
    file: str = COREDNS_HOSTS_FILE
    zones: tuple[str, ...] = ()  # empty: the server block's zones
    entries: tuple[HostsEntry, ...] = ()
    ttl: int = COREDNS_HOSTS_TTL
    reverse: bool = True  # answer PTR for the entries (off with no_reverse)
    reload: float = COREDNS_HOSTS_RELOAD
    fallthrough: tuple[str, ...] | None = None  # None: no fallthrough; (): every zone


@dataclass(frozen=True)
class ServerBlock:
    """One `ZONE[:PORT]... { ... }` block, everything in it parsed and checked."""

    source: str
    line: int
    keys: tuple[ZoneKey, ...]
    errors: bool = False
    log: bool = False
    reload: ReloadSpec | None = None
    loop: bool = False
    bind: tuple[str, ...] = ()  # empty: every address, as CoreDNS
    health: Endpoint | None = None
    lameduck: float = 0.0
    prometheus: Endpoint | None = None
    cache: CacheSpec | None = None
    forward: ForwardSpec | None = None
    templates: tuple[TemplateSpec, ...] = ()
    hosts: HostsSpec | None = None

    @property
    def zones(self) -> tuple[str, ...]:
        return tuple(k.zone for k in self.keys)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass(frozen=True)
class CorefileConfig:
    """A whole parsed Corefile: its server blocks in file order."""

    source: str
    blocks: tuple[ServerBlock, ...]

    @property
    def reload(self) -> ReloadSpec | None:
        """The agent-wide reload check: the most frequent one any block asks for.

        CoreDNS's reload watches the whole Corefile, whichever block names it.
        """
        specs = [b.reload for b in self.blocks if b.reload is not None]
        return min(specs, key=lambda s: (s.interval, s.jitter)) if specs else None


@dataclass(frozen=True)
class Overrides:
    """Command-line values that win over the Corefile; None means "not given".

    Order, lowest to highest: built-in defaults, then the Corefile, then these.
    """

    listen: tuple[str, ...] | None = None
    port: int | None = None
    try_timeout: float | None = None
    timeout: float | None = None
    tcp_idle_timeout: float | None = None
    max_udp_payload: int | None = None
    loop: str | None = None
    metrics_address: str | None = None
    health_address: str | None = None
    lameduck: float | None = None


# ------------------------------------------------------------------ lexing


@dataclass(frozen=True)
class Token:
    """A word of the Corefile and the lines it starts and ends on."""

    text: str
    line: int
    end_line: int
    quoted: bool = False

    @property
    def is_open(self) -> bool:
        return self.text == "{" and not self.quoted

    @property
    def is_close(self) -> bool:
        return self.text == "}" and not self.quoted


def tokenize(text: str, source: str) -> list[Token]:
    """Split Corefile text into words; `#` starts a comment, "..." quotes (\\" escapes)."""
    tokens: list[Token] = []
    i, line, n = 0, 1, len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
            i += 1
        elif ch.isspace():
            i += 1
        elif ch == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif ch == '"':
            start, i, chars = line, i + 1, []
            while True:
                if i >= n:
                    raise ConfigError(f"{source}:{start}: this quoted text is never closed; add the closing '\"'")
                if text[i] == "\\" and i + 1 < n and text[i + 1] == '"':
                    chars.append('"')
                    i += 2
                    continue
                if text[i] == '"':
                    i += 1
                    break
                if text[i] == "\n":
                    line += 1
                chars.append(text[i])
                i += 1
            if i < n and not text[i].isspace():
                raise ConfigError(f"{source}:{line}: text follows a closing quote; separate words with a space")
            tokens.append(Token("".join(chars), start, line, quoted=True))
        else:
            start = i
            while i < n and not text[i].isspace():
                i += 1
            word = text[start:i]
            _check_word(word, source, line)
            tokens.append(Token(word, line, line))
    return tokens


def _check_word(word: str, source: str, line: int) -> None:
    """Refuse words the Corefile format gives a meaning we do not implement."""
    if word.startswith(("{$", "{%")):
        raise ConfigError(
            f"{source}:{line}: environment placeholders like {word} are not supported; "
            "write the value, or use a __PILLAR__ placeholder"
        )
    if word not in ("{", "}") and ("{" in word or "}" in word):
        raise ConfigError(f"{source}:{line}: {word!r}: braces must stand alone, separated from other words by spaces")


# ------------------------------------------------------------------ generic structure


@dataclass
class _Line:
    """A directive (or option) line: its name, arguments and optional block."""

    name: Token
    args: list[Token]
    block: list[_Line] | None = None

    @property
    def line(self) -> int:
        return self.name.line


@dataclass
class _RawBlock:
    keys: list[Token]
    body: list[_Line]


class _Reader:
    """Groups tokens into server blocks of directive lines (at most two levels deep)."""

    def __init__(self, tokens: list[Token], source: str) -> None:
        self.tokens = tokens
        self.pos = 0
        self.source = source

    def fail(self, line: int, message: str) -> ConfigError:
        return ConfigError(f"{self.source}:{line}: {message}")

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> Token:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def server_blocks(self) -> Iterator[_RawBlock]:
        while (tok := self.peek()) is not None:
            if tok.is_close:
                raise self.fail(tok.line, "'}' closes no block; remove it or add the block it should close")
            if tok.is_open:
                raise self.fail(tok.line, "'{' opens a block without zones; write ZONE[:PORT] {, e.g. .:53 {")
            if tok.text == "import" and not tok.quoted:
                raise self.fail(tok.line, "import is not supported; paste the imported text into this Corefile")
            if tok.text.startswith("(") and tok.text.endswith(")"):
                raise self.fail(tok.line, f"snippet {tok.text} is not supported (nor is import); write the block out in full")
            keys = [self.take()]
            # Keys continue on the next line only after a trailing comma, as in CoreDNS.
            while (nxt := self.peek()) is not None and not nxt.is_open and not nxt.is_close and (
                nxt.line == keys[-1].end_line or keys[-1].text.endswith(",")
            ):
                keys.append(self.take())
            opener = self.peek()
            if opener is None or not opener.is_open or opener.line != keys[-1].end_line:
                raise self.fail(
                    keys[-1].end_line,
                    "expected '{' at the end of this line to open the server block of "
                    f"{' '.join(k.text for k in keys)}; write ZONE[:PORT]... {{",
                )
            self.take()
            yield _RawBlock(keys, self.body(opener, depth=1))

    def body(self, opener: Token, depth: int) -> list[_Line]:
        lines: list[_Line] = []
        while True:
            tok = self.peek()
            if tok is None:
                raise self.fail(opener.line, "the block opened here is never closed; add the matching '}'")
            self.take()
            if tok.is_close:
                return lines
            if tok.is_open:
                raise self.fail(tok.line, "'{' without a directive before it on the same line")
            if tok.text == "import" and not tok.quoted:
                raise self.fail(tok.line, "import is not supported; paste the imported text into this Corefile")
            item = _Line(tok, [])
            last = tok
            while (nxt := self.peek()) is not None and nxt.line == last.end_line and not nxt.is_open and not nxt.is_close:
                last = self.take()
                item.args.append(last)
            nxt = self.peek()
            if nxt is not None and nxt.is_open and nxt.line == last.end_line:
                if depth >= 2:
                    raise self.fail(nxt.line, f"{tok.text} cannot open a block here; options take no block of their own")
                self.take()
                item.block = self.body(nxt, depth + 1)
            lines.append(item)


# ------------------------------------------------------------------ value parsers


class _Ctx:
    """Where we are (file, line, directive), to word error messages the same way everywhere."""

    def __init__(self, source: str, line: int, directive: str) -> None:
        self.source, self.line, self.directive = source, line, directive

    def at(self, line: int) -> _Ctx:
        return _Ctx(self.source, line, self.directive)

    def fail(self, message: str) -> ConfigError:
        return ConfigError(f"{self.source}:{self.line}: {self.directive}: {message}")


_Handler = Callable[[ServerBlock, _Ctx, _Line], ServerBlock]
_CacheOption = Callable[[CacheSpec, _Ctx, list[Token]], CacheSpec]
_ForwardOption = Callable[[ForwardSpec, _Ctx, list[Token]], ForwardSpec]


def parse_duration(text: str) -> float:
    """Seconds in a CoreDNS (Go) duration: `5s`, `1m`, `1h30m`, `300ms`; a bare number is seconds."""
    if _PLAIN_NUMBER.fullmatch(text):
        return float(text)
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(text)
    return total


def _duration(ctx: _Ctx, tok: Token, what: str) -> float:
    try:
        return parse_duration(tok.text)
    except ValueError:
        raise ctx.at(tok.line).fail(
            f"{what} {tok.text!r} is not a duration; write e.g. 30s, 5m, 1h30m or 500ms (a bare number is seconds)"
        ) from None


def _whole_seconds(ctx: _Ctx, tok: Token, what: str) -> int:
    seconds = _duration(ctx, tok, what)
    if seconds != int(seconds):
        raise ctx.at(tok.line).fail(f"{what} {tok.text!r} must be a whole number of seconds (DNS TTLs are)")
    return int(seconds)


def _int(ctx: _Ctx, tok: Token, what: str, minimum: int = 0) -> int:
    text = tok.text
    if not (text.isascii() and text.isdigit()):
        hint = " (TTLs here are whole seconds: write 30, not 30s)" if _looks_like_duration(text) else ""
        raise ctx.at(tok.line).fail(f"{what} must be a whole number, got {text!r}{hint}")
    value = int(text)
    if value < minimum:
        raise ctx.at(tok.line).fail(f"{what} must be at least {minimum}, got {value}")
    return value


def _looks_like_duration(text: str) -> bool:
    try:
        parse_duration(text)
    except ValueError:
        return False
    return True


def _zone(ctx: _Ctx, tok: Token) -> str:
    try:
        return canonical_zone(tok.text)
    except ConfigError as exc:
        raise ctx.at(tok.line).fail(str(exc)) from None


def _ip(ctx: _Ctx, tok: Token, what: str, hint: str = "interface names are not supported") -> str:
    try:
        return str(ipaddress.ip_address(tok.text))
    except ValueError:
        raise ctx.at(tok.line).fail(f"{what} {tok.text!r} is not an IP address ({hint})") from None


def _arity(ctx: _Ctx, args: Sequence[Token], low: int, high: int, usage: str) -> None:
    if not low <= len(args) <= high:
        line = args[high].line if len(args) > high else ctx.line
        raise ctx.at(line).fail(f"expected {usage}, got {len(args)} argument{'s' if len(args) != 1 else ''}")


def _no_block(ctx: _Ctx, item: _Line) -> None:
    if item.block is not None:
        raise ctx.fail("takes no block of options")


def _endpoint(ctx: _Ctx, tok: Token) -> Endpoint:
    """`[HOST]:PORT`, `HOST:PORT` or `:PORT` for an HTTP listener."""
    text = tok.text
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_text = rest[1:] if sep and rest.startswith(":") else None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            port_text = None
    if port_text is None or not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ctx.at(tok.line).fail(f"{text!r} is not an address; write [ADDR]:PORT, e.g. :9253 or 169.254.20.10:8080")
    if host == "localhost":
        host = "127.0.0.1"
    elif host:
        host = _ip(ctx, Token(host, tok.line, tok.line), "address", "write an IP, localhost, or nothing for every address")
    return Endpoint(host, int(port_text))


# ------------------------------------------------------------------ server block keys


def _keys(raw: list[Token], source: str) -> tuple[ZoneKey, ...]:
    ctx = _Ctx(source, raw[0].line, "server block")
    keys: list[ZoneKey] = []
    for tok in raw:
        for part in tok.text.split(","):
            if part:
                keys.extend(_key(ctx.at(tok.line), part))
    seen: set[ZoneKey] = set()
    for key in keys:
        if key in seen:
            raise ctx.fail(f"zone {key.zone} port {key.port} is listed twice")
        seen.add(key)
    return tuple(keys)


def _key(ctx: _Ctx, text: str) -> list[ZoneKey]:
    """`[dns://]ZONE[:PORT]`; ZONE may be a CIDR, meaning its reverse zones."""
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme.lower() != "dns":
            raise ctx.fail(f"{text!r}: {scheme}:// is not served; nodecache answers plain DNS over UDP and TCP (dns://)")
        text = rest
    zone, port = text, DNS_PORT
    head, sep, tail = text.rpartition(":")
    if sep and tail.isascii() and tail.isdigit() and (head.count(":") == 0 or "/" in head or head.endswith("]")):
        zone, port = head, int(tail)
        if not 0 <= port <= 65535:
            raise ctx.fail(f"port {port} in {text!r} is out of range 0-65535")
    if "/" in zone:
        return [ZoneKey(z, port) for z in _reverse_zones(ctx, zone.strip("[]"))]
    try:
        return [ZoneKey(canonical_zone(zone), port)]
    except ConfigError as exc:
        raise ctx.fail(f"{exc}; a server block starts with ZONE[:PORT], e.g. cluster.local:53") from None


def _reverse_zones(ctx: _Ctx, cidr: str) -> list[str]:
    """The in-addr.arpa / ip6.arpa zones that cover a network, as CoreDNS expands them.

    A prefix off an octet (nibble) boundary becomes every zone at the next boundary:
    192.0.2.0/23 is 2.0.192 and 3.0.192.in-addr.arpa; at most 128 (IPv4) or 8 (IPv6).
    """
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise ctx.fail(f"{cidr!r} is not a network; write e.g. 192.0.2.0/24") from None
    unit = 8 if net.version == 4 else 4  # octets for IPv4, nibbles for IPv6
    units_total = net.max_prefixlen // unit
    prefix = math.ceil(net.prefixlen / unit) * unit
    zones = []
    for sub in net.subnets(new_prefix=prefix):
        labels = sub.network_address.reverse_pointer.split(".")
        zones.append(".".join(labels[units_total - prefix // unit :]) + ".")
    return zones


# ------------------------------------------------------------------ directives


def _parse_block(raw: _RawBlock, source: str) -> ServerBlock:
    block = ServerBlock(source, raw.keys[0].line, _keys(raw.keys, source))
    seen: dict[str, int] = {}
    for item in raw.body:
        name = item.name.text
        ctx = _Ctx(source, item.line, name)
        if name not in SUPPORTED_DIRECTIVES:
            raise ctx.fail(
                f"unknown directive; nodecache supports {', '.join(SUPPORTED_DIRECTIVES)} "
                "(see docs/migrate.md)"
            )
        if name in seen and name not in REPEATABLE_DIRECTIVES:
            raise ctx.fail(f"appears twice in this server block (first on line {seen[name]}); keep one")
        seen.setdefault(name, item.line)
        block = _DIRECTIVES[name](block, ctx, item)
    if block.forward is None:
        raise ConfigError(
            f"{block.where}: the server block for {', '.join(block.zones)} has no forward; "
            "add e.g. `forward . 192.0.2.10` so its misses have somewhere to go"
        )
    return block


def _flag(field_name: str) -> _Handler:
    def handle(block: ServerBlock, ctx: _Ctx, item: _Line) -> ServerBlock:
        if item.args:
            raise ctx.at(item.args[0].line).fail(f"takes no arguments in nodecache, got {item.args[0].text!r}")
        _no_block(ctx, item)
        on: dict[str, Any] = {field_name: True}
        return replace(block, **on)

    return handle


def _reload(block: ServerBlock, ctx: _Ctx, item: _Line) -> ServerBlock:
    _no_block(ctx, item)
    _arity(ctx, item.args, 0, 2, "reload [INTERVAL [JITTER]]")
    interval = _duration(ctx, item.args[0], "INTERVAL") if item.args else COREDNS_RELOAD_INTERVAL
    jitter = _duration(ctx, item.args[1], "JITTER") if len(item.args) > 1 else COREDNS_RELOAD_JITTER
    if interval < RELOAD_MIN_INTERVAL:
        raise ctx.fail(f"INTERVAL must be at least {RELOAD_MIN_INTERVAL:g}s")
    if jitter and jitter < RELOAD_MIN_JITTER:
        raise ctx.fail(f"JITTER must be 0 or at least {RELOAD_MIN_JITTER:g}s")
    return replace(block, reload=ReloadSpec(interval, min(jitter, interval / 2)))


def _bind(block: ServerBlock, ctx: _Ctx, item: _Line) -> ServerBlock:
    if item.block is not None:
        raise ctx.fail("bind options (except) are not supported; list the addresses to serve on")
    if not item.args:
        raise ctx.fail("expected bind IP..., at least one address")
    addresses = [_ip(ctx, t, "address") for t in item.args]
    return replace(block, bind=tuple(dict.fromkeys((*block.bind, *addresses))))


def _health(block: ServerBlock, ctx: _Ctx, item: _Line) -> ServerBlock:
    _arity(ctx, item.args, 0, 1, "health [ADDR]:PORT")
    endpoint = _endpoint(ctx, item.args[0]) if item.args else Endpoint("", COREDNS_HEALTH_PORT)
    lameduck = 0.0
    for opt in item.block or ():
        octx = ctx.at(opt.line)
        if opt.name.text != "lameduck":
            raise octx.fail(f"unknown option {opt.name.text!r}; health supports lameduck DURATION")
        _arity(octx, opt.args, 1, 1, "lameduck DURATION")
        lameduck = _duration(octx, opt.args[0], "lameduck")
    return replace(block, health=endpoint, lameduck=lameduck)


def _prometheus(block: ServerBlock, ctx: _Ctx, item: _Line) -> ServerBlock:
    _no_block(ctx, item)
    _arity(ctx, item.args, 0, 1, "prometheus [ADDR]:PORT")
    endpoint = _endpoint(ctx, item.args[0]) if item.args else Endpoint(*COREDNS_METRICS_ADDRESS)
    return replace(block, prometheus=endpoint)


def _cache(block: ServerBlock, ctx: _Ctx, item: _Line) -> ServerBlock:
    spec = CacheSpec(item.line)
    args = list(item.args)
    if args and args[0].text.isascii() and args[0].text.isdigit():
        ttl = _int(ctx, args.pop(0), "TTL", minimum=1)
        spec = replace(spec, success_max_ttl=ttl, denial_max_ttl=ttl)
    elif args and _looks_like_duration(args[0].text) and not _PLAIN_NUMBER.fullmatch(args[0].text):
        raise ctx.at(args[0].line).fail(f"TTL is whole seconds: write {args[0].text!r} as a number, e.g. cache 30")
    if args:
        spec = replace(spec, zones=tuple(_zone(ctx, t) for t in args))
    seen: dict[str, int] = {}
    for opt in item.block or ():
        name = opt.name.text
        octx = _Ctx(ctx.source, opt.line, f"cache {name}")
        if name not in _CACHE_OPTIONS:
            raise octx.fail(f"unknown cache option; use one of {', '.join(_CACHE_OPTIONS)}")
        if name in seen and name != "disable":
            raise octx.fail(f"appears twice in this cache block (first on line {seen[name]}); keep one")
        seen.setdefault(name, opt.line)
        if opt.block is not None:
            raise octx.fail("takes no block of its own")
        spec = _CACHE_OPTIONS[name](spec, octx, opt.args)
    return replace(block, cache=spec)


def _cache_kind(kind: str) -> _CacheOption:
    def handle(spec: CacheSpec, ctx: _Ctx, args: list[Token]) -> CacheSpec:
        _arity(ctx, args, 1, 3, f"{kind} CAPACITY [TTL [MINTTL]]")
        values: dict[str, Any] = {f"{kind}_capacity": _int(ctx, args[0], "CAPACITY")}
        if len(args) > 1:
            values[f"{kind}_max_ttl"] = _int(ctx, args[1], "TTL", minimum=1)
        if len(args) > 2:
            values[f"{kind}_min_ttl"] = _int(ctx, args[2], "MINTTL")
        return replace(spec, **values)

    return handle


def _prefetch(spec: CacheSpec, ctx: _Ctx, args: list[Token]) -> CacheSpec:
    _arity(ctx, args, 1, 3, "prefetch AMOUNT [DURATION [PERCENTAGE%]]")
    amount = _int(ctx, args[0], "AMOUNT")
    duration = _duration(ctx, args[1], "DURATION") if len(args) > 1 else COREDNS_PREFETCH_DURATION
    percentage = COREDNS_PREFETCH_PERCENTAGE
    if len(args) > 2:
        text = args[2].text
        low, high = PREFETCH_PERCENTAGE_RANGE
        if not text.endswith("%") or not text[:-1].isascii() or not text[:-1].isdigit() or not low <= int(text[:-1]) <= high:
            raise ctx.at(args[2].line).fail(f"PERCENTAGE must be {low}% to {high}% with the % sign, got {text!r}")
        percentage = int(text[:-1])
    return replace(spec, prefetch=PrefetchSpec(amount, duration, percentage))


def _serve_stale(spec: CacheSpec, ctx: _Ctx, args: list[Token]) -> CacheSpec:
    _arity(ctx, args, 0, 2, "serve_stale [DURATION [immediate|verify]]")
    duration = _whole_seconds(ctx, args[0], "DURATION") if args else COREDNS_STALE_DURATION
    mode = args[1].text.lower() if len(args) > 1 else "immediate"
    if mode not in STALE_REFRESH_MODES:
        raise ctx.at(args[1].line).fail(f"REFRESH_MODE must be {' or '.join(STALE_REFRESH_MODES)}, got {args[1].text!r}")
    return replace(spec, serve_stale=StaleSpec(float(duration), mode))


def _servfail(spec: CacheSpec, ctx: _Ctx, args: list[Token]) -> CacheSpec:
    _arity(ctx, args, 1, 1, "servfail DURATION")
    seconds = _whole_seconds(ctx, args[0], "DURATION")
    if seconds > COREDNS_SERVFAIL_MAX:
        raise ctx.at(args[0].line).fail("SERVFAIL may be cached at most 5m (RFC 2308); 0 disables it")
    return replace(spec, servfail_ttl=float(seconds))


def _disable(spec: CacheSpec, ctx: _Ctx, args: list[Token]) -> CacheSpec:
    if not args or args[0].text not in ("success", "denial"):
        raise ctx.fail("expected disable success|denial [ZONES...]")
    zones = tuple(_zone(ctx, t) for t in args[1:]) or (".",)
    if args[0].text == "success":
        return replace(spec, disable_success=tuple(dict.fromkeys((*spec.disable_success, *zones))))
    return replace(spec, disable_denial=tuple(dict.fromkeys((*spec.disable_denial, *zones))))


def _keepttl(spec: CacheSpec, ctx: _Ctx, args: list[Token]) -> CacheSpec:
    _arity(ctx, args, 0, 0, "keepttl without arguments")
    return replace(spec, keepttl=True)


def _forward(block: ServerBlock, ctx: _Ctx, item: _Line) -> ServerBlock:
    if len(item.args) < 2:
        raise ctx.fail("expected forward FROM TO..., e.g. forward . 192.0.2.10 or forward . /etc/resolv.conf")
    from_zone = _zone(ctx, item.args[0])
    upstreams: list[Address] = []
    from_files: list[Address] = []
    for tok in item.args[1:]:
        servers, from_file = _upstream(ctx.at(tok.line), tok.text)
        upstreams += servers
        if from_file:
            from_files += servers
    spec = ForwardSpec(
        item.line, from_zone, tuple(dict.fromkeys(upstreams)), resolv_conf_upstreams=tuple(dict.fromkeys(from_files))
    )
    seen: dict[str, int] = {}
    for opt in item.block or ():
        name = opt.name.text
        octx = _Ctx(ctx.source, opt.line, f"forward {name}")
        if name not in _FORWARD_OPTIONS:
            raise octx.fail(f"unknown forward option; nodecache supports {', '.join(_FORWARD_OPTIONS)}")
        if name in seen:
            raise octx.fail(f"appears twice in this forward block (first on line {seen[name]}); keep one")
        seen[name] = opt.line
        if opt.block is not None:
            raise octx.fail("takes no block of its own")
        spec = _FORWARD_OPTIONS[name](spec, octx, opt.args)
    for zone in block.zones:
        if not _within(zone, from_zone):
            raise ctx.fail(
                f"FROM {from_zone} does not cover the server block's zone {zone}; names outside FROM would get no "
                f"answer. Write forward . TO..., or give {from_zone} its own server block"
            )
    return replace(block, forward=spec)


def _upstream(ctx: _Ctx, text: str) -> tuple[tuple[Address, ...], bool]:
    """A forward TO: IP, IP:PORT, [IPv6]:PORT, dns://..., or a resolv.conf path."""
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme.lower() != "dns":
            raise ctx.fail(f"{text!r}: {scheme}:// upstreams are not supported; nodecache forwards plain DNS (dns://)")
        text = rest
    if "/" in text:
        try:
            Path(text).read_bytes()
        except OSError as exc:
            raise ctx.fail(f"cannot read resolv.conf {text}: {exc.strerror}; give a readable file or IP addresses") from None
        try:
            return read_resolv_conf(text), True
        except ConfigError as exc:
            raise type(exc)(f"{ctx.source}:{ctx.line}: forward: {exc}") from None
    try:
        return (Address.parse(text),), False
    except ConfigError:
        raise ctx.fail(
            f"{text!r} is not an upstream; give IP, IP:PORT, [IPv6]:PORT, dns://IP or a resolv.conf path "
            "(host names are not resolved)"
        ) from None


def _forward_flag(name: str) -> _ForwardOption:
    def handle(spec: ForwardSpec, ctx: _Ctx, args: list[Token]) -> ForwardSpec:
        _arity(ctx, args, 0, 0, f"{name} without arguments")
        on: dict[str, Any] = {name: True}
        return replace(spec, **on)

    return handle


def _policy(spec: ForwardSpec, ctx: _Ctx, args: list[Token]) -> ForwardSpec:
    _arity(ctx, args, 1, 1, f"policy {'|'.join(POLICIES)}")
    if args[0].text not in POLICIES:
        raise ctx.fail(f"unknown policy {args[0].text!r}; use {', '.join(POLICIES)}")
    return replace(spec, policy=args[0].text)


def _max_fails(spec: ForwardSpec, ctx: _Ctx, args: list[Token]) -> ForwardSpec:
    _arity(ctx, args, 1, 1, "max_fails N")
    return replace(spec, max_fails=_int(ctx, args[0], "N"))


def _positive_duration(field_name: str, hint: str) -> _ForwardOption:
    def handle(spec: ForwardSpec, ctx: _Ctx, args: list[Token]) -> ForwardSpec:
        if field_name == "health_check" and len(args) > 1:
            raise ctx.at(args[1].line).fail("only health_check DURATION is supported (no no_rec or domain)")
        _arity(ctx, args, 1, 1, f"{field_name} DURATION")
        seconds = _duration(ctx, args[0], "DURATION")
        if seconds <= 0:
            raise ctx.fail(f"must be a positive duration in nodecache; {hint}")
        value: dict[str, Any] = {field_name: seconds}
        return replace(spec, **value)

    return handle


def _max_concurrent(spec: ForwardSpec, ctx: _Ctx, args: list[Token]) -> ForwardSpec:
    _arity(ctx, args, 1, 1, "max_concurrent N")
    value = _int(ctx, args[0], "N")
    if value == 0:
        raise ctx.fail(
            f"0 (unlimited) is not allowed: nodecache bounds in-flight queries; give N >= 1 (default {DEFAULT_MAX_CONCURRENT})"
        )
    return replace(spec, max_concurrent=value)


def _template(block: ServerBlock, ctx: _Ctx, item: _Line) -> ServerBlock:
    if len(item.args) < 2:
        raise ctx.fail("expected template CLASS TYPE [ZONES...] { rcode RCODE }")
    qclass, qtype = item.args[0].text.upper(), item.args[1].text.upper()
    if qclass not in DNS_CLASSES:
        raise ctx.at(item.args[0].line).fail(f"CLASS must be one of {', '.join(DNS_CLASSES)}, got {item.args[0].text!r}")
    if qtype != "ANY" and not _known_type(qtype):
        raise ctx.at(item.args[1].line).fail(f"{item.args[1].text!r} is not a DNS record type (e.g. A, AAAA, ANY)")
    zones = tuple(_zone(ctx, t) for t in item.args[2:])
    rcode = "NOERROR"
    for opt in item.block or ():
        octx = ctx.at(opt.line)
        if opt.name.text != "rcode":
            raise octx.fail(
                f"{opt.name.text!r} is not supported; nodecache answers only the simple form "
                "template CLASS TYPE [ZONES...] { rcode RCODE } (an empty reply with that rcode)"
            )
        _arity(octx, opt.args, 1, 1, "rcode RCODE")
        rcode = opt.args[0].text.upper()
        if rcode not in TEMPLATE_RCODES:
            raise octx.fail(f"RCODE must be one of {', '.join(TEMPLATE_RCODES)}, got {opt.args[0].text!r}")
    spec = TemplateSpec(item.line, qclass, qtype, zones, rcode)
    return replace(block, templates=(*block.templates, spec))


def _known_type(name: str) -> bool:
    from dnslib import QTYPE  # only when a template is written; the parser needs nothing else from it

    return name in QTYPE.reverse or bool(re.fullmatch(r"TYPE\d{1,5}", name))


def _hosts(block: ServerBlock, ctx: _Ctx, item: _Line) -> ServerBlock:
    spec = HostsSpec(item.line)
    if item.args:
        spec = replace(spec, file=item.args[0].text, zones=tuple(_zone(ctx, t) for t in item.args[1:]))
    entries: list[HostsEntry] = []
    seen: dict[str, int] = {}
    for opt in item.block or ():
        name = opt.name.text
        octx = ctx.at(opt.line)
        if _is_ip(name):
            if not opt.args:
                raise octx.fail(f"the entry for {name} names no host; write IP NAME...")
            entries.append(HostsEntry(str(ipaddress.ip_address(name)), tuple(_zone(octx, t) for t in opt.args)))
            continue
        if name in seen:
            raise octx.fail(f"{name} appears twice in this hosts block (first on line {seen[name]}); keep one")
        seen[name] = opt.line
        if name == "ttl":
            _arity(octx, opt.args, 1, 1, "ttl SECONDS")
            spec = replace(spec, ttl=_int(octx, opt.args[0], "SECONDS", minimum=1))
        elif name == "no_reverse":
            _arity(octx, opt.args, 0, 0, "no_reverse without arguments")
            spec = replace(spec, reverse=False)
        elif name == "reload":
            _arity(octx, opt.args, 1, 1, "reload DURATION")
            spec = replace(spec, reload=_duration(octx, opt.args[0], "DURATION"))
        elif name == "fallthrough":
            spec = replace(spec, fallthrough=tuple(_zone(octx, t) for t in opt.args))
        else:
            raise octx.fail(f"{name!r} is neither an IP NAME... entry nor an option (ttl, no_reverse, reload, fallthrough)")
    return replace(block, hosts=replace(spec, entries=tuple(entries)))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True



def _within(name: str, zone: str) -> bool:
    """Whether canonical `name` is `zone` or below it."""
    return zone == "." or name == zone or name.endswith("." + zone)


_DIRECTIVES: dict[str, _Handler] = {
    "errors": _flag("errors"),
    "log": _flag("log"),
    "loop": _flag("loop"),
    "reload": _reload,
    "bind": _bind,
    "health": _health,
    "prometheus": _prometheus,
    "cache": _cache,
    "forward": _forward,
    "template": _template,
    "hosts": _hosts,
}

_CACHE_OPTIONS: dict[str, _CacheOption] = {
    "success": _cache_kind("success"),
    "denial": _cache_kind("denial"),
    "prefetch": _prefetch,
    "serve_stale": _serve_stale,
    "servfail": _servfail,
    "disable": _disable,
    "keepttl": _keepttl,
}

_FORWARD_OPTIONS: dict[str, _ForwardOption] = {
    "force_tcp": _forward_flag("force_tcp"),
    "prefer_udp": _forward_flag("prefer_udp"),
    "policy": _policy,
    "max_fails": _max_fails,
    "health_check": _positive_duration("health_check", "use max_fails 0 to never mark an upstream down"),
    "expire": _positive_duration("expire", "idle connections must be closed some time"),
    "max_concurrent": _max_concurrent,
}


# ------------------------------------------------------------------ entry points


def parse_corefile(text: str, source: str = "Corefile") -> CorefileConfig:
    """Parse a whole Corefile text; `source` names it in error messages (FILE:LINE)."""
    reader = _Reader(tokenize(text, source), source)
    blocks = tuple(_parse_block(raw, source) for raw in reader.server_blocks())
    if not blocks:
        raise ConfigError(f"{source}: no server blocks; a Corefile needs at least one, e.g. .:53 {{ forward . 192.0.2.10 }}")
    owner: dict[ZoneKey, ServerBlock] = {}
    for block in blocks:
        for key in block.keys:
            if key in owner:
                raise ConfigError(
                    f"{block.where}: zone {key.zone} on port {key.port} is already served by the block at "
                    f"{owner[key].where}; merge the two blocks"
                )
            owner[key] = block
    return CorefileConfig(source, blocks)


def read_corefile(path: str | Path) -> CorefileConfig:
    """Read and parse a Corefile from disk."""
    return parse_corefile(read_text(path), str(path))


def read_text(path: str | Path) -> str:
    """A configuration file's text, or a ConfigError saying why it cannot be read."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}; check the path and the ConfigMap mount") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: byte {exc.start} is not UTF-8; save the file as UTF-8 text") from None


# ------------------------------------------------------------------ to Config


def coredns_capacity(requested: int) -> int:
    """Entries a CoreDNS cache really holds: 256 shards of requested // 256, at least 4 each.

    So `cache` without CAPACITY (10000) and node-local-dns's explicit 9984 both hold 9984.
    """
    return max(requested // COREDNS_CACHE_SHARDS, COREDNS_CACHE_MIN_SHARD) * COREDNS_CACHE_SHARDS


NO_CACHE = CachePolicy(success_capacity=0, denial_capacity=0, servfail_ttl=0, stale_window=0)  # a block without `cache`


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
    )


def to_config(parsed: CorefileConfig, overrides: Overrides | None = None) -> Config:
    """Build the agent's Config from a parsed Corefile; flags in `overrides` win.

    Refuses, naming the line, what the agent cannot honour yet, rather than running
    something other than what the operator wrote.
    """
    o = overrides or Overrides()
    blocks = parsed.blocks
    _refuse_synthesis(blocks)
    listen = o.listen if o.listen is not None else _common_listen(blocks)
    for host in listen:
        if not _is_ip(host):
            raise ConfigError(f"listen address {host!r} is not an IP address; give bare IPv4 or IPv6 addresses")
    port = o.port if o.port is not None else _common_port(blocks)
    explicit = {k.zone for b in blocks for k in b.keys}
    zones: list[Zone] = []
    for block in blocks:
        forward = _forward_policy(block, o, listen, port)
        for zone in block.zones:
            zones += _zones_of(block, zone, forward, explicit)
    extra: dict[str, Any] = {
        name: value
        for name in ("tcp_idle_timeout", "max_udp_payload", "loop")
        if (value := getattr(o, name)) is not None
    }
    metrics = o.metrics_address or _common_endpoint(blocks, "prometheus")
    health = o.health_address or _common_endpoint(blocks, "health")
    lameduck = o.lameduck if o.lameduck is not None else max(b.lameduck for b in blocks)
    return Config(
        listen=listen,
        port=port,
        zones=tuple(zones),
        metrics_address=metrics,
        health_address=health,
        lameduck=lameduck,
        **extra,
    )


def _refuse_synthesis(blocks: Sequence[ServerBlock]) -> None:
    """template and hosts parse, but the resolver cannot answer them yet: refuse, never ignore."""
    for block in blocks:
        found = [("template", t.line) for t in block.templates]
        if block.hosts is not None:
            found.append(("hosts", block.hosts.line))
        for what, line in found:
            raise ConfigError(
                f"{block.source}:{line}: {what} is not answered by this build of nodecache yet; "
                "remove it, or answer these names upstream"
            )


def _common_listen(blocks: Sequence[ServerBlock]) -> tuple[str, ...]:
    first = blocks[0]
    want = set(first.bind or WILDCARD_LISTEN)
    for block in blocks[1:]:
        if set(block.bind or WILDCARD_LISTEN) != want:
            raise ConfigError(
                f"{block.where}: this block listens on {' '.join(block.bind or WILDCARD_LISTEN)} but the block at "
                f"{first.where} on {' '.join(first.bind or WILDCARD_LISTEN)}; nodecache serves every zone on the "
                "same addresses: give every block the same bind (or set --listen)"
            )
    return first.bind or WILDCARD_LISTEN


def _common_port(blocks: Sequence[ServerBlock]) -> int:
    first = blocks[0]
    want = first.keys[0].port
    for block in blocks:
        for key in block.keys:
            if key.port != want:
                raise ConfigError(
                    f"{block.where}: zone {key.zone} is on port {key.port} but {first.keys[0].zone} "
                    f"({first.where}) on {want}; nodecache serves every zone on one port: make them equal (or set --port)"
                )
    return want


def _common_endpoint(blocks: Sequence[ServerBlock], directive: str) -> str | None:
    found: list[tuple[Endpoint, ServerBlock]] = [
        (ep, b) for b in blocks if (ep := getattr(b, directive)) is not None
    ]
    if not found:
        return None
    first, owner = found[0]
    for ep, block in found[1:]:
        if ep != first:
            raise ConfigError(
                f"{block.where}: {directive} {ep} differs from {directive} {first} at {owner.where}; "
                f"nodecache serves one {directive} endpoint: use the same address in every block"
            )
    return str(first)


def _forward_policy(block: ServerBlock, o: Overrides, listen: tuple[str, ...], port: int) -> ForwardPolicy:
    spec = block.forward
    assert spec is not None  # parse_corefile refuses blocks without forward
    where = f"{block.source}:{spec.line}"
    own = {(str(ipaddress.ip_address(h)), port) for h in listen}
    upstreams = spec.upstreams
    for addr in upstreams:
        if addr not in spec.resolv_conf_upstreams and (str(ipaddress.ip_address(addr.host)), addr.port) in own:
            raise ConfigError(f"{where}: forward: {addr} is this agent's own address; forwarding there would loop")
    if spec.resolv_conf_upstreams:
        try:
            kept = set(without_self(spec.resolv_conf_upstreams, listen, port))
        except ConfigError as exc:
            raise type(exc)(f"{where}: forward: {exc}") from None
        upstreams = tuple(a for a in upstreams if a not in spec.resolv_conf_upstreams or a in kept)
    try_timeout = o.try_timeout if o.try_timeout is not None else DEFAULT_TRY_TIMEOUT
    timeout = o.timeout if o.timeout is not None else DEFAULT_TIMEOUT
    try:
        return ForwardPolicy(
            upstreams=upstreams,
            force_tcp=spec.force_tcp,
            policy=spec.policy,
            max_fails=spec.max_fails,
            health_check=spec.health_check,
            try_timeout=try_timeout,
            timeout=max(timeout, try_timeout),
            expire=spec.expire,
            max_concurrent=spec.max_concurrent,
        )
    except ConfigError as exc:
        raise ConfigError(f"{where}: forward: {exc}") from None


def _zones_of(block: ServerBlock, zone: str, forward: ForwardPolicy, explicit: set[str]) -> list[Zone]:
    """The Zones one block zone becomes: itself, plus sub-zones whose caching differs.

    `cache 30 example.org` in a `.` block caches only below example.org, and
    `disable success example.org` stops positive caching there. A Zone has one
    CachePolicy, so such names get their own Zone with the same upstreams. A name
    that another server block owns is left to that block, as CoreDNS routes it there.
    """
    spec = block.cache
    if spec is None:
        return [Zone(zone, forward, NO_CACHE)]
    cached = spec.zones or block.zones

    def policy_at(name: str) -> CachePolicy:
        if not any(_within(name, z) for z in cached):
            return NO_CACHE
        return cache_policy(
            spec,
            success=not any(_within(name, z) for z in spec.disable_success),
            denial=not any(_within(name, z) for z in spec.disable_denial),
        )

    def owned_elsewhere(name: str) -> bool:
        return any(e != zone and _within(e, zone) and _within(name, e) for e in explicit)

    points = {
        p
        for p in (*spec.zones, *spec.disable_success, *spec.disable_denial)
        if p != zone and _within(p, zone) and not owned_elsewhere(p)
    }
    result = [(zone, policy_at(zone))]
    for point in sorted(points, key=lambda n: n.count(".")):
        parent = max((r for r in result if _within(point, r[0])), key=lambda r: r[0].count("."))
        policy = policy_at(point)
        if policy != parent[1]:
            result.append((point, policy))
    return [Zone(name, forward, policy) for name, policy in result]


# ------------------------------------------------------------------ check-config


def check_config_table(config: Config) -> str:
    """The effective zones as a table, for `nodecache check-config` and for humans."""
    head = f"listen {' '.join(config.listen)} port {config.port}"
    if config.metrics_address:
        head += f"; metrics {config.metrics_address}"
    if config.health_address:
        head += f"; health {config.health_address}"
    rows = [("ZONE", "UPSTREAMS", "TRANSPORT", "SUCCESS", "DENIAL", "SERVFAIL", "STALE", "PREFETCH")]
    for zone in config.zones:
        f, c = zone.forward, zone.cache
        rows.append(
            (
                zone.name,
                " ".join(str(a) for a in f.upstreams),
                "tcp" if f.force_tcp else "udp, tcp if truncated",
                _cache_cell(c.success_capacity, c.success_min_ttl, c.success_max_ttl),
                _cache_cell(c.denial_capacity, c.denial_min_ttl, c.denial_max_ttl),
                f"{c.servfail_ttl}s" if c.servfail_ttl and c.denial_capacity else "off",
                f"{c.stale_window}s {c.stale_mode}" if c.stale_window else "off",
                _prefetch_cell(c),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join([head, *lines]) + "\n"


def _cache_cell(capacity: int, min_ttl: int, max_ttl: int) -> str:
    return f"{capacity} x {min_ttl}-{max_ttl}s" if capacity else "off"


def _prefetch_cell(policy: CachePolicy) -> str:
    # CachePolicy gains prefetch fields with the prefetch work; until then there is none to show.
    amount = getattr(policy, "prefetch_amount", 0)
    if not amount:
        return "off"
    return f"{amount} hits/{getattr(policy, 'prefetch_duration', 0):g}s at {getattr(policy, 'prefetch_percentage', 0)}%"


__all__ = [
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
