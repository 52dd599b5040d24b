"""Real databases in temporary folders, closed afterwards (pytest fixtures: see fixtures.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fieldsync.store import Database

__all__ = ["DatabaseFactory", "open_databases"]


class DatabaseFactory:
    """Opens databases under one folder and closes all of them at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.opened: list[Database] = []

    def __call__(self, name: str = "db", **documents: dict[str, object]) -> Database:
        """The database ``<root>/<name>`` (created), with ``documents`` saved in its default
        collection (``id=body``)."""
        database = Database.open(self.root / name)
        self.opened.append(database)
        for doc_id, body in documents.items():
            database.default_collection.save_document(doc_id, dict(body))
        return database

    def close(self) -> None:
        for database in reversed(self.opened):
            if not database.is_closed:
                database.close()


@contextmanager
def open_databases(root: Path) -> Iterator[DatabaseFactory]:
    factory = DatabaseFactory(root)
    try:
        yield factory
    finally:
        factory.close()
