"""nodecache.corefile: the Corefile subset, its CoreDNS defaults, and the Config it becomes.

Table-driven, CoreDNS style: what valid Corefiles parse to, and a `must fail` table of
inputs that must be refused with `FILE:LINE: ...` naming the exact line.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from nodecache.config import Address, CachePolicy, Config, default_zones
from nodecache.corefile import (
    COREDNS_CACHE_CAPACITY,
    COREDNS_DENIAL_MAX_TTL,
    COREDNS_MIN_TTL,
    COREDNS_SUCCESS_MAX_TTL,
    NO_CACHE,
    WILDCARD_LISTEN,
    CorefileConfig,
    Endpoint,
    Overrides,
    PrefetchSpec,
    ReloadSpec,
    ServerBlock,
    StaleSpec,
    ZoneKey,
    check_config_table,
    coredns_capacity,
    parse_corefile,
    parse_duration,
    read_corefile,
    to_config,
    tokenize,
)
from nodecache.errors import ConfigError, ResolvConfError

FIXTURES = Path(__file__).parent / "fixtures"
UP = "192.0.2.53"


def corefile(text: str) -> CorefileConfig:
    return parse_corefile(textwrap.dedent(text).lstrip("\n"), "Corefile")


def block(body: str, header: str = ".:53") -> ServerBlock:
    """One server block with `body` inside, and a forward unless the body has one."""
    if "forward" not in body:
        body += f"\nforward . {UP}"
    return corefile(f"{header} {{\n{textwrap.dedent(body)}\n}}\n").blocks[0]


# ---------------------------------------------------------------------------- lexing


def test_tokenize_lines_comments_and_quotes() -> None:
    """Words keep the line they start on; # comments vanish; quotes group and may span lines."""
    toks = tokenize('a b # c d\n"e f" g\n"h\ni"\n# last', "F")
    assert [(t.text, t.line, t.end_line, t.quoted) for t in toks] == [
        ("a", 1, 1, False),
        ("b", 1, 1, False),
        ("e f", 2, 2, True),
        ("g", 2, 2, False),
        ("h\ni", 3, 4, True),
    ]


def test_tokenize_escaped_quote_and_hash_inside_word() -> None:
    """\\" is a quote inside quotes; # only starts a comment at the start of a word."""
    toks = tokenize('"say \\"hi\\"" a#b', "F")
    assert [t.text for t in toks] == ['say "hi"', "a#b"]


def test_quoted_brace_is_not_a_block() -> None:
    """A quoted "{" is a plain word, so it cannot open a block."""
    with pytest.raises(ConfigError, match=r"^Corefile:1: expected '\{'"):
        parse_corefile('. "{"\n}\n', "Corefile")


