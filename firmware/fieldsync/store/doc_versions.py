"""Version vectors in the SQLite store: the schema step, the device's source ID and clock, and
the per-document vector bookkeeping ``Collection`` does on every write (VV-NOTES §7).

Layout (schema version 3, added in place to older files):

* ``peer_info``: ``source_id`` (this database's 22-character source ID, random, made once) and
  ``hlc``, the hybrid logical clock's state (last time, newest phone time, wall then). The
  clock is read and written inside each write transaction, so several processes sharing the
  file still stamp strictly increasing times.
* ``docs.hlv``: the current revision's vector in LiteCore's spelling; ``NULL`` for a document
  nobody changed since the upgrade ("legacy": it is named by ``rev_id`` alone).
  ``docs.base_legacy``: the rev-tree revID that was current just before the document's first
  version (LiteCore's ``lastLegacyRevID``).
* ``revs.hlv`` / ``revs.cv``: the vector each revision carried (``NULL`` for revisions from
  before the upgrade or body-less ancestors); ``docs.hlv`` is always its winner's.
* ``peer_legacy``: per (document, 4.x phone) the ``lastLegacyRevID`` the phone last pushed
  (``''`` = it has none), which decides the legacy tail the phone needs (§0 rule 7).
"""

from __future__ import annotations

import sqlite3
import threading
import time
import weakref
from collections.abc import Callable

from fieldsync.store.engine import Engine
from fieldsync.store.errors import StoreError
from fieldsync.store.versions import (
    HLV,
    BadVersion,
    ClockState,
    HybridLogicalClock,
    SourceID,
    Version,
    parse_stored,
)

_UPGRADE = """
ALTER TABLE docs ADD COLUMN hlv TEXT;
ALTER TABLE docs ADD COLUMN base_legacy TEXT;
ALTER TABLE revs ADD COLUMN hlv TEXT;
ALTER TABLE revs ADD COLUMN cv TEXT;
CREATE INDEX revs_by_cv ON revs (doc, cv) WHERE cv IS NOT NULL;
CREATE TABLE peer_info (
    key   TEXT PRIMARY KEY,
    value NOT NULL
);
CREATE TABLE peer_legacy (
    collection INTEGER NOT NULL,
    doc_id     TEXT NOT NULL,
    peer       TEXT NOT NULL,
    legacy_rev TEXT NOT NULL,
    PRIMARY KEY (collection, doc_id, peer)
) WITHOUT ROWID
"""

_SOURCE_KEY = "source_id"
#: One row: "<last> <newest phone time seen> <device wall clock when it was seen>" (ns).
_CLOCK_KEY = "hlc"


def add_version_vectors(conn: sqlite3.Connection) -> None:
    """Schema step 3: vector columns and tables, and a new source ID for this database.

    Existing documents keep ``hlv`` NULL (legacy) until their next write, as LiteCore's
    zero-cost upgrade does; nothing is rewritten, so the step is quick on any size of file.
    """
    for statement in _UPGRADE.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute(
        "INSERT INTO peer_info (key, value) VALUES (?, ?)",
        (_SOURCE_KEY, SourceID.generate().text),
    )


