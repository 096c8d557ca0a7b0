"""Argument values shared by the directives: durations, numbers, zones, IPs, HTTP endpoints.

Every helper fails through `Ctx`, so each message reads `FILE:LINE: DIRECTIVE: what is
wrong and what to write instead`, whichever directive asked.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from nodecache.corefile.lexer import Token
from nodecache.corefile.reader import Line
from nodecache.errors import ConfigError
from nodecache.names import canonical_name

ALL_ADDRESSES = "0.0.0.0"  # `:PORT` endpoints (health, prometheus) listen on every address

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
PLAIN_NUMBER = re.compile(r"\d+(?:\.\d+)?")


class Ctx:
    """Where we are (file, line, directive), to word error messages the same way everywhere."""

    def __init__(self, source: str, line: int, directive: str) -> None:
        self.source, self.line, self.directive = source, line, directive

    def at(self, line: int) -> Ctx:
        return Ctx(self.source, line, self.directive)

    def fail(self, message: str) -> ConfigError:
        return ConfigError(f"{self.source}:{self.line}: {self.directive}: {message}")


@dataclass(frozen=True)
class Endpoint:
    """An HTTP listen address of `health` or `prometheus`; host "" means every address."""

    host: str
    port: int

    def __str__(self) -> str:
        host = self.host or ALL_ADDRESSES
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


def parse_duration(text: str) -> float:
    """Seconds in a CoreDNS (Go) duration: `5s`, `1m`, `1h30m`, `300ms`; a bare number is seconds."""
    if PLAIN_NUMBER.fullmatch(text):
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


def duration(ctx: Ctx, tok: Token, what: str) -> float:
    try:
        return parse_duration(tok.text)
    except ValueError:
        raise ctx.at(tok.line).fail(
            f"{what} {tok.text!r} is not a duration; write e.g. 30s, 5m, 1h30m or 500ms (a bare number is seconds)"
        ) from None


def whole_seconds(ctx: Ctx, tok: Token, what: str) -> int:
    seconds = duration(ctx, tok, what)
    if seconds != int(seconds):
        raise ctx.at(tok.line).fail(f"{what} {tok.text!r} must be a whole number of seconds (DNS TTLs are)")
    return int(seconds)


def integer(ctx: Ctx, tok: Token, what: str, minimum: int = 0) -> int:
    text = tok.text
    if not (text.isascii() and text.isdigit()):
        hint = " (TTLs here are whole seconds: write 30, not 30s)" if looks_like_duration(text) else ""
        raise ctx.at(tok.line).fail(f"{what} must be a whole number, got {text!r}{hint}")
    value = int(text)
    if value < minimum:
        raise ctx.at(tok.line).fail(f"{what} must be at least {minimum}, got {value}")
    return value


def looks_like_duration(text: str) -> bool:
    try:
        parse_duration(text)
    except ValueError:
        return False
    return True


def zone(ctx: Ctx, tok: Token) -> str:
    try:
        return canonical_name(tok.text)
    except ConfigError as exc:
        raise ctx.at(tok.line).fail(str(exc)) from None


def ip(ctx: Ctx, tok: Token, what: str, hint: str = "interface names are not supported") -> str:
    try:
        return str(ipaddress.ip_address(tok.text))
    except ValueError:
        raise ctx.at(tok.line).fail(f"{what} {tok.text!r} is not an IP address ({hint})") from None


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def within(name: str, zone: str) -> bool:
    """Whether canonical `name` is `zone` or below it."""
    return zone == "." or name == zone or name.endswith("." + zone)


def arity(ctx: Ctx, args: Sequence[Token], low: int, high: int, usage: str) -> None:
    if not low <= len(args) <= high:
        line = args[high].line if len(args) > high else ctx.line
        raise ctx.at(line).fail(f"expected {usage}, got {len(args)} argument{'s' if len(args) != 1 else ''}")


def no_block(ctx: Ctx, item: Line) -> None:
    if item.block is not None:
        raise ctx.fail("takes no block of options")


def endpoint(ctx: Ctx, tok: Token) -> Endpoint:
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
        host = ip(ctx, Token(host, tok.line, tok.line), "address", "write an IP, localhost, or nothing for every address")
    return Endpoint(host, int(port_text))
