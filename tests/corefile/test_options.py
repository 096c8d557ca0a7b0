"""Every option the Corefile parser accepts is honoured, deliberately inert, or refused by line.

Each directive module declares its options (registry.Option): the Config fields a
non-default value reaches, or why it reaches none, or the FILE:LINE refusal. These
tests parse every declared example and hold the declaration to what to_config does,
and check that no accepted word is missing from the declarations.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest

from nodecache.config import CachePolicy, Config, ForwardPolicy
from nodecache.corefile import SUPPORTED_DIRECTIVES, parse_corefile, to_config
from nodecache.corefile.directives import DIRECTIVES
from nodecache.corefile.keys import OPTIONS as KEY_OPTIONS
from nodecache.corefile.registry import Option, sample
from nodecache.errors import ConfigError

ALL_OPTIONS: list[Option] = [*KEY_OPTIONS, *(o for d in DIRECTIVES.values() for o in d.options)]


def flatten(config: Config) -> dict[str, Any]:
    """Config as `field: value`, zone fields as `zones.forward.X` / `zones.cache.X` tuples over the zones."""
    flat: dict[str, Any] = {f.name: getattr(config, f.name) for f in fields(Config) if f.name != "zones"}
    flat["zones"] = tuple(z.name for z in config.zones)
    for part, kind in (("forward", ForwardPolicy), ("cache", CachePolicy)):
        for f in fields(kind):
            flat[f"zones.{part}.{f.name}"] = tuple(getattr(getattr(z, part), f.name) for z in config.zones)
    return flat


def changed(before: Config, after: Config) -> set[str]:
    """The flattened fields that differ; a different list of zones counts once, as `zones`."""
    a, b = flatten(before), flatten(after)
    diff = {k for k in a if a[k] != b[k]}
    if "zones" in diff:
        diff = {k for k in diff if not k.startswith("zones.")}
    return diff


def covers(declared: str, key: str) -> bool:
    return key == declared or key.startswith(declared + ".")


def check(option: Option) -> None:
    """Raise AssertionError when what `option` declares is not what the agent does with it."""
    if option.refused:
        with pytest.raises(ConfigError) as info:
            to_config(parse_corefile(option.example, "Corefile"))
        assert str(info.value).startswith(option.refused), f"{option.name}: {info.value}"
        return
    diff = changed(to_config(parse_corefile(option.baseline, "Corefile")), to_config(parse_corefile(option.example, "Corefile")))
    if option.inert:
        assert not diff, f"{option.name} is declared inert ({option.inert}) but changes {sorted(diff)}"
        return
    assert diff, f"{option.name} parses but reaches no Config field: honour it, refuse it, or declare why it is inert"
    stray = sorted(k for k in diff if not any(covers(d, k) for d in option.reaches))
    assert not stray, f"{option.name} also changes {stray}; declare them"
    unreached = [d for d in option.reaches if not any(covers(d, k) for k in diff)]
    assert not unreached, f"{option.name} is declared to reach {unreached} but does not"


@pytest.mark.parametrize("option", ALL_OPTIONS, ids=[o.name for o in ALL_OPTIONS])
def test_option_does_what_it_declares(option: Option) -> None:
    """Each accepted option changes exactly the Config fields it declares, or none if inert, or is refused."""
    check(option)


def test_every_accepted_word_is_declared() -> None:
    """Every directive and every option word its block accepts has a declaration."""
    assert set(DIRECTIVES) == set(SUPPORTED_DIRECTIVES)
    names = {o.name for o in ALL_OPTIONS}
    missing = [name for name, d in DIRECTIVES.items() if name not in names]
    missing += [f"{name} {word}" for name, d in DIRECTIVES.items() for word in d.words if f"{name} {word}" not in names]
    assert not missing, f"accepted but undeclared: {missing}"
    for name, directive in DIRECTIVES.items():
        assert all(o.name.split()[0] == name for o in directive.options), name


@pytest.mark.parametrize(("name", "body"), [
    ("cache", "cache {\n bogus 1\n}"),
    ("forward", "forward . 192.0.2.10 {\n bogus\n}"),
    ("health", "health {\n bogus 1s\n}"),
    ("template", "template IN A {\n bogus 1\n}"),
    ("hosts", "hosts {\n bogus 1\n}"),
])  # fmt: skip
def test_words_outside_the_declarations_are_refused_by_line(name: str, body: str) -> None:
    """The declared words are the whole vocabulary: anything else in the block stops parsing at its line."""
    assert "bogus" not in DIRECTIVES[name].words
    with pytest.raises(ConfigError, match=r"^Corefile:3: "):
        parse_corefile(sample(body), "Corefile")


@pytest.mark.parametrize("wrong", [
    Option("log", sample("log"), inert="claimed inert, but it turns the query log on"),
    Option("forward prefer_udp", sample("forward . 192.0.2.10 {\nprefer_udp\n}"), reaches=("zones.forward.force_tcp",)),
    Option("cache TTL", sample("cache 30"), sample("cache"), reaches=("zones.cache.success_max_ttl",)),
    Option("cache serve_stale", sample("cache {\nserve_stale 10m immediate\n}"), sample("cache"),
           reaches=("zones.cache.stale_window", "zones.cache.stale_mode", "zones.cache.servfail_ttl")),
    Option("cache prefetch", sample("cache {\nprefetch 5 30s\n}"), sample("cache"),
           reaches=("zones.cache.prefetch_amount",)),
    Option("reload JITTER", sample("reload 30s 5s"), sample("reload 30s"), refused="Corefile:9:"),
], ids=["inert-but-not", "reaches-nothing", "undeclared-field", "unreached-field", "stray-fields",
        "wrong-line"])  # fmt: skip
def test_the_check_fails_on_a_wrong_declaration(wrong: Option) -> None:
    """The check above can fail: each of these declarations misstates what the option does."""
    with pytest.raises((AssertionError, ConfigError)):
        check(wrong)


def test_options_declare_exactly_one_fate() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Option("x", sample(), reaches=("port",), inert="both")
    with pytest.raises(ValueError, match="exactly one"):
        Option("x", sample())