class DeviceVersions:
    """A database's source ID and hybrid logical clock, persisted in ``peer_info``."""

    def __init__(self, engine: Engine, *, wall: Callable[[], int] = time.time_ns) -> None:
        self._engine = engine
        #: Wall clock in ns since the epoch (replaceable in tests).
        self.wall = wall
        self._source: SourceID | None = None
        self._lock = threading.Lock()
        # The clock of the open write transaction: loaded once, saved once before its commit
        # (two statements per write were ~10 % of inserting a received revision; perf).
        self._txn_clock: tuple[int, HybridLogicalClock] | None = None

    @property
    def source_id(self) -> SourceID:
        """This database's source ID (made when the file was created or upgraded)."""
        if self._source is None:
            rows = self._engine.query("SELECT value FROM peer_info WHERE key = ?", (_SOURCE_KEY,))
            if not rows:
                raise StoreError(f"database {self._engine.name!r} has no source ID")
            with self._lock:
                self._source = SourceID(str(rows[0][0]))
        return self._source

    def _load_clock(self, conn: sqlite3.Connection) -> HybridLogicalClock:
        row = conn.execute("SELECT value FROM peer_info WHERE key = ?", (_CLOCK_KEY,)).fetchone()
        state = ClockState(*(int(part) for part in str(row[0]).split())) if row else ClockState()
        return HybridLogicalClock(state, self.wall)

    @staticmethod
    def _save_clock(conn: sqlite3.Connection, clock: HybridLogicalClock) -> None:
        state = clock.state
        conn.execute(
            "INSERT OR REPLACE INTO peer_info (key, value) VALUES (?, ?)",
            (_CLOCK_KEY, f"{state.last} {state.peer_time} {state.peer_wall}"),
        )

    def _transaction_clock(self, conn: sqlite3.Connection) -> HybridLogicalClock | None:
        """The clock of the caller's write transaction, saved just before it commits; ``None``
        outside a transaction. Within one transaction no other connection can write the row,
        and a clock left ahead by a rolled-back savepoint only moves time forward."""
        engine = self._engine
        if not engine.in_transaction:
            return None
        serial = engine.transaction_serial
        cached = self._txn_clock
        if cached is not None and cached[0] == serial:
            return cached[1]
        clock = self._load_clock(conn)
        self._txn_clock = (serial, clock)
        engine.before_commit(lambda c: self._save_clock(c, clock))
        return clock

    def stamp(self, conn: sqlite3.Connection, *, after: int = 0) -> Version:
        """A new version by this database, inside the caller's write transaction."""
        clock = self._transaction_clock(conn)
        if clock is None:
            clock = self._load_clock(conn)
            version = Version(clock.now(after=after), self.source_id)
            self._save_clock(conn, clock)
            return version
        return Version(clock.now(after=after), self.source_id)

    def observe(self, conn: sqlite3.Connection, vector: HLV) -> None:
        """Move the clock past a received vector (inside the caller's write transaction)."""
        clock = self._transaction_clock(conn)
        if clock is not None:
            clock.see_all(vector, mine=self.source_id)
            return
        clock = self._load_clock(conn)
        before = (clock.state.last, clock.state.peer_time)
        clock.see_all(vector, mine=self.source_id)
        if (clock.state.last, clock.state.peer_time) != before:
            self._save_clock(conn, clock)

    def clock_state(self) -> ClockState:
        """The persisted clock state (for status output and tests)."""
        with self._engine.locked() as conn:
            return self._load_clock(conn).state


_devices: weakref.WeakKeyDictionary[Engine, DeviceVersions] = weakref.WeakKeyDictionary()
_devices_lock = threading.Lock()


def device_versions(engine: Engine) -> DeviceVersions:
    """The ``DeviceVersions`` of the database an engine belongs to (one per engine)."""
    with _devices_lock:
        device = _devices.get(engine)
        if device is None:
            device = _devices[engine] = DeviceVersions(engine)
        return device


# -- per-document helpers (called by Collection inside its write transactions) ----------------


def revision_vector(conn: sqlite3.Connection, doc_key: int, rev_id: str | None) -> HLV | None:
    """The vector a stored revision carries, ``None`` if it has none or is unknown."""
    if rev_id is None:
        return None
    row = conn.execute(
        "SELECT hlv FROM revs WHERE doc = ? AND rev_id = ?", (doc_key, rev_id)
    ).fetchone()
    return parse_stored(row[0]) if row else None


