"""The SQLite schema of a database file, and opening a connection with the right settings."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fieldsync.store.errors import StoreError

SCHEMA_VERSION = 1
#: How long a writer waits for another process's write transaction before giving up.
BUSY_TIMEOUT_SECONDS = 10.0

_TABLES = """
CREATE TABLE collections (
    id            INTEGER PRIMARY KEY,
    scope         TEXT NOT NULL,
    name          TEXT NOT NULL,
    last_sequence INTEGER NOT NULL DEFAULT 0,
    UNIQUE (scope, name)
);
-- One row per document: its current (winning) revision and latest sequence.
CREATE TABLE docs (
    id         INTEGER PRIMARY KEY,
    collection INTEGER NOT NULL REFERENCES collections (id),
    doc_id     TEXT NOT NULL,
    sequence   INTEGER NOT NULL,
    rev_id     TEXT NOT NULL,
    deleted    INTEGER NOT NULL,
    body_size  INTEGER NOT NULL,
    UNIQUE (collection, doc_id)
);
CREATE UNIQUE INDEX docs_by_sequence ON docs (collection, sequence);
-- One row per revision in a document's tree. body is NULL once only the revID is known.
CREATE TABLE revs (
    id       INTEGER PRIMARY KEY,
    doc      INTEGER NOT NULL REFERENCES docs (id),
    rev_id   TEXT NOT NULL,
    parent   TEXT,
    deleted  INTEGER NOT NULL,
    sequence INTEGER NOT NULL,
    body     BLOB,
    UNIQUE (doc, rev_id)
);
-- Checkpoints peers store here (passive side): body kept byte for byte, MVCC rev "N-cc".
CREATE TABLE checkpoints (
    client_id TEXT PRIMARY KEY,
    rev       TEXT NOT NULL,
    body      BLOB NOT NULL
);
-- Local key/value data (e.g. an active replicator's own checkpoints).
CREATE TABLE local_values (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
INSERT INTO collections (scope, name) VALUES ('_default', '_default');
"""


def connect(path: Path) -> sqlite3.Connection:
    """Open ``path`` in WAL mode with fully synchronous commits and an up-to-date schema."""
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_SECONDS
    )
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"cannot use write-ahead logging on {path} (journal mode {mode})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=OFF")
        _migrate(conn, path)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(f"cannot open database file {path}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has schema version {version}; this fieldsync understands up to "
            f"{SCHEMA_VERSION}"
        )
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have created the schema while we waited for the lock.
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            # (no semicolons inside the statements or their comments)
            for statement in _TABLES.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