# ---------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5s", 5.0),
        ("1m", 60.0),
        ("30", 30.0),
        ("0", 0.0),
        ("1h30m", 5400.0),
        ("300ms", 0.3),
        ("1.5h", 5400.0),
        ("2m30s", 150.0),
        ("500us", 0.0005),
        ("10ns", 1e-8),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    """CoreDNS (Go) durations, plus a bare number meaning seconds."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "5x", "-1s", "1h 30m", "1hh", "h1", "1.2.3s", "5 s", "1e3s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


# ---------------------------------------------------------------------------- what parses to what


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


VALID: list[tuple[str, str, str, Any]] = [
    # (id, server block body, attribute path on the ServerBlock, expected)
    ("errors", "errors", "errors", True),
    ("no errors", "", "errors", False),
    ("log", "log", "log", True),
    ("loop", "loop", "loop", True),
    ("reload defaults", "reload", "reload", ReloadSpec(30.0, 15.0)),
    ("reload interval", "reload 10s", "reload", ReloadSpec(10.0, 5.0)),  # jitter at most half the interval
    ("reload both", "reload 1m 5s", "reload", ReloadSpec(60.0, 5.0)),
    ("reload no jitter", "reload 2s 0", "reload", ReloadSpec(2.0, 0.0)),
    ("bind", "bind 169.254.20.10 192.0.2.10", "bind", ("169.254.20.10", "192.0.2.10")),
    ("bind twice", "bind 169.254.20.10\nbind 2001:db8::a", "bind", ("169.254.20.10", "2001:db8::a")),
    ("bind dedup", "bind 169.254.20.10 169.254.20.10", "bind", ("169.254.20.10",)),
    ("no bind", "", "bind", ()),
    ("health default", "health", "health", Endpoint("", 8080)),
    ("health addr", "health 169.254.20.10:8080", "health", Endpoint("169.254.20.10", 8080)),
    ("health v6", "health [2001:db8::a]:8081", "health", Endpoint("2001:db8::a", 8081)),
    ("health lameduck", "health :8080 {\n lameduck 5s\n}", "lameduck", 5.0),
    ("prometheus default", "prometheus", "prometheus", Endpoint("127.0.0.1", 9153)),
    ("prometheus port", "prometheus :9253", "prometheus", Endpoint("", 9253)),
    ("prometheus localhost", "prometheus localhost:9253", "prometheus", Endpoint("127.0.0.1", 9253)),
    # cache: CoreDNS defaults
    ("cache bare", "cache", "cache.success_max_ttl", COREDNS_SUCCESS_MAX_TTL),
    ("cache bare denial", "cache", "cache.denial_max_ttl", COREDNS_DENIAL_MAX_TTL),
    ("cache bare capacity", "cache", "cache.success_capacity", COREDNS_CACHE_CAPACITY),
    ("cache bare min", "cache", "cache.success_min_ttl", COREDNS_MIN_TTL),
    ("cache bare servfail", "cache", "cache.servfail_ttl", 5.0),
    ("cache ttl", "cache 30", "cache.success_max_ttl", 30),
    ("cache ttl denial", "cache 30", "cache.denial_max_ttl", 30),
    ("cache zones", "cache 30 example.test Example.ORG.", "cache.zones", ("example.test.", "example.org.")),
    ("cache zones only", "cache example.test", "cache.zones", ("example.test.",)),
    ("success", "cache {\n success 9984 30\n}", "cache.success_capacity", 9984),
    ("success ttl", "cache {\n success 9984 30\n}", "cache.success_max_ttl", 30),
    ("success keeps denial", "cache {\n success 9984 30\n}", "cache.denial_max_ttl", COREDNS_DENIAL_MAX_TTL),
    ("success min", "cache {\n success 100 30 2\n}", "cache.success_min_ttl", 2),
    ("denial", "cache {\n denial 9984 5\n}", "cache.denial_max_ttl", 5),
    ("denial min 0", "cache {\n denial 10 5 0\n}", "cache.denial_min_ttl", 0),
    ("ttl then success", "cache 60 {\n success 5000\n}", "cache.success_max_ttl", 60),
    ("prefetch", "cache {\n prefetch 10\n}", "cache.prefetch.duration", 60.0),
    ("prefetch pct", "cache {\n prefetch 10 1m 25%\n}", "cache.prefetch.percentage", 25),
    ("prefetch dur", "cache {\n prefetch 2 30s\n}", "cache.prefetch.duration", 30.0),
    ("prefetch amount", "cache {\n prefetch 3\n}", "cache.prefetch.amount", 3),
    ("no prefetch", "cache", "cache.prefetch", None),
    ("serve_stale", "cache {\n serve_stale\n}", "cache.serve_stale.duration", 3600.0),
    ("serve_stale mode", "cache {\n serve_stale 1h immediate\n}", "cache.serve_stale.refresh_mode", "immediate"),
    ("serve_stale verify", "cache {\n serve_stale 10m verify\n}", "cache.serve_stale.duration", 600.0),
    ("servfail", "cache {\n servfail 10s\n}", "cache.servfail_ttl", 10.0),
    ("servfail off", "cache {\n servfail 0\n}", "cache.servfail_ttl", 0.0),
    ("servfail max", "cache {\n servfail 5m\n}", "cache.servfail_ttl", 300.0),
    ("disable success", "cache {\n disable success\n}", "cache.disable_success", (".",)),
    ("disable denial zones", "cache {\n disable denial a.test b.test\n}", "cache.disable_denial", ("a.test.", "b.test.")),
    ("disable both", "cache {\n disable success a.test\n disable denial b.test\n}", "cache.disable_success", ("a.test.",)),
    ("keepttl", "cache {\n keepttl\n}", "cache.keepttl", True),
    # forward
    ("forward ip", f"forward . {UP}", "forward.upstreams", (Address(UP),)),
    ("forward port", "forward . 192.0.2.53:5353", "forward.upstreams", (Address(UP, 5353),)),
    ("forward dns://", "forward . dns://192.0.2.53", "forward.upstreams", (Address(UP),)),
    ("forward v6", "forward . 2001:db8::53 [2001:db8::54]:5353", "forward.upstreams",
     (Address("2001:db8::53"), Address("2001:db8::54", 5353))),
    ("forward dedup", f"forward . {UP} {UP}:53", "forward.upstreams", (Address(UP),)),
    ("forward from", f"forward . {UP}", "forward.from_zone", "."),
    ("force_tcp", f"forward . {UP} {{\n force_tcp\n}}", "forward.force_tcp", True),
    ("prefer_udp", f"forward . {UP} {{\n prefer_udp\n}}", "forward.prefer_udp", True),
    ("one-line block", f"forward . {UP} {{ force_tcp }}", "forward.force_tcp", True),
    ("policy", f"forward . {UP} {{\n policy sequential\n}}", "forward.policy", "sequential"),
    ("policy default", f"forward . {UP}", "forward.policy", "random"),
    ("max_fails", f"forward . {UP} {{\n max_fails 0\n}}", "forward.max_fails", 0),
    ("max_fails default", f"forward . {UP}", "forward.max_fails", 2),
    ("health_check", f"forward . {UP} {{\n health_check 5s\n}}", "forward.health_check", 5.0),
    ("health_check default", f"forward . {UP}", "forward.health_check", 0.5),
    ("expire", f"forward . {UP} {{\n expire 1m\n}}", "forward.expire", 60.0),
    ("expire default", f"forward . {UP}", "forward.expire", 10.0),
    ("max_concurrent", f"forward . {UP} {{\n max_concurrent 50\n}}", "forward.max_concurrent", 50),
    ("max_concurrent ours", f"forward . {UP}", "forward.max_concurrent", 1000),
    # template and hosts, simple forms
    ("template", "template IN AAAA . {\n rcode NOERROR\n}", "templates.0.qtype", "AAAA"),
    ("template no block", "template IN AAAA", "templates.0.rcode", "NOERROR"),
    ("template nxdomain", "template ANY ANY ads.test {\n rcode NXDOMAIN\n}", "templates.0.zones", ("ads.test.",)),
    ("template lower", "template in aaaa {\n rcode nxdomain\n}", "templates.0.rcode", "NXDOMAIN"),
    ("templates", "template IN AAAA\ntemplate IN A a.test", "templates.1.qtype", "A"),
    ("hosts inline", "hosts {\n 192.0.2.7 web.test www.test\n fallthrough\n}", "hosts.entries.0.names",
     ("web.test.", "www.test.")),
    ("hosts fallthrough", "hosts {\n 192.0.2.7 web.test\n fallthrough\n}", "hosts.fallthrough", ()),
    ("hosts no fallthrough", "hosts {\n 192.0.2.7 web.test\n}", "hosts.fallthrough", None),
    ("hosts file", "hosts /etc/hosts.extra example.test", "hosts.zones", ("example.test.",)),
    ("hosts default file", "hosts", "hosts.file", "/etc/hosts"),
    ("hosts options", "hosts {\n 2001:db8::7 v6.test\n ttl 60\n no_reverse\n reload 0\n}", "hosts.reverse", False),
]


@pytest.mark.parametrize(("body", "path", "expected"), [c[1:] for c in VALID], ids=[c[0] for c in VALID])
def test_parse_valid(body: str, path: str, expected: Any) -> None:
    assert _get(block(body), path) == expected


@pytest.mark.parametrize(
    ("header", "keys"),
    [
        (".:53", [ZoneKey(".", 53)]),
        (".", [ZoneKey(".", 53)]),
        ("Cluster.Local:53", [ZoneKey("cluster.local.", 53)]),
        ("dns://.:5353", [ZoneKey(".", 5353)]),
        ("in-addr.arpa:53 ip6.arpa:53", [ZoneKey("in-addr.arpa.", 53), ZoneKey("ip6.arpa.", 53)]),
        ("a.test, b.test", [ZoneKey("a.test.", 53), ZoneKey("b.test.", 53)]),
        ("192.0.2.0/24:53", [ZoneKey("2.0.192.in-addr.arpa.", 53)]),
        ("169.254.0.0/16", [ZoneKey("254.169.in-addr.arpa.", 53)]),
        ("203.0.113.0/23", [ZoneKey("112.0.203.in-addr.arpa.", 53), ZoneKey("113.0.203.in-addr.arpa.", 53)]),
        ("2001:db8::/32", [ZoneKey("8.b.d.0.1.0.0.2.ip6.arpa.", 53)]),
    ],
)
def test_server_block_keys(header: str, keys: list[ZoneKey]) -> None:
    """ZONE[:PORT], several per block, dns://, and CIDRs meaning their reverse zones."""
    assert list(block("", header).keys) == keys


