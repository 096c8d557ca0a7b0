"""Build nodecache, compiling the hot-path modules to C extensions with mypyc where it can.

Metadata lives in setup.cfg; this file only adds the extensions. The modules
listed under [nodecache:compiled] in setup.cfg are compiled (docs/performance.md,
"Compiled modules"), and cffi builds the small extension through which mmsg calls
recvmmsg and sendmmsg (nodecache/mmsgabi.py). Every compiled module is also valid
plain Python, and mmsg falls back to ctypes, so a build that cannot compile still
installs a working agent, only slower:

- NODECACHE_COMPILE=0 builds no extensions;
- without mypyc, or when the C compiler fails, the build says so and goes on pure;
- without cffi, the modules are compiled and the build says that mmsg will call through ctypes.
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
# The one shared library of all compiled modules: inside the package (nodecache/native__mypyc...so),
# so it is found wherever the package is, an editable checkout included.
GROUP = "nodecache.native"


def compiled_modules() -> list[str]:
    """The source files to compile, from setup.cfg (the Makefile and the tests read the same list)."""
    cfg = configparser.ConfigParser()
    cfg.read(HERE / "setup.cfg")
    return cfg.get("nodecache:compiled", "modules").split()


def say(message: str) -> None:
    print(f"nodecache build: {message}", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """Builds the extensions, or none of them: a failed compile leaves the pure-Python package."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001  (any compiler or linker failure: fall back, loudly)
            for ext in self.extensions:  # where each went, in place or not: none may outlive a failed build
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            say(f"compiling failed ({exc}); installing the pure-Python modules, which run slower. "
                "Install a C compiler and Python's headers (Debian: gcc python3-dev) to compile them.")


def ffi_extension() -> list:
    """The cffi extension of mmsgabi.ffibuilder(), or none without cffi (mmsg then calls through ctypes)."""
    try:
        import cffi  # noqa: F401
    except ImportError:
        say("cffi is not installed; recvmmsg and sendmmsg will go through ctypes (pip install cffi)")
        return []
    # By path: importing the package here would need its dependencies at build time.
    spec = importlib.util.spec_from_file_location("mmsgabi", HERE / "nodecache" / "mmsgabi.py")
    abi = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(abi)
    return [abi.ffibuilder().distutils_extension(tmpdir=str(HERE / "build" / "cffi"), verbose=False)]


def extensions() -> list:
    if os.environ.get("NODECACHE_COMPILE", "1") == "0":
        say("NODECACHE_COMPILE=0: not compiling; the pure-Python modules are installed")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        say("mypyc is not installed; the pure-Python modules are installed (pip install mypy to compile)")
        return []
    os.chdir(HERE)  # mypycify takes paths relative to the project
    compiled = mypycify(["--ignore-missing-imports", *compiled_modules()], opt_level="3", group_name=GROUP)
    return compiled + ffi_extension()


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
