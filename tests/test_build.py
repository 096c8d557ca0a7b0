"""The compiled hot path (setup.py, docs/performance.md "Compiled modules") and its pure-Python fallback."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import nodecache
from nodecache import PURE_PYTHON, PURE_PYTHON_ENV
from tests.support import compiled

REPO = compiled.REPO


def _can_compile() -> str | None:
    """Why this machine cannot compile the hot path, or None when it can."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        return f"no C compiler ({cc})"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return "no Python headers (Python.h)"
    if importlib.util.find_spec("mypyc") is None:
        return "mypyc is not installed"
    return None


def _import_in_child(env: dict[str, str]) -> list[str]:
    code = "import nodecache, nodecache.wire as w, nodecache.resolver as r; print(nodecache.build(), w.__file__, r.__file__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_the_hot_path_is_compiled_where_a_compiler_is() -> None:
    """`make venv` compiled every listed module; what a test imports is the compiled one."""
    if PURE_PYTHON:
        pytest.skip(f"{PURE_PYTHON_ENV} is set: this run tests the sources")
    why_not = _can_compile()
    if why_not:
        pytest.skip(f"cannot compile here: {why_not}")
    missing = [str(s.relative_to(REPO)) for s in compiled.sources() if compiled.extension(s) is None]
    assert not missing, f"not compiled: {missing}; `make venv` prints why"
    assert nodecache.build() == "compiled"
    from nodecache import cache, resolver

    assert all(Path(m.__file__ or "").suffix == ".so" for m in (cache, resolver))


def test_pure_python_switch_runs_the_sources() -> None:
    """NODECACHE_PURE_PYTHON=1 imports the .py files even beside compiled modules; 0 does not force it."""
    build, wire_file, resolver_file = _import_in_child({PURE_PYTHON_ENV: "1"})
    assert build == "python"
    assert wire_file.endswith("wire.py") and resolver_file.endswith("resolver.py")
    build, wire_file, _ = _import_in_child({PURE_PYTHON_ENV: "0"})
    assert build == ("compiled" if compiled.extension(REPO / "nodecache/wire.py") else "python")


@pytest.mark.slow
def test_a_failed_compile_installs_pure_python_and_says_why(tmp_path: Path) -> None:
    """No working C compiler: the build still succeeds, with no compiled module, and says how to get one."""
    if importlib.util.find_spec("mypyc") is None:
        pytest.skip("mypyc is not installed, so no compile is even tried")
    out = tmp_path / "lib"
    done = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-lib", str(out), "--build-temp", str(tmp_path / "tmp")],
        cwd=REPO, env={**os.environ, "CC": "false"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "compiling failed" in done.stderr and "gcc python3-dev" in done.stderr
    assert not (out.exists() and list(out.rglob("*.so"))), "a compiled module was left from a failed build"


def _hidden(tmp_path: Path, module: str) -> dict[str, str]:
    """An environment in which importing `module` fails, as where it is not installed."""
    shadow = tmp_path / "shadow"
    shadow.mkdir(exist_ok=True)
    (shadow / f"{module}.py").write_text(f"raise ImportError('{module} hidden by the test')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.slow
def test_without_cffi_the_build_says_so_and_goes_on(tmp_path: Path) -> None:
    """No cffi at build time: no extension for the batch calls, a message saying how to get it, and the
    rest of the build as it would be (here a failed compile, so it ends quickly)."""
    if importlib.util.find_spec("mypyc") is None:
        pytest.skip("mypyc is not installed, so the build stops before it looks for cffi")
    done = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "lib"), "--build-temp", str(tmp_path / "tmp")],
        cwd=REPO, env={**_hidden(tmp_path, "cffi"), "CC": "false"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cffi is not installed" in done.stderr and "ctypes" in done.stderr


def test_without_cffis_backend_the_batch_calls_go_through_ctypes(tmp_path: Path) -> None:
    """A compiled build run where cffi is missing (its extension cannot load): batching still works, on ctypes."""
    code = "from nodecache import mmsg; print(mmsg.CALLS.name, mmsg.available())"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_hidden(tmp_path, "_cffi_backend"),
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ctypes", "None"]
