"""The block reader: tokens grouped into server blocks of directive lines, at most two levels deep."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from nodecache.corefile.lexer import Token
from nodecache.errors import ConfigError


@dataclass
class Line:
    """A directive (or option) line: its name, arguments and optional block."""

    name: Token
    args: list[Token]
    block: list[Line] | None = None

    @property
    def line(self) -> int:
        return self.name.line


@dataclass
class RawBlock:
    """A server block before its directives are understood: header words and body lines."""

    keys: list[Token]
    body: list[Line]


class Reader:
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

    def server_blocks(self) -> Iterator[RawBlock]:
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
            yield RawBlock(keys, self.body(opener, depth=1))

    def body(self, opener: Token, depth: int) -> list[Line]:
        lines: list[Line] = []
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
            item = Line(tok, [])
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
