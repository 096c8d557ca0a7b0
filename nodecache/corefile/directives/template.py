"""`template CLASS TYPE [ZONES...] { rcode RCODE }`: parsed and checked, refused by to_config.

The resolver cannot answer from a template yet, so the whole directive is refused
with its line; parsing it first still reports a mistyped one precisely.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from nodecache.corefile.reader import Line
from nodecache.corefile.registry import Directive, Option, sample
from nodecache.corefile.values import Ctx, arity, zone

if TYPE_CHECKING:
    from nodecache.corefile.model import ServerBlock

DNS_CLASSES = {"IN": 1, "CH": 3, "HS": 4, "ANY": 255}
OPTION_WORDS = ("rcode",)  # the simple form only: an empty reply with that rcode
TEMPLATE_RCODES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED")
REFUSED = "is not answered by this build of nodecache yet; remove it, or answer these names upstream"


@dataclass(frozen=True)
class TemplateSpec:
    """`template CLASS TYPE [ZONES...] { rcode RCODE }`: a fixed, answerless reply."""

    line: int
    qclass: str  # IN, CH, HS or ANY
    qtype: str  # a type name, or ANY
    zones: tuple[str, ...]  # empty: the server block's zones
    rcode: str = "NOERROR"


def parse(block: ServerBlock, ctx: Ctx, item: Line) -> ServerBlock:
    if len(item.args) < 2:
        raise ctx.fail("expected template CLASS TYPE [ZONES...] { rcode RCODE }")
    qclass, qtype = item.args[0].text.upper(), item.args[1].text.upper()
    if qclass not in DNS_CLASSES:
        raise ctx.at(item.args[0].line).fail(f"CLASS must be one of {', '.join(DNS_CLASSES)}, got {item.args[0].text!r}")
    if qtype != "ANY" and not _known_type(qtype):
        raise ctx.at(item.args[1].line).fail(f"{item.args[1].text!r} is not a DNS record type (e.g. A, AAAA, ANY)")
    zones = tuple(zone(ctx, t) for t in item.args[2:])
    rcode = "NOERROR"
    for opt in item.block or ():
        octx = ctx.at(opt.line)
        if opt.name.text not in OPTION_WORDS:
            raise octx.fail(
                f"{opt.name.text!r} is not supported; nodecache answers only the simple form "
                "template CLASS TYPE [ZONES...] { rcode RCODE } (an empty reply with that rcode)"
            )
        arity(octx, opt.args, 1, 1, "rcode RCODE")
        rcode = opt.args[0].text.upper()
        if rcode not in TEMPLATE_RCODES:
            raise octx.fail(f"RCODE must be one of {', '.join(TEMPLATE_RCODES)}, got {opt.args[0].text!r}")
    spec = TemplateSpec(item.line, qclass, qtype, zones, rcode)
    return replace(block, templates=(*block.templates, spec))


def _known_type(name: str) -> bool:
    from dnslib import QTYPE  # only when a template is written; the parser needs nothing else from it

    return name in QTYPE.reverse or bool(re.fullmatch(r"TYPE\d{1,5}", name))


_WHY = "Corefile:2: template is not answered by this build"
TEMPLATE = Directive(
    "template",
    parse,
    (
        Option("template", sample("template IN AAAA"), refused=_WHY),
        Option("template ZONES", sample("template IN AAAA example.org"), refused=_WHY),
        Option("template rcode", sample("template IN AAAA {\nrcode NXDOMAIN\n}"), refused=_WHY),
    ),
    words=OPTION_WORDS,
    repeatable=True,
)