def test_keys_continue_after_comma() -> None:
    parsed = corefile(f"a.test,\nb.test {{\n forward . {UP}\n}}\n")
    assert parsed.blocks[0].zones == ("a.test.", "b.test.")


def test_resolv_conf_upstream(tmp_path: Path) -> None:
    """A forward TO with a / is a resolv.conf whose nameservers become the upstreams."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search example.test\nnameserver 198.51.100.1\nnameserver 198.51.100.2 # second\n")
    fwd = block(f"forward . {resolv} 203.0.113.53").forward
    assert fwd is not None
    assert fwd.upstreams == (Address("198.51.100.1"), Address("198.51.100.2"), Address("203.0.113.53"))
    assert fwd.resolv_conf_upstreams == (Address("198.51.100.1"), Address("198.51.100.2"))


def test_several_blocks_and_reload_is_the_most_frequent() -> None:
    parsed = corefile(
        f"""
        a.test {{
            reload 1m
            forward . {UP}
        }}
        b.test {{
            reload 10s 2s
            forward . {UP}
        }}
        c.test {{
            forward . {UP}
        }}
        """
    )
    assert [b.line for b in parsed.blocks] == [1, 5, 9]
    assert parsed.reload == ReloadSpec(10.0, 2.0)


# ---------------------------------------------------------------------------- must fail


def in_block(body: str) -> str:
    """`body` as lines 2.. of a `.:53` server block, with a forward after it unless it has one."""
    tail = "" if "forward" in body else f"\n forward . {UP}"
    return f".:53 {{\n{body}{tail}\n}}"


MUST_FAIL: list[tuple[str, str, str]] = [
    # (id, Corefile text, expected message start: FILE:LINE: ...)
    ("unknown directive", ".:53 {\n  ready\n}", "Corefile:2: ready: unknown directive"),
    ("unknown later", in_block(f" errors\n forward . {UP}\n\n kubernetes cluster.local"),
     "Corefile:5: kubernetes: unknown directive"),
    ("import top", "import common.conf\n", "Corefile:1: import is not supported"),
    ("import inside", ".:53 {\n  import common.conf\n}", "Corefile:2: import is not supported"),
    ("snippet", "(common) {\n errors\n}", "Corefile:1: snippet (common) is not supported"),
    ("env placeholder", ".:53 {\n forward . {$UPSTREAM}\n}", "Corefile:2: environment placeholders"),
    ("attached brace", ".:53{\n}", "Corefile:1: '.:53{': braces must stand alone"),
    ("unclosed block", ".:53 {\n  errors\n", "Corefile:1: the block opened here is never closed"),
    ("unclosed inner", f".:53 {{\n forward . {UP} {{\n  force_tcp\n}}\n", "Corefile:1: the block opened here is never closed"),
    ("stray close", f".:53 {{\n forward . {UP}\n}}\n}}\n", "Corefile:4: '}' closes no block"),
    ("no brace", ".:53\nerrors\n", "Corefile:1: expected '{' at the end of this line"),
    ("brace next line", ".:53\n{\n}\n", "Corefile:1: expected '{' at the end of this line"),
    ("bare brace", "{\n}\n", "Corefile:1: '{' opens a block without zones"),
    ("unclosed quote", '.:53 {\n forward . "192.0.2.53\n}\n', "Corefile:2: this quoted text is never closed"),
    ("after quote", '.:53 {\n forward . "192.0.2.53"x\n}\n', "Corefile:2: text follows a closing quote"),
    ("empty file", "# nothing\n", "Corefile: no server blocks"),
    ("no forward", ".:53 {\n errors\n}", "Corefile:1: the server block for . has no forward"),
    ("duplicate zone", f".:53 {{\n forward . {UP}\n}}\n.:53 {{\n forward . {UP}\n}}",
     "Corefile:4: zone . on port 53 is already served by the block at Corefile:1"),
    ("duplicate key", f"a.test a.test {{\n forward . {UP}\n}}", "Corefile:1: server block: zone a.test. port 53 is listed twice"),
    ("bad zone", f"exa..mple {{\n forward . {UP}\n}}", "Corefile:1: server block: 'exa..mple.' is not a valid domain name"),
    ("tls server", f"tls://.:853 {{\n forward . {UP}\n}}", "Corefile:1: server block: 'tls://.:853': tls:// is not served"),
    ("bad port", f".:99999 {{\n forward . {UP}\n}}", "Corefile:1: server block: port 99999"),
    ("bad cidr", f"192.0.2.0/33 {{\n forward . {UP}\n}}", "Corefile:1: server block: '192.0.2.0/33' is not a network"),
    ("twice", in_block(" errors\n log\n errors"), "Corefile:4: errors: appears twice in this server block (first on line 2)"),
    ("errors arg", in_block(" errors stdout"), "Corefile:2: errors: takes no arguments"),
    ("errors block", in_block(' errors {\n  consolidate 5m ".*"\n }'), "Corefile:2: errors: takes no block"),
    ("log format", in_block(" log . combined"), "Corefile:2: log: takes no arguments"),
    ("loop arg", in_block(" loop 5"), "Corefile:2: loop: takes no arguments"),
    ("reload bad", in_block(" reload soon"), "Corefile:2: reload: INTERVAL 'soon' is not a duration"),
    ("reload short", in_block(" reload 1s"), "Corefile:2: reload: INTERVAL must be at least 2s"),
    ("reload jitter", in_block(" reload 10s 500ms"), "Corefile:2: reload: JITTER must be 0 or at least 1s"),
    ("reload args", in_block(" reload 10s 2s 1s"), "Corefile:2: reload: expected reload [INTERVAL [JITTER]]"),
    ("bind none", in_block(" bind"), "Corefile:2: bind: expected bind IP..."),
    ("bind iface", in_block(" bind lo"), "Corefile:2: bind: address 'lo' is not an IP address"),
    ("bind except", in_block(" bind 192.0.2.1 {\n  except 192.0.2.2\n }"), "Corefile:2: bind: bind options"),
    ("health no port", in_block(" health 169.254.20.10"), "Corefile:2: health: '169.254.20.10' is not an address"),
    ("health host", in_block(" health node.test:8080"), "Corefile:2: health: address 'node.test' is not an IP address"),
    ("health option", in_block(" health {\n  lameduck\n }"), "Corefile:3: health: expected lameduck DURATION"),
    ("health unknown", in_block(" health {\n  ready 5s\n }"), "Corefile:3: health: unknown option 'ready'"),
    ("prometheus port", in_block(" prometheus :0"), "Corefile:2: prometheus: ':0' is not an address"),
    ("prometheus 2", in_block(" prometheus :9253 :9254"), "Corefile:2: prometheus: expected prometheus"),
    ("cache ttl 0", in_block(" cache 0"), "Corefile:2: cache: TTL must be at least 1"),
    ("cache ttl unit", in_block(" cache 30s"), "Corefile:2: cache: TTL is whole seconds"),
    ("cache option", in_block(" cache {\n  positive 100\n }"), "Corefile:3: cache positive: unknown cache option"),
    ("cache twice opt", in_block(" cache {\n  success 1\n  success 2\n }"),
     "Corefile:4: cache success: appears twice in this cache block (first on line 3)"),
    ("success none", in_block(" cache {\n  success\n }"), "Corefile:3: cache success: expected success CAPACITY"),
    ("success many", in_block(" cache {\n  success 1 2 3 4\n }"), "Corefile:3: cache success: expected success"),
    ("success word", in_block(" cache {\n  success lots\n }"),
     "Corefile:3: cache success: CAPACITY must be a whole number, got 'lots'"),
    ("success ttl 0", in_block(" cache {\n  success 100 0\n }"), "Corefile:3: cache success: TTL must be at least 1"),
    ("denial min neg", in_block(" cache {\n  denial 100 5 -1\n }"),
     "Corefile:3: cache denial: MINTTL must be a whole number, got '-1'"),
    ("prefetch none", in_block(" cache {\n  prefetch\n }"), "Corefile:3: cache prefetch: expected prefetch AMOUNT"),
    ("prefetch pct", in_block(" cache {\n  prefetch 1 1m 5%\n }"), "Corefile:3: cache prefetch: PERCENTAGE must be 10% to 90%"),
    ("prefetch no %", in_block(" cache {\n  prefetch 1 1m 20\n }"), "Corefile:3: cache prefetch: PERCENTAGE"),
    ("prefetch dur", in_block(" cache {\n  prefetch 1 often\n }"),
     "Corefile:3: cache prefetch: DURATION 'often' is not a duration"),
    ("stale mode", in_block(" cache {\n  serve_stale 1h later\n }"),
     "Corefile:3: cache serve_stale: REFRESH_MODE must be immediate or verify"),
    ("stale args", in_block(" cache {\n  serve_stale 1h verify 2s\n }"), "Corefile:3: cache serve_stale: expected serve_stale"),
    ("stale fraction", in_block(" cache {\n  serve_stale 1500ms\n }"),
     "Corefile:3: cache serve_stale: DURATION '1500ms' must be a whole number of seconds"),
    ("servfail long", in_block(" cache {\n  servfail 10m\n }"), "Corefile:3: cache servfail: SERVFAIL may be cached at most 5m"),
    ("servfail none", in_block(" cache {\n  servfail\n }"), "Corefile:3: cache servfail: expected servfail DURATION"),
    ("disable what", in_block(" cache {\n  disable stale\n }"), "Corefile:3: cache disable: expected disable success|denial"),
    ("keepttl arg", in_block(" cache {\n  keepttl 5\n }"), "Corefile:3: cache keepttl: expected keepttl"),
    ("nested block", in_block(" cache {\n  success 1 {\n  }\n }"), "Corefile:3: success cannot open a block here"),
    ("forward none", in_block(" forward ."), "Corefile:2: forward: expected forward FROM TO..."),
    ("forward host", in_block(" forward . dns.example.test"), "Corefile:2: forward: 'dns.example.test' is not an upstream"),
    ("forward tls", in_block(" forward . tls://192.0.2.53"), "Corefile:2: forward: 'tls://192.0.2.53': tls:// upstreams are not"),
    ("forward port", in_block(" forward . 192.0.2.53:0"), "Corefile:2: forward: '192.0.2.53:0' is not an upstream"),
    ("forward no file", in_block(" forward . /nonexistent/resolv.conf"),
     "Corefile:2: forward: cannot read resolv.conf /nonexistent/"),
    ("forward narrow", in_block(" forward example.test 192.0.2.53"), "Corefile:2: forward: FROM example.test. does not cover"),
    ("forward twice", in_block(f" forward . {UP}\n forward . {UP}"), "Corefile:3: forward: appears twice"),
    ("forward option", in_block(f" forward . {UP} {{\n  except example.test\n }}"),
     "Corefile:3: forward except: unknown forward option"),
    ("forward opt twice", in_block(f" forward . {UP} {{\n  force_tcp\n  force_tcp\n }}"),
     "Corefile:4: forward force_tcp: appears twice"),
    ("force_tcp arg", in_block(f" forward . {UP} {{\n  force_tcp yes\n }}"), "Corefile:3: forward force_tcp: expected force_tcp"),
    ("policy", in_block(f" forward . {UP} {{\n  policy fastest\n }}"), "Corefile:3: forward policy: unknown policy 'fastest'"),
    ("max_fails", in_block(f" forward . {UP} {{\n  max_fails -1\n }}"),
     "Corefile:3: forward max_fails: N must be a whole number"),
    ("health_check 0", in_block(f" forward . {UP} {{\n  health_check 0\n }}"),
     "Corefile:3: forward health_check: must be a positive duration"),
    ("health_check opts", in_block(f" forward . {UP} {{\n  health_check 1s no_rec\n }}"),
     "Corefile:3: forward health_check: only health_check DURATION"),
    ("expire bad", in_block(f" forward . {UP} {{\n  expire never\n }}"),
     "Corefile:3: forward expire: DURATION 'never' is not a duration"),
    ("max_concurrent 0", in_block(f" forward . {UP} {{\n  max_concurrent 0\n }}"),
     "Corefile:3: forward max_concurrent: 0 (unlimited)"),
    ("template short", in_block(" template IN"), "Corefile:2: template: expected template CLASS TYPE"),
    ("template class", in_block(" template XX A"), "Corefile:2: template: CLASS must be one of"),
    ("template type", in_block(" template IN BOGUS"), "Corefile:2: template: 'BOGUS' is not a DNS record type"),
    ("template answer", in_block(' template IN A {\n  answer "{{ .Name }} 60 IN A 192.0.2.1"\n }'),
     "Corefile:3: template: 'answer' is not supported"),
    ("template rcode", in_block(" template IN A {\n  rcode MAYBE\n }"), "Corefile:3: template: RCODE must be one of"),
    ("hosts entry", in_block(" hosts {\n  192.0.2.7\n }"), "Corefile:3: hosts: the entry for 192.0.2.7 names no host"),
    ("hosts option", in_block(" hosts {\n  fallthrough_unsupported\n }"),
     "Corefile:3: hosts: 'fallthrough_unsupported' is neither"),
    ("hosts ttl", in_block(" hosts {\n  ttl 0\n }"), "Corefile:3: hosts: SECONDS must be at least 1"),
    ("hosts twice", in_block(" hosts\n hosts"), "Corefile:3: hosts: appears twice"),
]


@pytest.mark.parametrize(("text", "message"), [c[1:] for c in MUST_FAIL], ids=[c[0] for c in MUST_FAIL])
def test_must_fail(text: str, message: str) -> None:
    """Every refusal names FILE:LINE exactly and says what is expected."""
    with pytest.raises(ConfigError) as info:
        parse_corefile(text, "Corefile")
    assert str(info.value).startswith(message), str(info.value)


def test_resolv_conf_error_keeps_its_class(tmp_path: Path) -> None:
    """A resolv.conf without nameservers is still a ResolvConfError, now with FILE:LINE."""
    empty = tmp_path / "resolv.conf"
    empty.write_text("search example.test\n")
    with pytest.raises(ResolvConfError, match=r"^Corefile:2: forward: .* names no usable nameserver"):
        parse_corefile(f".:53 {{\n forward . {empty}\n}}\n", "Corefile")


def test_read_corefile_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read .*missing"):
        read_corefile(tmp_path / "missing")
    bad = tmp_path / "Corefile"
    bad.write_bytes(b". {\n forward . 192.0.2.53 # caf\xe9\n}\n")
    with pytest.raises(ConfigError, match="is not UTF-8"):
        read_corefile(bad)


def test_read_corefile_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "Corefile"
    path.write_text(".:53 {\n\n  nonsense\n}\n")
    with pytest.raises(ConfigError, match=rf"^{path}:3: nonsense: unknown directive"):
        read_corefile(path)


# ---------------------------------------------------------------------------- to Config


def stock(**subst: str) -> str:
    """The stock node-local-dns Corefile with its placeholders filled by hand."""
    values = {
        "__PILLAR__DNS__DOMAIN__": "cluster.local",
        "__PILLAR__LOCAL__DNS__": "169.254.20.10",
        "__PILLAR__DNS__SERVER__": "192.0.2.10",
        "__PILLAR__CLUSTER__DNS__": "192.0.2.53",
        "__PILLAR__UPSTREAM__SERVERS__": "198.51.100.1 198.51.100.2",
        **subst,
    }
    text = (FIXTURES / "node-local-dns.Corefile").read_text()
    for pillar, value in values.items():
        text = text.replace(pillar, value)
    return text


def test_stock_corefile_matches_the_flag_defaults() -> None:
    """The stock Corefile gives the same four zones the flags build, with CoreDNS's 5 s min TTL."""
    config = to_config(parse_corefile(stock(), "Corefile"))
    cluster = (Address("192.0.2.53"),)
    node = (Address("198.51.100.1"), Address("198.51.100.2"))
    floor = {"success_min_ttl": COREDNS_MIN_TTL, "denial_min_ttl": COREDNS_MIN_TTL}
    expected = default_zones(
        "cluster.local",
        cluster,
        node,
        CachePolicy(success_max_ttl=30, denial_max_ttl=5, **floor),
        CachePolicy(success_max_ttl=30, denial_max_ttl=30, **floor),
    )
    assert config.zones == expected
    assert config.listen == ("169.254.20.10", "192.0.2.10")
    assert config.port == 53
    assert config.metrics_address == "0.0.0.0:9253"
    assert config.health_address == "169.254.20.10:8080"


