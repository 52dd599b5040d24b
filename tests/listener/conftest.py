"""Fixtures the listener tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.support.fixtures import serving

from fieldsync.listener import URLEndpointListener
from fieldsync.store import Database


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[URLEndpointListener, Database]]:
    """A listener on a free loopback port (plain ws://) serving a fresh database ``db``."""
    db = Database.open(tmp_path / "db")
    async with serving(db) as listener:
        yield listener, db
    db.close()
