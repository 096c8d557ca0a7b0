"""What each directive accepts, and what each accepted word does at run time.

Every directive module declares its options here as `Option`s: the Config fields a
non-default value reaches, or why it deliberately reaches none (`inert`), or the
message `to_config` refuses it with (`refused`). tests/corefile/test_options.py parses
each example and checks the claim, so an option that parses and silently does
nothing fails a test instead of surprising an operator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nodecache.corefile.model import ServerBlock
    from nodecache.corefile.reader import Line
    from nodecache.corefile.values import Ctx

SAMPLE_UPSTREAM = "192.0.2.10"  # documentation address: examples are parsed, never run


def sample(body: str = "", header: str = ".:53") -> str:
    """A one-block Corefile with `body` inside, plus a forward unless the body has one."""
    lines = [line for line in body.splitlines() if line.strip()]
    if not any(line.split()[0] == "forward" for line in lines):
        lines.append(f"forward . {SAMPLE_UPSTREAM}")
    inner = "\n".join(f"    {line}" for line in lines)
    return f"{header} {{\n{inner}\n}}\n"


@dataclass(frozen=True)
class Option:
    """One word (or argument) a directive accepts, and what becomes of it.

    `example` uses it with a non-default value; `baseline` is the same Corefile
    without it. Exactly one of `reaches`, `inert` and `refused` is given:
    `reaches` names Config fields (`zones.cache.stale_window`; a prefix such as
    `zones.cache` covers its fields, `zones` the list of zones itself).
    """

    name: str
    example: str
    baseline: str = sample()
    reaches: tuple[str, ...] = ()
    inert: str = ""
    refused: str = ""

    def __post_init__(self) -> None:
        if sum(map(bool, (self.reaches, self.inert, self.refused))) != 1:
            raise ValueError(f"option {self.name!r}: give exactly one of reaches, inert, refused")


Handler = Callable[["ServerBlock", "Ctx", "Line"], "ServerBlock"]


@dataclass(frozen=True)
class Directive:
    """A directive: its parser, the option words its block accepts, and its options' fates."""

    name: str
    parse: Handler
    options: tuple[Option, ...]
    words: tuple[str, ...] = ()  # keywords accepted inside its { } block
    repeatable: bool = False
