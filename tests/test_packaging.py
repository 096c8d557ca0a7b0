"""What ships: the runtime package and the image carry the agent, not its test and demo helpers.

The sample zone (tests/support/samplezone.py) is a demo and test server; it must stay out of
the wheel a user installs and out of the container image, yet `make run` and the tests still
reach it from a checkout.
"""

from __future__ import annotations

import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import setuptools

from tests.support import compiled
from tests.support.samplezone import CHECKOUT, RUN_MODULE

RUNTIME_PACKAGE = "nodecache"
DEMO_ONLY = ("samplezone",)  # module names that must never ship
WHEEL_BUILD_TIMEOUT = 600.0  # fetches mypy into pip's build environment and compiles the hot path


def _shipped_modules() -> set[str]:
    """Every module `packages = find:` with setup.cfg's excludes puts in the package."""
    cfg = configparser.ConfigParser()
    cfg.read(CHECKOUT / "setup.cfg")
    exclude = cfg.get("options.packages.find", "exclude").split()
    modules = set()
    for package in setuptools.find_packages(where=str(CHECKOUT), exclude=exclude):
        for path in (CHECKOUT / package.replace(".", "/")).glob("*.py"):
            modules.add(f"{package}.{path.stem}")
    return modules


def _image_sources() -> list[str]:
    """The checkout paths the Dockerfile copies in before it builds the wheel (`pip wheel .`)."""
    sources: list[str] = []
    for line in (CHECKOUT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["RUN"] and "pip wheel" in line:
            return sources
        if words[:1] == ["COPY"] and not any(w.startswith("--") for w in words):
            sources += words[1:-1]
    raise AssertionError("the Dockerfile has no `RUN pip wheel` step")


def test_the_package_holds_the_agent_and_not_the_sample_zone() -> None:
    """The package is nodecache's modules only: no sample zone, no tests."""
    modules = _shipped_modules()
    assert f"{RUNTIME_PACKAGE}.names" in modules and f"{RUNTIME_PACKAGE}.cli" in modules
    assert {m.split(".")[0] for m in modules} == {RUNTIME_PACKAGE}
    assert not [m for m in modules if m.rsplit(".", 1)[1] in DEMO_ONLY]


def test_the_image_copies_no_test_or_demo_code() -> None:
    """The image is built from the package sources alone, so it cannot pick up tests/ or benchmarks/."""
    sources = _image_sources()
    assert RUNTIME_PACKAGE in sources
    assert not [s for s in sources if s.split("/")[0] in ("tests", "benchmarks", ".")]


def test_make_run_reaches_the_sample_zone_from_a_checkout() -> None:
    """The target `make run` names exists in the checkout and answers --help."""
    makefile = (CHECKOUT / "Makefile").read_text()
    assert f"-m {RUN_MODULE} --run-agent" in makefile
    done = subprocess.run(
        [sys.executable, "-m", RUN_MODULE, "--help"], cwd=CHECKOUT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert "--run-agent" in done.stdout


@pytest.mark.slow
def test_built_wheel_is_compiled_and_has_no_sample_zone(tmp_path: Path) -> None:
    """A wheel built from what the image copies (as its build stage does) has no sample zone in it.

    And its hot path is compiled, with the sources beside (setup.py): this machine, like the image's
    build stage, has a C compiler.
    """
    src = tmp_path / "src"
    src.mkdir()
    for name in _image_sources():
        path = CHECKOUT / name
        if path.is_dir():
            subprocess.run(["cp", "-r", str(path), str(src / path.name)], check=True, timeout=30)
        elif path.is_file():
            (src / path.name).write_bytes(path.read_bytes())
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=WHEEL_BUILD_TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 0, f"pip wheel failed:\n{done.stderr[-2000:]}"
    (wheel,) = (tmp_path / "dist").glob("nodecache-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert f"{RUNTIME_PACKAGE}/names.py" in names
    assert not [n for n in names if any(d in n for d in DEMO_ONLY)]
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]
    for source in compiled.sources():
        module = f"{RUNTIME_PACKAGE}/{source.stem}"
        assert f"{module}.py" in names, f"{module}.py is not in the wheel"
        assert [n for n in names if n.startswith(f"{module}.") and n.endswith(".so")], f"{module} is not compiled"
    assert [n for n in names if n.startswith(f"{RUNTIME_PACKAGE}/native__mypyc.")], "no shared library of the compiled modules"
    assert [n for n in names if n.startswith(f"{RUNTIME_PACKAGE}/_mmsgffi.")], "no cffi extension for recvmmsg/sendmmsg"
