"""Fixtures for the document store tests: real databases in temporary directories."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fieldsync.store import Collection, Database
from fieldsync.store.paths import DATABASE_FILE


@pytest.fixture
def db(tmp_path) -> Iterator[Database]:
    database = Database.open(tmp_path / "testdb")
    yield database
    database.close()


@pytest.fixture
def coll(db: Database) -> Collection:
    return db.default_collection


#: A database file written by the schema-1 code of commit 95bb12e (before version vectors and
#: expiration): documents with histories, a deletion, a rev-tree conflict, a pushed history not
#: reaching generation 1, a named collection, a checkpoint and a local value.
V1_FIXTURE = Path(__file__).parent / "fixtures" / "schema_v1.sql"


def build_v1_database(directory: Path) -> Path:
    """Create a database directory holding the schema-1 fixture; return the directory."""
    directory.mkdir(parents=True)
    conn = sqlite3.connect(directory / DATABASE_FILE)
    try:
        conn.executescript(V1_FIXTURE.read_text())
    finally:
        conn.close()
    return directory


@pytest.fixture
def v1_database(tmp_path: Path) -> Path:
    """A schema-1 database directory (not yet opened, so not yet upgraded)."""
    return build_v1_database(tmp_path / "v1db")


@pytest.fixture
def build_v1() -> Callable[[Path], Path]:
    """``build_v1_database`` for tests that need several schema-1 databases."""
    return build_v1_database
