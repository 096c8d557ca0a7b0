"""Step one: Corefile text into `CorefileConfig`, every value checked, nothing run yet."""

from __future__ import annotations

from pathlib import Path

from nodecache.corefile.directives import DIRECTIVES, REPEATABLE_DIRECTIVES, SUPPORTED_DIRECTIVES
from nodecache.corefile.keys import ZoneKey, parse_keys
from nodecache.corefile.lexer import tokenize
from nodecache.corefile.model import CorefileConfig, ServerBlock
from nodecache.corefile.reader import RawBlock, Reader
from nodecache.corefile.values import Ctx
from nodecache.errors import ConfigError


def parse_corefile(text: str, source: str = "Corefile") -> CorefileConfig:
    """Parse a whole Corefile text; `source` names it in error messages (FILE:LINE)."""
    reader = Reader(tokenize(text, source), source)
    blocks = tuple(_parse_block(raw, source) for raw in reader.server_blocks())
    if not blocks:
        raise ConfigError(f"{source}: no server blocks; a Corefile needs at least one, e.g. .:53 {{ forward . 192.0.2.10 }}")
    owner: dict[ZoneKey, ServerBlock] = {}
    for block in blocks:
        for key in block.keys:
            if key in owner:
                raise ConfigError(
                    f"{block.where}: zone {key.zone} on port {key.port} is already served by the block at "
                    f"{owner[key].where}; merge the two blocks"
                )
            owner[key] = block
    return CorefileConfig(source, blocks)


def read_corefile(path: str | Path) -> CorefileConfig:
    """Read and parse a Corefile from disk."""
    return parse_corefile(read_text(path), str(path))


def read_text(path: str | Path) -> str:
    """A configuration file's text, or a ConfigError saying why it cannot be read."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}; check the path and the ConfigMap mount") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: byte {exc.start} is not UTF-8; save the file as UTF-8 text") from None


def _parse_block(raw: RawBlock, source: str) -> ServerBlock:
    block = ServerBlock(source, raw.keys[0].line, parse_keys(raw.keys, source))
    seen: dict[str, int] = {}
    for item in raw.body:
        name = item.name.text
        ctx = Ctx(source, item.line, name)
        if name not in DIRECTIVES:
            raise ctx.fail(
                f"unknown directive; nodecache supports {', '.join(SUPPORTED_DIRECTIVES)} "
                "(see docs/migrate.md)"
            )
        if name in seen and name not in REPEATABLE_DIRECTIVES:
            raise ctx.fail(f"appears twice in this server block (first on line {seen[name]}); keep one")
        seen.setdefault(name, item.line)
        block = DIRECTIVES[name].parse(block, ctx, item)
    if block.forward is None:
        raise ConfigError(
            f"{block.where}: the server block for {', '.join(block.zones)} has no forward; "
            "add e.g. `forward . 192.0.2.10` so its misses have somewhere to go"
        )
    return block
