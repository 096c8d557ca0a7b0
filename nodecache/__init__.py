"""nodecache: a node-local DNS caching agent for Kubernetes."""

from __future__ import annotations

import os as _os
import sys as _sys
from importlib.machinery import (
    BYTECODE_SUFFIXES,
    EXTENSION_SUFFIXES,
    SOURCE_SUFFIXES,
    FileFinder,
    SourceFileLoader,
    SourcelessFileLoader,
)

__version__ = "0.1.0"

# The hot-path modules are compiled with mypyc where the build could (setup.py; docs/performance.md,
# "Compiled modules"), and Python imports a compiled module before the source beside it.
# NODECACHE_PURE_PYTHON=1 runs the sources instead: to compare the two, or to rule the compiled
# build out when chasing a fault. The finder below is the standard one, without extension modules.
PURE_PYTHON_ENV = "NODECACHE_PURE_PYTHON"
PURE_PYTHON = _os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0")

if PURE_PYTHON:
    for _dir in __path__:
        _sys.path_importer_cache[_dir] = FileFinder(
            _dir, (SourceFileLoader, SOURCE_SUFFIXES), (SourcelessFileLoader, BYTECODE_SUFFIXES)
        )


def build() -> str:
    """How the hot path runs: "compiled" when its modules loaded as C extensions, else "python"."""
    from nodecache import wire  # compiled first of all, imported by every path

    return "compiled" if (wire.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES)) else "python"