@pytest.mark.parametrize(
    ("requested", "held"),
    [(10000, 9984), (9984, 9984), (5000, 4864), (256, 1024), (0, 1024), (100000, 99840)],
)
def test_coredns_capacity(requested: int, held: int) -> None:
    """CoreDNS shards: requested // 256 per shard, at least 4, times 256."""
    assert coredns_capacity(requested) == held


def zones_of(text: str, **overrides: Any) -> dict[str, Any]:
    config = to_config(corefile(text), Overrides(**overrides))
    return {z.name: z for z in config.zones}


def test_block_without_cache_does_not_cache() -> None:
    zones = zones_of(f".:53 {{\n forward . {UP}\n}}")
    assert zones["."].cache == NO_CACHE


def test_several_zones_share_a_block() -> None:
    zones = zones_of(f"a.test b.test {{\n cache 10\n forward . {UP} {{\n force_tcp\n }}\n}}")
    assert set(zones) == {"a.test.", "b.test."}
    assert zones["a.test."].forward == zones["b.test."].forward
    assert zones["b.test."].forward.force_tcp
    assert zones["b.test."].cache.success_max_ttl == 10


def test_cache_zones_narrower_than_the_block() -> None:
    """`cache 30 example.test` in `.` caches only there: a sub-zone with the same upstreams."""
    zones = zones_of(f".:53 {{\n cache 30 example.test\n forward . {UP}\n}}")
    assert zones["."].cache == NO_CACHE
    assert zones["example.test."].cache.success_max_ttl == 30
    assert zones["example.test."].forward == zones["."].forward


