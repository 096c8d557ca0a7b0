"""`make debs`: root installs what the tests drive; anyone else is told what is missing and goes on.

The recipe is fed to make on stdin (`make -f -`), so the unprivileged run needs no access
to the checkout, and DEB_PACKAGES is overridden so nothing is installed or fetched.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.support.samplezone import CHECKOUT

NOBODY = 65534  # the conventional unprivileged uid and gid
NOT_A_PACKAGE = "nodecache-test-no-such-package"  # never installed, never looked up in a registry
INSTALLED = "dpkg"  # present wherever dpkg-query is
MAKE_TIMEOUT = 30.0

pytestmark = pytest.mark.skipif(
    shutil.which("make") is None or shutil.which("dpkg-query") is None,
    reason="needs make and dpkg-query (a Debian system) to check `make debs`",
)


def _debs(packages: str, unprivileged: bool) -> subprocess.CompletedProcess[str]:
    """`make debs` with DEB_PACKAGES set, as an unprivileged user when asked (dropping root if need be)."""
    argv = ["make", "-s", "-f", "-", "debs", f"DEB_PACKAGES={packages}"]
    if unprivileged and os.geteuid() == 0:
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
    return subprocess.run(
        argv, input=(CHECKOUT / "Makefile").read_text(), cwd="/", capture_output=True, text=True, timeout=MAKE_TIMEOUT
    )


def test_debs_as_a_user_names_the_missing_packages_and_carries_on() -> None:
    """Not root: exit 0, name what is missing and say its tests will be skipped."""
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv (util-linux) to drop to an unprivileged user")
    done = _debs(f"{INSTALLED} {NOT_A_PACKAGE}", unprivileged=True)
    assert done.returncode == 0, done.stdout + done.stderr
    named = [line.split(":", 2)[2].split() for line in done.stdout.splitlines() if "not installed:" in line]
    assert named == [[NOT_A_PACKAGE]]  # only what is missing is named
    assert "will be skipped" in done.stdout


@pytest.mark.parametrize("unprivileged", [False, True])
def test_debs_is_silent_when_everything_is_installed(unprivileged: bool) -> None:
    """Nothing missing: nothing to say and nothing run, for root and for anyone else."""
    if unprivileged and os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv (util-linux) to drop to an unprivileged user")
    if not unprivileged and os.geteuid() != 0:
        pytest.skip("needs root: checks what `make debs` does as root")
    done = _debs(INSTALLED, unprivileged=unprivileged)
    assert (done.returncode, done.stdout) == (0, ""), done.stderr