def record_vectors(conn: sqlite3.Connection, doc_key: int, vectors: dict[str, HLV]) -> None:
    """Store the vectors of revisions (already inserted) of one document."""
    conn.executemany(
        "UPDATE revs SET hlv = ?, cv = ? WHERE doc = ? AND rev_id = ?",
        [(str(hlv), str(hlv.cv), doc_key, rev_id) for rev_id, hlv in vectors.items()],
    )


def adopt_incoming(incoming: HLV, local: HLV | None) -> HLV:
    """The vector stored for an accepted 4.x revision: the incoming one, plus local sources it
    lacks as previous versions (Sync Gateway's ``UpdateWithIncomingHLV``)."""
    if local is None:
        return incoming
    extra = [v for v in local.versions() if incoming.time_of(v.source) is None]
    if not extra:
        return incoming
    return HLV(incoming.cv, incoming.mv, (*incoming.pv, *extra))


def get_peer_legacy(engine: Engine, collection: int, doc_id: str, peer: str) -> str | None:
    rows = engine.query(
        "SELECT legacy_rev FROM peer_legacy WHERE collection = ? AND doc_id = ? AND peer = ?",
        (collection, doc_id, peer),
    )
    return str(rows[0][0]) if rows else None


def set_peer_legacy(
    conn: sqlite3.Connection, collection: int, doc_id: str, peer: str, legacy_rev: str
) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO peer_legacy (collection, doc_id, peer, legacy_rev) "
        "VALUES (?, ?, ?, ?)",
        (collection, doc_id, peer, legacy_rev),
    )


def forget_document(conn: sqlite3.Connection, collection: int, doc_id: str) -> None:
    """Drop a purged document's per-peer bookkeeping."""
    conn.execute(
        "DELETE FROM peer_legacy WHERE collection = ? AND doc_id = ?", (collection, doc_id)
    )


def check_vectors(engine: Engine) -> list[str]:
    """Problems with the stored vectors (for ``fieldsync db check``): the source ID, every
    vector well formed, each document's vector equal to its current revision's, ``cv`` columns
    matching, and no version by this database newer than its clock."""
    problems: list[str] = []
    rows = engine.query("SELECT value FROM peer_info WHERE key = ?", (_SOURCE_KEY,))
    try:
        source = SourceID(str(rows[0][0])) if rows else None
    except BadVersion as exc:
        return [f"source ID: {exc.detail}"]
    if source is None:
        return ["the database has no source ID"]
    clock = engine.query("SELECT value FROM peer_info WHERE key = ?", (_CLOCK_KEY,))
    last = int(str(clock[0][0]).split()[0]) if clock else 0
    newest_own = 0
    for doc_id, collection, rev_id, doc_hlv, rev_hlv in engine.query(
        "SELECT d.doc_id, d.collection, d.rev_id, d.hlv, r.hlv FROM docs d "
        "LEFT JOIN revs r ON r.doc = d.id AND r.rev_id = d.rev_id"
    ):
        where = f"document {doc_id!r} (collection {collection})"
        if doc_hlv != rev_hlv:
            problems.append(f"{where}: vector {doc_hlv!r} is not its revision {rev_id}'s")
    for doc_id, rev_id, text, cv in engine.query(
        "SELECT d.doc_id, r.rev_id, r.hlv, r.cv FROM revs r JOIN docs d ON d.id = r.doc "
        "WHERE r.hlv IS NOT NULL OR r.cv IS NOT NULL"
    ):
        where = f"document {doc_id!r} revision {rev_id}"
        try:
            hlv = HLV.parse(text, "stored vector")
        except BadVersion as exc:
            problems.append(f"{where}: {exc.detail}")
            continue
        if cv != str(hlv.cv):
            problems.append(f"{where}: cv column {cv!r} disagrees with vector {text!r}")
        own = hlv.time_of(source)
        if own is not None:
            newest_own = max(newest_own, own)
    if newest_own > last:
        problems.append(
            f"clock: last time {last:#x} is behind this database's own version {newest_own:#x}"
        )
    return problems