def test_disable_success_below_the_block() -> None:
    zones = zones_of(f".:53 {{\n cache 30 {{\n disable success example.test\n }}\n forward . {UP}\n}}")
    assert zones["."].cache.success_capacity == 9984
    assert zones["example.test."].cache.success_capacity == 0
    assert zones["example.test."].cache.denial_capacity == 9984


def test_disable_denial_everywhere_also_stops_servfail() -> None:
    zones = zones_of(f".:53 {{\n cache 30 {{\n disable denial\n }}\n forward . {UP}\n}}")
    assert set(zones) == {"."}
    assert zones["."].cache.denial_capacity == 0
    assert zones["."].cache.servfail_ttl == 0


def test_cache_sub_zone_owned_by_another_block_is_left_to_it() -> None:
    zones = zones_of(f".:53 {{\n cache 30 example.test\n forward . {UP}\n}}\nexample.test {{\n forward . 192.0.2.54\n}}")
    assert zones["example.test."].forward.upstreams == (Address("192.0.2.54"),)
    assert zones["example.test."].cache == NO_CACHE


def test_cache_policy_details() -> None:
    """serve_stale sets the stale window; a min TTL above the max yields to it."""
    zones = zones_of(f".:53 {{\n cache 3 {{\n serve_stale 10m\n servfail 2s\n }}\n forward . {UP}\n}}")
    policy = zones["."].cache
    assert (policy.success_max_ttl, policy.success_min_ttl, policy.denial_min_ttl) == (3, 3, 3)
    assert policy.stale_window == 600
    assert policy.servfail_ttl == 2


