"""Text forms of wire values for people: types and rcodes (names: see nodecache.names).

Used by logs, metrics labels, the stats report and the CLI; never on the hit
path. Type and rcode mnemonics come from dnslib's tables (RFC 3597's TYPEnnn
for the rest), so they read as dig prints them. dnslib is imported on the
first use, not at start: an agent that logs and reports nothing of that kind
does not keep it resident (about 0.6 MiB).
"""

from __future__ import annotations

from nodecache.errors import ConfigError
from nodecache.names import name_text

# name_text moved to nodecache.names with the other name helpers; re-exported here for
# logs.py and stats.py, which import it from this module.
__all__ = ["MAX_TYPE", "name_text", "rcode_name", "type_name", "type_number"]

MAX_TYPE = 65535


def type_name(qtype: int) -> str:
    """A, AAAA, SRV...; TYPE65280 for a type without a mnemonic."""
    from dnslib import QTYPE

    name = QTYPE.get(qtype)
    return name if isinstance(name, str) else f"TYPE{qtype}"


def rcode_name(rcode: int) -> str:
    """NOERROR, NXDOMAIN...; RCODE12 for one without a mnemonic; "other" for counters.OTHER_RCODE (-1)."""
    if rcode < 0:
        return "other"
    from dnslib import RCODE

    name = RCODE.get(rcode)
    return name if isinstance(name, str) else f"RCODE{rcode}"


def type_number(text: str) -> int:
    """Read a type as an operator writes it: A, aaaa, TYPE65 or 65."""
    from dnslib import QTYPE

    word = text.strip().upper()
    if word.isdigit() or (word.startswith("TYPE") and word[4:].isdigit()):
        value = int(word.removeprefix("TYPE"))
        if 0 < value <= MAX_TYPE:
            return value
    elif word.isascii() and word in QTYPE.reverse:
        return int(QTYPE.reverse[word])
    raise ConfigError(f"{text!r} is not a DNS record type; write a mnemonic such as A, AAAA, SRV, or TYPEnnn")
