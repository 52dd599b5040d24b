"""The SQLite schema of a database file, and opening a connection with the right settings."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from fieldsync.store.doc_versions import add_version_vectors
from fieldsync.store.errors import StoreError
from fieldsync.store.expiry import add_expiry_table

#: How long a writer waits for another process's write transaction before giving up.
BUSY_TIMEOUT_SECONDS = 10.0
#: SD wear: after a checkpoint the WAL file is truncated to at most this size (LiteCore: 5 MB),
#: and SQLite checkpoints automatically every ``WAL_AUTOCHECKPOINT_PAGES`` pages (4 MiB at
#: 4 KiB pages), so the WAL stays bounded instead of growing with the busiest burst.
JOURNAL_SIZE_LIMIT = 4 * 1024 * 1024
WAL_AUTOCHECKPOINT_PAGES = 1000
#: Where the writing connection keeps temporary data (savepoint journals): ``MEMORY``.
TEMP_STORE = "MEMORY"

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


def add_closed_flag(conn: sqlite3.Connection) -> None:
    """Schema step 4: ``revs.closed`` marks the tombstone that closes a losing conflict branch
    (LiteCore's ``kRevClosed``); such a leaf never wins over another leaf, even a deletion."""
    conn.execute("ALTER TABLE revs ADD COLUMN closed INTEGER NOT NULL DEFAULT 0")


#: Schema upgrades, in order: ``(version reached, step)``. Each step runs in its own
#: ``BEGIN IMMEDIATE`` transaction that also sets ``user_version``, so an interrupted upgrade
#: leaves the file at a whole version and the next open continues from there.
#: 2 (maint, issue 14): per-document expiration. 3+: vv-core (issue 12). 4: closed branches
#: (issue 11, convergence).
UPGRADES: list[tuple[int, Callable[[sqlite3.Connection], None]]] = [
    (2, add_expiry_table),
    (3, add_version_vectors),
    (4, add_closed_flag),
]
SCHEMA_VERSION = UPGRADES[-1][0] if UPGRADES else 1


def connect(path: Path) -> sqlite3.Connection:
    """Open ``path`` in WAL mode with fully synchronous commits and an up-to-date schema."""
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_SECONDS
    )
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            # Must precede the first write of a new file (even the WAL header), or it needs a
            # full VACUUM: freed pages are then given back by ``PRAGMA incremental_vacuum``.
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"cannot use write-ahead logging on {path} (journal mode {mode})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=OFF")
        # Savepoint journals (every batch of received revisions has savepoints) in memory, not
        # in a file created and unlinked in /var/tmp per transaction: that was ~30 system
        # calls and two directory updates on the card per commit (issue 13). Their size is
        # bounded by a batch's pages. A full VACUUM switches to files for its copy.
        conn.execute(f"PRAGMA temp_store={TEMP_STORE}")
        conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
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
    if version == 0:
        _run_step(conn, 0, 1, _create_base_tables)
    for target, step in UPGRADES:
        _run_step(conn, target - 1, target, step)


def _create_base_tables(conn: sqlite3.Connection) -> None:
    # (no semicolons inside the statements or their comments)
    for statement in _TABLES.split(";"):
        if statement.strip():
            conn.execute(statement)


def _run_step(
    conn: sqlite3.Connection,
    source: int,
    target: int,
    step: Callable[[sqlite3.Connection], None],
) -> None:
    """Run ``step`` if the file is at version ``source``, in one transaction ending at
    ``target``. Another process may have run it while we waited for the lock."""
    if conn.execute("PRAGMA user_version").fetchone()[0] != source:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] == source:
            step(conn)
            conn.execute(f"PRAGMA user_version={target}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