def test_overrides_win() -> None:
    text = f".:5353 {{\n bind 192.0.2.1\n prometheus :9253\n forward . {UP}\n}}"
    config = to_config(
        corefile(text),
        Overrides(listen=("127.0.0.1",), port=0, try_timeout=1.0, timeout=3.0, loop="asyncio", metrics_address="127.0.0.1:9999"),
    )
    assert (config.listen, config.port, config.loop, config.metrics_address) == (("127.0.0.1",), 0, "asyncio", "127.0.0.1:9999")
    assert (config.zones[0].forward.try_timeout, config.zones[0].forward.timeout) == (1.0, 3.0)


def test_without_overrides_the_corefile_decides() -> None:
    config = to_config(corefile(f".:5353 {{\n bind 192.0.2.1\n health {{\n lameduck 3s\n }}\n forward . {UP}\n}}"))
    assert (config.listen, config.port, config.health_address, config.lameduck) == (("192.0.2.1",), 5353, "0.0.0.0:8080", 3.0)
    assert config.metrics_address is None


def test_no_bind_listens_everywhere() -> None:
    assert to_config(corefile(f".:53 {{\n forward . {UP}\n}}")).listen == WILDCARD_LISTEN


def test_own_resolvers_are_dropped(tmp_path: Path) -> None:
    """A node resolv.conf naming this agent (it runs node-local DNS itself) must not loop."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 169.254.20.10\nnameserver 198.51.100.1\n")
    zones = zones_of(f".:53 {{\n bind 169.254.20.10\n forward . {resolv}\n}}")
    assert zones["."].forward.upstreams == (Address("198.51.100.1"),)


def test_only_own_resolver_is_an_error(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 169.254.20.10\n")
    with pytest.raises(ResolvConfError, match=r"^Corefile:3: forward: every node resolver is this agent's own address"):
        to_config(corefile(f".:53 {{\n bind 169.254.20.10\n forward . {resolv}\n}}"))


TO_CONFIG_FAILS: list[tuple[str, str, dict[str, Any], str]] = [
    ("self", ".:53 {\n bind 169.254.20.10\n forward . 169.254.20.10\n}", {},
     "Corefile:3: forward: 169.254.20.10:53 is this agent's own address"),
    ("binds differ", f"a.test {{\n bind 192.0.2.1\n forward . {UP}\n}}\nb.test {{\n bind 192.0.2.2\n forward . {UP}\n}}", {},
     "Corefile:5: this block listens on 192.0.2.2 but the block at Corefile:1 on 192.0.2.1"),
    ("ports differ", f"a.test:53 {{\n forward . {UP}\n}}\nb.test:5353 {{\n forward . {UP}\n}}", {},
     "Corefile:4: zone b.test. is on port 5353 but a.test. (Corefile:1) on 53"),
    ("metrics differ",
     f"a.test {{\n prometheus :9253\n forward . {UP}\n}}\nb.test {{\n prometheus :9153\n forward . {UP}\n}}", {},
     "Corefile:5: prometheus 0.0.0.0:9153 differs from prometheus 0.0.0.0:9253 at Corefile:1"),
    ("port collapse", f".:53 {{\n forward . {UP}\n}}\n.:5353 {{\n forward . {UP}\n}}", {"port": 53},
     "a zone is configured twice: ."),
    ("bad listen", f".:53 {{\n forward . {UP}\n}}", {"listen": ("node.test",)},
     "listen address 'node.test' is not an IP address"),
    ("template", f".:53 {{\n forward . {UP}\n template IN AAAA\n}}", {},
     "Corefile:3: template is not answered by this build"),
    ("hosts", f".:53 {{\n forward . {UP}\n\n hosts {{\n 192.0.2.7 web.test\n }}\n}}", {},
     "Corefile:4: hosts is not answered by this build"),
]


@pytest.mark.parametrize(("text", "overrides", "message"), [c[1:] for c in TO_CONFIG_FAILS], ids=[c[0] for c in TO_CONFIG_FAILS])
def test_to_config_must_fail(text: str, overrides: dict[str, Any], message: str) -> None:
    """What parses but cannot run as written is refused before anything starts."""
    parsed = parse_corefile(text, "Corefile")
    with pytest.raises(ConfigError) as info:
        to_config(parsed, Overrides(**overrides))
    assert str(info.value).startswith(message), str(info.value)


def test_overrides_resolve_what_would_conflict() -> None:
    """Blocks on different ports are fine when --port and --listen decide for all."""
    text = f"a.test:53 {{\n bind 192.0.2.1\n forward . {UP}\n}}\nb.test:5353 {{\n bind 192.0.2.2\n forward . {UP}\n}}"
    config = to_config(corefile(text), Overrides(listen=("192.0.2.3",), port=5300))
    assert (config.listen, config.port) == (("192.0.2.3",), 5300)


# ---------------------------------------------------------------------------- check-config


def test_check_config_table() -> None:
    table = check_config_table(to_config(parse_corefile(stock(), "Corefile")))
    lines = table.splitlines()
    assert lines[0] == "listen 169.254.20.10 192.0.2.10 port 53; metrics 0.0.0.0:9253; health 169.254.20.10:8080"
    assert lines[1].split() == ["ZONE", "UPSTREAMS", "TRANSPORT", "SUCCESS", "DENIAL", "SERVFAIL", "STALE", "PREFETCH"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == {"cluster.local.", "in-addr.arpa.", "ip6.arpa.", "."}
    assert "192.0.2.53:53" in rows["cluster.local."] and " tcp " in rows["cluster.local."]
    assert "9984 x 5-30s  9984 x 5-5s" in rows["cluster.local."]
    assert "198.51.100.1:53 198.51.100.2:53" in rows["."] and "udp, tcp if truncated" in rows["."]
    assert all(line.endswith("off") for line in lines[2:])  # no stale window, no prefetch


def test_check_config_table_shows_disabled_caches() -> None:
    config = Config(listen=("127.0.0.1",), port=0, zones=to_config(corefile(f".:53 {{\n forward . {UP}\n}}")).zones)
    row = check_config_table(config).splitlines()[2]
    assert row.split()[-5:] == ["off", "off", "off", "off", "off"]


# ---------------------------------------------------------------------------- a tuned Corefile


def test_tuned_corefile_fixture() -> None:
    """Every supported option at once, as an operator might tune node-local DNS."""
    parsed = read_corefile(FIXTURES / "tuned.Corefile")
    first, reverse, root = parsed.blocks
    assert first.zones == ("cluster.test.", "svc.example.") and first.line == 5
    assert (first.errors, first.log, first.loop, first.reload) == (True, True, True, ReloadSpec(10.0, 5.0))
    cache = first.cache
    assert cache is not None
    assert (cache.success_capacity, cache.success_max_ttl, cache.success_min_ttl) == (20000, 30, 2)
    assert (cache.denial_capacity, cache.denial_max_ttl, cache.denial_min_ttl) == (5000, 10, 0)
    assert cache.prefetch == PrefetchSpec(5, 30.0, 20)
    assert cache.serve_stale == StaleSpec(600.0, "verify")
    assert (cache.servfail_ttl, cache.keepttl) == (2.0, True)
    fwd = first.forward
    assert fwd is not None
    assert fwd.upstreams == (Address("192.0.2.53"), Address("2001:db8::53"))
    assert (fwd.force_tcp, fwd.policy, fwd.max_fails, fwd.health_check, fwd.expire, fwd.max_concurrent) == (
        True, "sequential", 3, 1.0, 30.0, 500,
    )
    assert (first.prometheus, first.health) == (Endpoint("169.254.20.10", 9253), Endpoint("169.254.20.10", 8080))
    assert first.lameduck == 5.0
    assert reverse.zones == ("2.0.192.in-addr.arpa.", "8.b.d.0.1.0.0.2.ip6.arpa.")
    assert reverse.forward is not None and reverse.forward.prefer_udp and not reverse.forward.force_tcp
    assert root.cache is not None and root.cache.disable_denial == ("ads.example.",)

    config = to_config(parsed)
    zones = {z.name: z for z in config.zones}
    assert list(zones) == [
        "cluster.test.", "svc.example.", "2.0.192.in-addr.arpa.", "8.b.d.0.1.0.0.2.ip6.arpa.", ".", "ads.example.",
    ]
    assert zones["svc.example."].cache == CachePolicy(
        success_capacity=19968, success_max_ttl=30, success_min_ttl=2,
        denial_capacity=4864, denial_max_ttl=10, denial_min_ttl=0, servfail_ttl=2, stale_window=600,
        prefetch_amount=5, prefetch_duration=30.0, prefetch_percentage=20, keepttl=True,
    )
    assert zones["."].cache.success_max_ttl == 3600 and zones["."].cache.denial_max_ttl == 1800
    assert zones["ads.example."].cache.denial_capacity == 0 and zones["ads.example."].cache.success_capacity == 9984
    assert zones["ads.example."].forward == zones["."].forward
    assert (config.listen, config.metrics_address, config.health_address, config.lameduck) == (
        ("169.254.20.10", "2001:db8::10"), "169.254.20.10:9253", "169.254.20.10:8080", 5.0,
    )
