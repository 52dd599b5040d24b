"""Fixtures for the document store tests: real databases in temporary directories."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fieldsync.store import Collection, Database


@pytest.fixture
def db(tmp_path) -> Iterator[Database]:
    database = Database.open(tmp_path / "testdb")
    yield database
    database.close()


@pytest.fixture
def coll(db: Database) -> Collection:
    return db.default_collection
