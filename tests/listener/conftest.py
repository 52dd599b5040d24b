"""Fixtures the listener tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fieldsync.listener import URLEndpointListener, URLEndpointListenerConfiguration
from fieldsync.store import Database


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[URLEndpointListener, Database]]:
    """A listener on a free loopback port (plain ws://) serving a fresh database ``db``."""
    db = Database.open(tmp_path / "db")
    listener = URLEndpointListener(
        URLEndpointListenerConfiguration(database=db, port=0, disable_tls=True)
    )
    await listener.start()
    yield listener, db
    await listener.stop()
    db.close()
