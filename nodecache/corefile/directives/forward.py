"""`forward FROM TO... { force_tcp, prefer_udp, policy, max_fails, health_check, expire, max_concurrent }`.

Parsed, then translated into the block's ForwardPolicy. CoreDNS's max_fails 2,
health_check 0.5s, expire 10s and policy random are ForwardPolicy's defaults already.
CoreDNS leaves max_concurrent unlimited; nodecache keeps its bound
(DEFAULT_MAX_CONCURRENT) so in-flight work cannot grow without limit.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodecache.config import (
    DEFAULT_MAX_CONCURRENT,
    POLICIES,
    Address,
    ForwardPolicy,
    read_resolv_conf,
    without_self,
)
from nodecache.corefile.lexer import Token
from nodecache.corefile.reader import Line
from nodecache.corefile.registry import Directive, Option, sample
from nodecache.corefile.values import Ctx, arity, duration, integer, within, zone
from nodecache.errors import ConfigError

if TYPE_CHECKING:
    from nodecache.corefile.model import ServerBlock


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


_Option = Callable[[ForwardSpec, Ctx, list[Token]], ForwardSpec]


def parse(block: ServerBlock, ctx: Ctx, item: Line) -> ServerBlock:
    if len(item.args) < 2:
        raise ctx.fail("expected forward FROM TO..., e.g. forward . 192.0.2.10 or forward . /etc/resolv.conf")
    from_zone = zone(ctx, item.args[0])
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
        octx = Ctx(ctx.source, opt.line, f"forward {name}")
        if name not in _OPTIONS:
            raise octx.fail(f"unknown forward option; nodecache supports {', '.join(_OPTIONS)}")
        if name in seen:
            raise octx.fail(f"appears twice in this forward block (first on line {seen[name]}); keep one")
        seen[name] = opt.line
        if opt.block is not None:
            raise octx.fail("takes no block of its own")
        spec = _OPTIONS[name](spec, octx, opt.args)
    for name in block.zones:
        if not within(name, from_zone):
            raise ctx.fail(
                f"FROM {from_zone} does not cover the server block's zone {name}; names outside FROM would get no "
                f"answer. Write forward . TO..., or give {from_zone} its own server block"
            )
    return replace(block, forward=spec)


def _upstream(ctx: Ctx, text: str) -> tuple[tuple[Address, ...], bool]:
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


def _flag(name: str) -> _Option:
    def handle(spec: ForwardSpec, ctx: Ctx, args: list[Token]) -> ForwardSpec:
        arity(ctx, args, 0, 0, f"{name} without arguments")
        on: dict[str, Any] = {name: True}
        return replace(spec, **on)

    return handle


def _policy(spec: ForwardSpec, ctx: Ctx, args: list[Token]) -> ForwardSpec:
    arity(ctx, args, 1, 1, f"policy {'|'.join(POLICIES)}")
    if args[0].text not in POLICIES:
        raise ctx.fail(f"unknown policy {args[0].text!r}; use {', '.join(POLICIES)}")
    return replace(spec, policy=args[0].text)


def _max_fails(spec: ForwardSpec, ctx: Ctx, args: list[Token]) -> ForwardSpec:
    arity(ctx, args, 1, 1, "max_fails N")
    return replace(spec, max_fails=integer(ctx, args[0], "N"))


def _positive_duration(field_name: str, hint: str) -> _Option:
    def handle(spec: ForwardSpec, ctx: Ctx, args: list[Token]) -> ForwardSpec:
        if field_name == "health_check" and len(args) > 1:
            raise ctx.at(args[1].line).fail("only health_check DURATION is supported (no no_rec or domain)")
        arity(ctx, args, 1, 1, f"{field_name} DURATION")
        seconds = duration(ctx, args[0], "DURATION")
        if seconds <= 0:
            raise ctx.fail(f"must be a positive duration in nodecache; {hint}")
        value: dict[str, Any] = {field_name: seconds}
        return replace(spec, **value)

    return handle


def _max_concurrent(spec: ForwardSpec, ctx: Ctx, args: list[Token]) -> ForwardSpec:
    arity(ctx, args, 1, 1, "max_concurrent N")
    value = integer(ctx, args[0], "N")
    if value == 0:
        raise ctx.fail(
            f"0 (unlimited) is not allowed: nodecache bounds in-flight queries; give N >= 1 (default {DEFAULT_MAX_CONCURRENT})"
        )
    return replace(spec, max_concurrent=value)


_OPTIONS: dict[str, _Option] = {
    "force_tcp": _flag("force_tcp"),
    "prefer_udp": _flag("prefer_udp"),
    "policy": _policy,
    "max_fails": _max_fails,
    "health_check": _positive_duration("health_check", "use max_fails 0 to never mark an upstream down"),
    "expire": _positive_duration("expire", "idle connections must be closed some time"),
    "max_concurrent": _max_concurrent,
}

# ------------------------------------------------------------------ to Config


def forward_policy(
    block: ServerBlock, listen: tuple[str, ...], port: int, try_timeout: float, timeout: float
) -> ForwardPolicy:
    """The block's ForwardPolicy; an upstream that is this agent itself is refused (or, from resolv.conf, dropped)."""
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


def _with(*options: str) -> str:
    return sample("forward . 192.0.2.10 {\n" + "\n".join(options) + "\n}")


FORWARD = Directive(
    "forward",
    parse,
    (
        Option("forward", sample(), sample("forward . 192.0.2.11"), reaches=("zones.forward.upstreams",)),
        Option("forward FROM", sample("forward example.org 192.0.2.10", "example.org"),
               sample("forward . 192.0.2.10", "example.org"),
               inert="FROM must cover every zone of its block, so it never narrows what is forwarded"),
        Option("forward TO", sample("forward . 192.0.2.10 [2001:db8::53]:5353"), reaches=("zones.forward.upstreams",)),
        Option("forward TO dns://", sample("forward . dns://192.0.2.10"), inert="dns:// is plain DNS, all nodecache forwards"),
        Option("forward force_tcp", _with("force_tcp"), reaches=("zones.forward.force_tcp",)),
        Option("forward prefer_udp", _with("prefer_udp"),
               inert="nodecache asks upstreams over UDP first whatever the client used (TCP when truncated), "
               "which is what prefer_udp asks for"),
        Option("forward policy", _with("policy sequential"), reaches=("zones.forward.policy",)),
        Option("forward max_fails", _with("max_fails 5"), reaches=("zones.forward.max_fails",)),
        Option("forward health_check", _with("health_check 2s"), reaches=("zones.forward.health_check",)),
        Option("forward expire", _with("expire 30s"), reaches=("zones.forward.expire",)),
        Option("forward max_concurrent", _with("max_concurrent 50"), reaches=("zones.forward.max_concurrent",)),
    ),
    words=tuple(_OPTIONS),
)
