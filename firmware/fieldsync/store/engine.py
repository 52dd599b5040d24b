"""The one owner of a database's SQLite connection: locking, transactions, savepoints and
per-collection sequence allocation.

``Database`` and ``Collection`` both work through an ``Engine`` and never touch the
connection's state themselves. The engine knows nothing of documents: it reports each durable
commit (the collections whose last sequence advanced) and each rollback through the two hooks
it is given.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from fieldsync.store.errors import StoreError

#: Called after the outermost transaction committed: ``{collection id: last sequence}``.
CommitHook = Callable[[dict[int, int]], None]
#: Called (with the lock held) after a transaction or savepoint was rolled back.
RollbackHook = Callable[[], None]


#: A WAL reader waits for nothing but a checkpoint's brief lock; bounded anyway.
_READER_TIMEOUT = 1.0


def _ignore_commit(_sequences: dict[int, int]) -> None:
    return None


def _ignore_rollback() -> None:
    return None


class Engine:
    """A SQLite connection usable from any thread (calls are serialised by a re-entrant lock).

    Write transactions nest: the outermost level is ``BEGIN IMMEDIATE`` … ``COMMIT`` (durable,
    ``synchronous=FULL``); inner levels are savepoints that roll back on their own.

    Threading rule (issue 13): a thread that finds the connection busy in another thread (a
    write transaction, which may itself be waiting seconds for another process's write lock)
    does not wait for it: :meth:`query` and :meth:`reading` then use a second, read-only
    connection, which in WAL mode sees the last committed state without blocking. So the event
    loop can read while the store's writer thread commits. Reads inside a write transaction (the
    thread that holds the lock) always use the writing connection and see its own writes.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        name: str,
        on_commit: CommitHook = _ignore_commit,
        on_rollback: RollbackHook = _ignore_rollback,
    ) -> None:
        self.name = name
        self.on_commit = on_commit
        self.on_rollback = on_rollback
        self._conn: sqlite3.Connection | None = conn
        #: Serialises every use of the connection; whoever keeps state tied to what is
        #: committed (a collection cache) takes it too, so there is one lock order.
        self.lock = threading.RLock()
        self._lock = self.lock
        self._depth = 0  # nesting depth of write transactions
        #: Counts outermost write transactions (a cache valid for one transaction keys on it).
        self.transaction_serial = 0
        self._before_commit: list[Callable[[sqlite3.Connection], None]] = []
        self._pending: dict[int, int] = {}  # collection id -> last sequence written, uncommitted
        self._data_version: int = conn.execute("PRAGMA data_version").fetchone()[0]
        self._reader: sqlite3.Connection | None = None  # opened on first use
        # Its file, known now: the writing connection may be busy (for seconds) when needed.
        self._reader_path: str = next(
            (row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main"), ""
        )
        self._read_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        return self._conn is None

    @property
    def in_transaction(self) -> bool:
        """Whether a write transaction is open (on any thread; check with ``locked()`` held)."""
        return self._depth > 0

    def close(self) -> None:
        """Close the connection (idempotent). ``StoreError`` inside a transaction."""
        with self._lock:
            if self._conn is not None:
                if self._depth:
                    raise StoreError("cannot close the database inside a transaction")
                self._conn.close()
                self._conn = None
                with self._read_lock:
                    if self._reader is not None:
                        self._reader.close()
                        self._reader = None

    @contextlib.contextmanager
    def locked(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and use the connection directly, for several consistent reads."""
        with self._lock:
            yield self._connection()

    def _connection(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            raise StoreError(f"database {self.name!r} is closed")
        return conn

    # -- reading -----------------------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run one (reading) statement and return all its rows."""
        if self._lock.acquire(blocking=False):
            try:
                return self._connection().execute(sql, params).fetchall()
            finally:
                self._lock.release()
        with self._read_lock:
            reader = self._reader_connection()
            if reader is not None:
                return reader.execute(sql, params).fetchall()
        with self._lock:
            return self._connection().execute(sql, params).fetchall()

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A connection for several reads of one consistent, committed state (or of the open
        transaction, in the thread that holds it). Never waits for another thread's write."""
        if self._lock.acquire(blocking=False):
            try:
                yield self._connection()
            finally:
                self._lock.release()
            return
        with self._read_lock:
            reader = self._reader_connection()
            if reader is not None:
                reader.execute("BEGIN")
                try:
                    yield reader
                finally:
                    reader.execute("COMMIT")
                return
        with self._lock:
            yield self._connection()

    def _reader_connection(self) -> sqlite3.Connection | None:
        """The read-only second connection (call with ``_read_lock`` held); ``None`` for a
        database without a file."""
        if self._reader is None:
            path = self._reader_path
            if not path or self._conn is None:
                return None
            reader = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=_READER_TIMEOUT
            )
            reader.execute("PRAGMA query_only=1")
            self._reader = reader
        return self._reader

    def data_version_changed(self) -> bool:
        """Whether another connection committed since the last call (``False`` while this one
        has a transaction open)."""
        with self._lock:
            conn = self._connection()
            if self._depth:
                return False
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if version == self._data_version:
                return False
            self._data_version = version
            return True

    # -- writing -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, or a savepoint inside an enclosing one.

        The outermost level commits durably on exit and then calls ``on_commit`` with every
        collection whose sequence advanced; an exception rolls its level back and propagates.
        """
        committed: dict[int, int] = {}
        with self._lock:
            conn = self._connection()
            if self._depth:
                with self._savepoint(conn):
                    yield conn
                return
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StoreError(f"cannot start a write transaction: {exc}") from exc
            self._depth = 1
            self._pending = {}
            self.transaction_serial += 1
            self._before_commit = []
            try:
                yield conn
                if self._pending:
                    conn.executemany(
                        "UPDATE collections SET last_sequence = ? WHERE id = ?",
                        [(seq, cid) for cid, seq in self._pending.items()],
                    )
                for callback in self._before_commit:
                    callback(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self._pending = {}
                self._rolled_back()
                raise
            finally:
                self._depth = 0
                self._before_commit = []
            committed, self._pending = self._pending, {}
        if committed:
            self.on_commit(committed)

    def before_commit(self, callback: Callable[[sqlite3.Connection], None]) -> None:
        """Run ``callback(conn)`` just before the open write transaction commits (inside it;
        an exception rolls it back). Only with the lock held, inside ``write()``."""
        if not self._depth:
            raise StoreError("before_commit() needs an open write transaction")
        self._before_commit.append(callback)

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[sqlite3.Connection]:
        """A savepoint inside the write transaction that the caller already holds: an exception
        inside it undoes only its own writes (and sequence allocations) and propagates, leaving
        the enclosing transaction usable. Use it to isolate one item of a batch."""
        with self._lock:
            if not self._depth:
                raise StoreError("savepoint() needs an enclosing write transaction")
            conn = self._connection()
            with self._savepoint(conn):
                yield conn

    @contextlib.contextmanager
    def _savepoint(self, conn: sqlite3.Connection) -> Iterator[None]:
        savepoint = f"sp{self._depth}"
        conn.execute(f"SAVEPOINT {savepoint}")
        saved_pending = dict(self._pending)
        self._depth += 1
        try:
            yield
        except BaseException:
            conn.execute(f"ROLLBACK TO {savepoint}")
            conn.execute(f"RELEASE {savepoint}")
            self._pending = saved_pending
            self._rolled_back()
            raise
        else:
            conn.execute(f"RELEASE {savepoint}")
        finally:
            self._depth -= 1

    def _rolled_back(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.on_rollback()

    # -- sequences ---------------------------------------------------------------------------

    def next_sequence(self, conn: sqlite3.Connection, collection_id: int) -> int:
        """Allocate the next sequence of a collection inside a write transaction.

        Sequences are counted in memory and the collection row is updated once, at commit.
        """
        if not self._depth:
            raise StoreError("sequences are allocated only inside a write transaction")
        current = self._pending.get(collection_id)
        if current is None:
            current = conn.execute(
                "SELECT last_sequence FROM collections WHERE id = ?", (collection_id,)
            ).fetchone()[0]
        self._pending[collection_id] = current + 1
        return current + 1

    def last_sequence(self, collection_id: int) -> int:
        """A collection's last sequence, including one allocated in the open transaction."""
        with self._lock:
            pending = self._pending.get(collection_id) if self._depth else None
            if pending is not None:
                return pending
            rows = self.query(
                "SELECT last_sequence FROM collections WHERE id = ?", (collection_id,)
            )
        return rows[0][0] if rows else 0
