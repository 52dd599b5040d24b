"""pytest fixtures every test folder gets (registered by tests/conftest.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.databases import DatabaseFactory, open_databases
from tests.support.pki import TestPKI


@pytest.fixture
def databases(tmp_path: Path) -> Iterator[DatabaseFactory]:
    """``databases("device", doc1={...})``: real databases under tmp_path, closed afterwards."""
    with open_databases(tmp_path) as factory:
        yield factory


@pytest.fixture
def test_pki() -> TestPKI:
    """A root CA, an intermediate under it, and an unrelated root."""
    return TestPKI()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 3 MiB file system (tmpfs) mounted for the test; skipped where mounting is
    impossible."""
    mount = tmp_path / "card"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
