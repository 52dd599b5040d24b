"""Fixtures for replication tests: real SQLite databases and a real listener on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fieldsync.listener import URLEndpointListener
from fieldsync.store import Database


@pytest.fixture
def phone_db(tmp_path: Path) -> Iterator[Database]:
    db = Database.open(tmp_path / "phone", create=True)
    yield db
    db.close()


def url_for(listener: URLEndpointListener, name: str = "device") -> str:
    return f"ws://127.0.0.1:{listener.port}/{name}"


@pytest.fixture
def url_of():
    """``url_of(listener, name="device")``: the ws:// URL of a database on a listener."""
    return url_for
