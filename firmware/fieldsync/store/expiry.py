"""Document expiration and purge: local operations that never replicate (Couchbase Lite's
``setDocumentExpiration`` and ``purge``).

An expiration is a wall-clock time (seconds since the epoch) kept per document in the
``doc_expiry`` table, keyed by collection and docID (not by row id, which SQLite may reuse
after a purge). When it has passed, the document is *purged*: its row and every revision are
erased with no tombstone, so nothing is sent to peers, exactly as Couchbase Lite does. A
``Housekeeper`` (``fieldsync.store.housekeeper``) calls ``purge_expired`` on time while a
listener or the agent runs; ``fieldsync db compact`` purges what is due as well.
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from collections.abc import Callable
from typing import Protocol

from fieldsync.store.engine import Engine
from fieldsync.store.errors import InvalidInput, NotFoundError

#: Schema step that adds the table (run by ``schema.py``; also created on first use).
EXPIRY_TABLE = """
CREATE TABLE IF NOT EXISTS doc_expiry (
    collection INTEGER NOT NULL,
    doc_id     TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (collection, doc_id)
) WITHOUT ROWID
"""
EXPIRY_INDEX = "CREATE INDEX IF NOT EXISTS doc_expiry_by_time ON doc_expiry (expires_at)"

#: How many expired documents one transaction purges (short transactions keep replication moving).
PURGE_BATCH = 200


def add_expiry_table(conn: sqlite3.Connection) -> None:
    """The schema step that adds expiration (idempotent)."""
    conn.execute(EXPIRY_TABLE)
    conn.execute(EXPIRY_INDEX)


def _has_table(conn: sqlite3.Connection, name: str = "doc_expiry") -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return row is not None


#: Tables of per-document facts keyed by (collection, doc_id) that a purge must erase too
#: (vv-core's ``peer_legacy``: a re-created document must not inherit a phone's legacy revID).
_PER_DOCUMENT_TABLES = ("doc_expiry", "peer_legacy")


# -- wake-ups for running housekeepers ------------------------------------------------------

_watchers: weakref.WeakKeyDictionary[Engine, list[Callable[[float], None]]] = (
    weakref.WeakKeyDictionary()
)
_watchers_lock = threading.Lock()


def watch(engine: Engine, callback: Callable[[float], None]) -> Callable[[], None]:
    """Call ``callback(expires_at)`` whenever an expiration is set through ``engine``; returns
    a function that stops watching. (Other processes' changes are seen by polling.)"""
    with _watchers_lock:
        _watchers.setdefault(engine, []).append(callback)

    def unwatch() -> None:
        with _watchers_lock:
            callbacks = _watchers.get(engine, [])
            if callback in callbacks:
                callbacks.remove(callback)

    return unwatch


def _notify(engine: Engine, expires_at: float) -> None:
    with _watchers_lock:
        callbacks = list(_watchers.get(engine, []))
    for callback in callbacks:
        callback(expires_at)


# -- per document ------------------------------------------------------------------------------


def set_expiration(
    engine: Engine, collection_id: int, doc_id: str, expires_at: float | None
) -> None:
    """Set (or with ``None`` clear) a document's expiration; ``NotFoundError`` if the document
    does not exist in the collection (live or deleted)."""
    if expires_at is not None and not isinstance(expires_at, int | float):
        raise InvalidInput("expiration must be a timestamp in seconds, or None")
    with engine.write() as conn:
        exists = conn.execute(
            "SELECT 1 FROM docs WHERE collection = ? AND doc_id = ?", (collection_id, doc_id)
        ).fetchone()
        if exists is None:
            raise NotFoundError(f"no document {doc_id!r}")
        if expires_at is None:
            if _has_table(conn):
                conn.execute(
                    "DELETE FROM doc_expiry WHERE collection = ? AND doc_id = ?",
                    (collection_id, doc_id),
                )
            return
        add_expiry_table(conn)
        conn.execute(
            "INSERT OR REPLACE INTO doc_expiry (collection, doc_id, expires_at) VALUES (?, ?, ?)",
            (collection_id, doc_id, float(expires_at)),
        )
    _notify(engine, float(expires_at))


def get_expiration(engine: Engine, collection_id: int, doc_id: str) -> float | None:
    """A document's expiration time, or ``None`` if it has none."""
    with engine.locked() as conn:
        if not _has_table(conn):
            return None
        row = conn.execute(
            "SELECT expires_at FROM doc_expiry WHERE collection = ? AND doc_id = ?",
            (collection_id, doc_id),
        ).fetchone()
    return float(row[0]) if row else None


def next_expiration(engine: Engine) -> float | None:
    """The earliest expiration set in the database, or ``None``."""
    with engine.locked() as conn:
        if not _has_table(conn):
            return None
        row = conn.execute("SELECT MIN(expires_at) FROM doc_expiry").fetchone()
    return float(row[0]) if row and row[0] is not None else None


def purge_in(conn: sqlite3.Connection, collection_id: int, doc_id: str) -> bool:
    """Erase a document, its revisions and every per-document fact (expiration, phones'
    legacy revIDs) inside the caller's write transaction; ``True`` if it existed. The one
    place that erases a document: purge, expiration and tombstone purge all come here."""
    row = conn.execute(
        "SELECT id FROM docs WHERE collection = ? AND doc_id = ?", (collection_id, doc_id)
    ).fetchone()
    for table in _PER_DOCUMENT_TABLES:
        if _has_table(conn, table):
            conn.execute(
                f"DELETE FROM {table} WHERE collection = ? AND doc_id = ?",
                (collection_id, doc_id),
            )
    if row is None:
        return False
    conn.execute("DELETE FROM revs WHERE doc = ?", (row[0],))
    conn.execute("DELETE FROM docs WHERE id = ?", (row[0],))
    return True


def purge(engine: Engine, collection_id: int, doc_id: str) -> bool:
    """Purge one document durably (no tombstone, not replicated); ``True`` if it existed."""
    with engine.write() as conn:
        return purge_in(conn, collection_id, doc_id)


class Progress(Protocol):
    def __call__(self, phase: str, done: int, total: int) -> None: ...


def purge_expired(engine: Engine, now: float, progress: Progress | None = None) -> int:
    """Purge every document whose expiration is at or before ``now``; return how many were
    purged. Works in short transactions of ``PURGE_BATCH`` documents."""
    purged = 0
    with engine.locked() as conn:  # a read first: no write transaction when nothing is due
        if (
            not _has_table(conn)
            or conn.execute(
                "SELECT 1 FROM doc_expiry WHERE expires_at <= ? LIMIT 1", (now,)
            ).fetchone()
            is None
        ):
            return 0
    while True:
        with engine.write() as conn:
            if not _has_table(conn):
                return purged
            due = conn.execute(
                "SELECT collection, doc_id FROM doc_expiry WHERE expires_at <= ? "
                "ORDER BY expires_at LIMIT ?",
                (now, PURGE_BATCH),
            ).fetchall()
            for collection_id, doc_id in due:
                purged += purge_in(conn, collection_id, doc_id)
        if progress is not None and due:
            progress("expire", purged, purged)
        if len(due) < PURGE_BATCH:
            return purged
