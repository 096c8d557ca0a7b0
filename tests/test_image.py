"""The container entry point picks the iptables backend that holds the node's rules."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ENTRYPOINT = Path(__file__).resolve().parent.parent / "docker" / "entrypoint.sh"


def fake_save(bin_dir: Path, name: str, rules: int) -> None:
    script = bin_dir / name
    lines = "\\n".join(f"-A KUBE-SERVICES -j RULE{i}" for i in range(rules))
    script.write_text(f"#!/bin/sh\nprintf '*filter\\n{lines}\\nCOMMIT\\n'\n")
    script.chmod(0o755)


@pytest.mark.parametrize(
    "legacy, nft, expected",
    [(5, 0, "legacy"), (0, 7, "nft"), (0, 0, "nft"), (3, 9, "nft"), (12, 2, "legacy")],
)
def test_backend_with_more_rules_wins(tmp_path: Path, legacy: int, nft: int, expected: str) -> None:
    for family in ("iptables", "ip6tables"):
        fake_save(tmp_path, f"{family}-legacy-save", legacy)
        fake_save(tmp_path, f"{family}-nft-save", nft)
    done = subprocess.run(["sh", str(ENTRYPOINT), "--print-backend"], capture_output=True, text=True,
                          env={"PATH": f"{tmp_path}:/usr/bin:/bin"}, timeout=10)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected


def test_dockerfile_installs_the_package_and_both_backends() -> None:
    text = (ENTRYPOINT.parent.parent / "Dockerfile").read_text()
    assert "iptables" in text and "pip install" in text
    assert 'ENTRYPOINT ["/usr/local/bin/nodecache-entrypoint"]' in text
