"""to_config on its own returns the complete Config a Corefile means: reload, loop detection, query log included."""

from __future__ import annotations

import textwrap

import pytest

from nodecache.config import Config
from nodecache.corefile import parse_corefile, to_config
from nodecache.errors import ConfigError
from tests.test_corefile import stock

UP = "192.0.2.53"


def config_of(text: str) -> Config:
    return to_config(parse_corefile(textwrap.dedent(text).lstrip("\n"), "Corefile"))


def test_a_plain_corefile_has_no_reload_no_loop_check_and_no_query_log() -> None:
    config = config_of(f".:53 {{\n forward . {UP}\n}}")
    assert (config.reload_interval, config.loop_zones, config.query_log) == (0.0, (), False)


def test_reload_interval_is_the_most_frequent_any_block_asks_for() -> None:
    config = config_of(
        f"""
        a.test {{
            reload 1m
            forward . {UP}
        }}
        b.test {{
            reload 10s
            forward . {UP}
        }}
        c.test {{
            forward . {UP}
        }}
        """
    )
    assert config.reload_interval == 10.0


def test_bare_reload_is_coredns_default_interval() -> None:
    assert config_of(f".:53 {{\n reload\n forward . {UP}\n}}").reload_interval == 30.0


@pytest.mark.parametrize("jitter", ["0", "15s"])
def test_reload_jitter_zero_or_default_is_accepted(jitter: str) -> None:
    """0 is what the agent does; 15s is CoreDNS's default, written out."""
    assert config_of(f".:53 {{\n reload 1m {jitter}\n forward . {UP}\n}}").reload_interval == 60.0


def test_reload_jitter_is_refused_by_line() -> None:
    with pytest.raises(ConfigError, match=r"^Corefile:3: reload: JITTER 5s is not supported yet; .*remove JITTER"):
        config_of(f".:53 {{\n forward . {UP}\n reload 1m 5s\n}}")


def test_loop_zones_are_the_zones_of_blocks_with_loop() -> None:
    config = config_of(
        f"""
        cluster.test 192.0.2.0/24 {{
            loop
            forward . {UP}
        }}
        .:53 {{
            forward . {UP}
        }}
        """
    )
    assert config.loop_zones == ("cluster.test.", "2.0.192.in-addr.arpa.")


def test_log_in_any_block_turns_the_query_log_on() -> None:
    config = config_of(f"a.test {{\n forward . {UP}\n}}\nb.test {{\n log\n forward . {UP}\n}}")
    assert config.query_log


@pytest.mark.parametrize(("option", "fields"), [
    ("prefetch 10", {"prefetch_amount": 10, "prefetch_duration": 60.0, "prefetch_percentage": 10}),
    ("prefetch 3 30s 25%", {"prefetch_amount": 3, "prefetch_duration": 30.0, "prefetch_percentage": 25}),
    ("keepttl", {"keepttl": True}),
])  # fmt: skip
def test_prefetch_and_keepttl_reach_the_cache_policy(option: str, fields: dict[str, object]) -> None:
    config = config_of(f".:53 {{\n forward . {UP}\n cache {{\n  {option}\n }}\n}}")
    policy = config.zones[0].cache
    assert {name: getattr(policy, name) for name in fields} == fields


@pytest.mark.parametrize(("option", "message"), [
    ("prefetch", "Corefile:4: cache prefetch: expected prefetch AMOUNT"),
    ("prefetch 10 0s", "Corefile:4: cache prefetch: DURATION must be more than 0"),
    ("prefetch 10 1m 95%", "Corefile:4: cache prefetch: PERCENTAGE must be 10% to 90%"),
    ("prefetch -1", "Corefile:4: cache prefetch: AMOUNT must be a whole number"),
])  # fmt: skip
def test_bad_prefetch_values_are_refused_by_line(option: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}"):
        config_of(f".:53 {{\n forward . {UP}\n cache {{\n  {option}\n }}\n}}")


def test_the_stock_corefile_alone_gives_what_the_cli_added_before() -> None:
    """node-local-dns's stock Corefile: reload 30s and loop in every block, no query log."""
    config = to_config(parse_corefile(stock(), "Corefile"))
    assert config.reload_interval == 30.0
    assert config.loop_zones == ("cluster.local.", "in-addr.arpa.", "ip6.arpa.", ".")
    assert not config.query_log
