"""Corefile words: the lexer, which knows quotes, comments and braces, nothing of directives."""

from __future__ import annotations

from dataclasses import dataclass

from nodecache.errors import ConfigError


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
