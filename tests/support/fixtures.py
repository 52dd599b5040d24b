"""pytest fixtures every test folder gets (registered by tests/conftest.py)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from tests.support.databases import DatabaseFactory, open_databases
from tests.support.pki import TestPKI

from fieldsync.listener import URLEndpointListener, URLEndpointListenerConfiguration
from fieldsync.store import Database


@contextlib.asynccontextmanager
async def serving(database: Database) -> AsyncIterator[URLEndpointListener]:
    """A listener serving ``database`` on a free loopback port, plain ws://, while in use."""
    server = URLEndpointListener(
        URLEndpointListenerConfiguration(database=database, port=0, disable_tls=True)
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def device_db(tmp_path: Path) -> Iterator[Database]:
    """The device's database, in a fresh folder."""
    db = Database.open(tmp_path / "device", create=True)
    yield db
    db.close()


@pytest.fixture
async def listener(device_db: Database) -> AsyncIterator[URLEndpointListener]:
    """fieldsync's listener serving ``device_db`` (see :func:`serving`)."""
    async with serving(device_db) as server:
        yield server


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
