"""Which of the hot-path modules are compiled here, and whether any is older than its source.

The list is setup.cfg's [nodecache:compiled], the one setup.py compiles. A compiled
module sits beside its source (`make venv` builds in place) and Python prefers it,
so an edit to the source does not run until it is compiled again.
"""

from __future__ import annotations

import configparser
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def sources() -> list[Path]:
    """The sources setup.py compiles."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return [REPO / m for m in cfg.get("nodecache:compiled", "modules").split()]


def extension(source: Path) -> Path | None:
    """The compiled module built from `source`, if there is one."""
    for suffix in EXTENSION_SUFFIXES:
        built = source.with_suffix(suffix)
        if built.exists():
            return built
    return None


def stale() -> list[str]:
    """Sources edited since they were last compiled (relative to the repository).

    The code of every compiled module is in the one shared library (nodecache/native__mypyc...),
    rebuilt whenever any source changes; a module's own extension is a small stub that the build
    leaves alone once made, so its age says nothing.
    """
    shared = extension(REPO / "nodecache" / "native__mypyc.py")
    if shared is None:
        return []
    built = shared.stat().st_mtime
    return [str(src.relative_to(REPO)) for src in sources() if extension(src) and src.stat().st_mtime > built]
