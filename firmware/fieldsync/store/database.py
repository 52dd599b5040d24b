"""A database: a directory holding ``db.sqlite3`` (documents, checkpoints) and ``blobs/``.

One ``Database`` object owns one SQLite connection, usable from any thread (calls are
serialised by a lock). Several processes may open the same database; SQLite arbitrates their
writes, and ``poll_changes()`` notices what the others committed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fieldsync.store import checkpoints, names
from fieldsync.store.blobs import BlobStore, find_blobs
from fieldsync.store.collection import Collection
from fieldsync.store.doc_versions import device_versions
from fieldsync.store.engine import Engine
from fieldsync.store.errors import CheckpointConflict, InvalidInput, NotFoundError, StoreError
from fieldsync.store.maintenance import (
    MaintenancePolicy,
    MaintenanceResult,
    MaintenanceType,
    Progress,
    load_last_result,
    perform_maintenance,
)
from fieldsync.store.paths import BLOBS_DIR, DATABASE_FILE
from fieldsync.store.schema import connect
from fieldsync.store.versions import SourceID

log = logging.getLogger(__name__)

ChangeListener = Callable[[Collection, int], None]

#: LiteCore's default maximum revision-tree depth (``kDefaultMaxRevTreeDepth``, 3.2.4).
DEFAULT_MAX_REV_TREE_DEPTH = 50
#: Non-leaf revisions keep their body until this many newer generations sit on top of them,
#: so a delta against a recent ancestor can still be computed.
DEFAULT_KEEP_BODY_GENERATIONS = 5


class _ListenerToken:
    __slots__ = ("callback",)

    def __init__(self, callback: ChangeListener) -> None:
        self.callback = callback


class Database:
    """An open database. Use ``Database.open``; close it (or use it as a context manager)."""

    def __init__(
        self,
        path: Path,
        conn: sqlite3.Connection,
        *,
        max_rev_tree_depth: int,
        keep_body_generations: int,
    ) -> None:
        self.path = path
        self.name = path.name
        self.max_rev_tree_depth = max_rev_tree_depth
        self.keep_body_generations = keep_body_generations
        self.blobs = BlobStore(path / BLOBS_DIR)
        #: The SQLite handle, transactions and sequence allocation (shared with collections).
        self.engine = Engine(
            conn,
            name=self.name,
            on_commit=self._committed,
            on_rollback=self._forget_missing_collections,
        )
        self._lock = self.engine.lock  # also guards the collection cache and listener list
        self._listeners: list[_ListenerToken] = []
        self._collections: dict[tuple[str, str], Collection] = {}
        self._by_id: dict[int, Collection] = {}
        self._known_sequences: dict[int, int] = {}
        #: Called with this database just before it closes (listeners serving it stop).
        self.close_callbacks: list[Callable[[Database], None]] = []
        self._refresh_collections(initial=True)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        max_rev_tree_depth: int = DEFAULT_MAX_REV_TREE_DEPTH,
        keep_body_generations: int = DEFAULT_KEEP_BODY_GENERATIONS,
    ) -> Database:
        """Open the database in directory ``path``, creating it if allowed.

        ``NotFoundError`` if it does not exist and ``create`` is false.
        """
        if max_rev_tree_depth < 1:
            raise InvalidInput("max_rev_tree_depth must be at least 1")
        if keep_body_generations < 0:
            raise InvalidInput("keep_body_generations must not be negative")
        directory = Path(path).expanduser().resolve()
        db_file = directory / DATABASE_FILE
        if directory.exists() and not directory.is_dir():
            raise InvalidInput(f"{directory} is not a directory")
        if not db_file.exists():
            if not create:
                raise NotFoundError(f"no database at {directory}")
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create database directory {directory}: {exc}") from exc
        conn = connect(db_file)
        try:
            return cls(
                directory,
                conn,
                max_rev_tree_depth=max_rev_tree_depth,
                keep_body_generations=keep_body_generations,
            )
        except BaseException:
            conn.close()
            raise

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection. Further calls raise ``StoreError``."""
        if not self.engine.is_closed:
            for callback in list(self.close_callbacks):
                try:
                    callback(self)
                except Exception:
                    log.exception("close callback of %s failed", self.name)
        self.engine.close()

    @property
    def is_closed(self) -> bool:
        return self.engine.is_closed

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Database {self.name!r} at {str(self.path)!r}>"

    # -- transactions ------------------------------------------------------------------------

    def _committed(self, sequences: dict[int, int]) -> None:
        with self._lock:
            self._known_sequences.update(sequences)
        self._notify(sequences)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Database]:
        """Group writes into one durable transaction (nestable; inner levels are savepoints).

        Listeners are called once the outermost level has committed.
        """
        with self.engine.write():
            yield self

    # -- collections -------------------------------------------------------------------------

    def _refresh_collections(self, *, initial: bool = False) -> list[tuple[Collection, int]]:
        """Re-read the collection list; return each collection with its last sequence.

        A collection seen for the first time counts as notified up to its current sequence
        when the database is being opened, and up to 0 otherwise (so ``poll_changes`` reports
        collections another process created and filled).
        """
        rows = self.engine.query(
            "SELECT id, scope, name, last_sequence FROM collections ORDER BY id"
        )
        result: list[tuple[Collection, int]] = []
        with self._lock:
            for cid, scope, name, last_sequence in rows:
                collection = self._by_id.get(cid)
                if collection is None:
                    collection = Collection(self, cid, scope, name)
                    self._by_id[cid] = collection
                    self._collections[(scope, name)] = collection
                    self._known_sequences[cid] = last_sequence if initial else 0
                result.append((collection, last_sequence))
        return result

    def _forget_missing_collections(self) -> None:
        """Drop cached collections whose creation was rolled back."""
        existing = {row[0] for row in self.engine.query("SELECT id FROM collections")}
        with self._lock:
            for cid in [cid for cid in self._by_id if cid not in existing]:
                collection = self._by_id.pop(cid)
                self._collections.pop((collection.scope, collection.name), None)
                self._known_sequences.pop(cid, None)

    @property
    def default_collection(self) -> Collection:
        collection = self.get_collection(names.DEFAULT_COLLECTION, names.DEFAULT_SCOPE)
        if collection is None:  # the schema always creates it
            raise StoreError("the default collection is missing")
        return collection

    def get_collection(self, name: str, scope: str = names.DEFAULT_SCOPE) -> Collection | None:
        """The collection ``scope.name``, or ``None`` if it does not exist."""
        names.check_collection_name(scope, "scope")
        names.check_collection_name(name)
        with self._lock:
            collection = self._collections.get((scope, name))
            if collection is None:
                self._refresh_collections()
                collection = self._collections.get((scope, name))
            return collection

    def create_collection(self, name: str, scope: str = names.DEFAULT_SCOPE) -> Collection:
        """The collection ``scope.name``, created if needed."""
        existing = self.get_collection(name, scope)
        if existing is not None:
            return existing
        with self.engine.write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO collections (scope, name) VALUES (?, ?)", (scope, name)
            )
        self._refresh_collections()
        collection = self._collections.get((scope, name))
        if collection is None:
            raise StoreError(f"could not create collection {scope}.{name}")
        return collection

    def collection(self, full_name: str, *, create: bool = False) -> Collection | None:
        """Look up a collection by ``"scope.name"`` (or a bare name in the default scope)."""
        scope, name = names.split_full_name(full_name)
        return self.create_collection(name, scope) if create else self.get_collection(name, scope)

    def collections(self) -> list[Collection]:
        """All collections, in creation order."""
        with self._lock:
            self._refresh_collections()
            return sorted(self._by_id.values(), key=lambda c: c.id)

    # -- change notification -----------------------------------------------------------------

    def add_change_listener(self, callback: ChangeListener) -> object:
        """Call ``callback(collection, last_sequence)`` after each commit that advanced a
        collection: at once for writes through this object, from ``poll_changes()`` for writes
        by other connections. Returns a token for ``remove_change_listener``."""
        token = _ListenerToken(callback)
        with self._lock:
            self._listeners.append(token)
        return token

    def remove_change_listener(self, token: object) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._listeners.remove(token)  # type: ignore[arg-type]

    def poll_changes(self, *, wait: bool = True) -> bool:
        """Notice commits made by other connections or processes since the last call.

        Cheap when nothing changed (one ``PRAGMA data_version``). If something did, calls the
        listeners for every collection whose last sequence moved and returns ``True``.
        ``wait=False``: return ``False`` at once if another thread is using the connection (a
        write in progress; the event loop must not wait for it) — call again later.
        """
        if not self._lock.acquire(blocking=wait):
            return False
        try:
            if not self.engine.data_version_changed():
                return False
            moved: dict[int, int] = {}
            for collection, sequence in self._refresh_collections():
                if sequence != self._known_sequences.get(collection.id):
                    moved[collection.id] = sequence
                    self._known_sequences[collection.id] = sequence
        finally:
            self._lock.release()
        if not moved:
            return False
        self._notify(moved)
        return True

    def _notify(self, sequences: dict[int, int]) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for cid, sequence in sequences.items():
            collection = self._by_id.get(cid)
            if collection is None:
                continue
            for token in listeners:
                try:
                    token.callback(collection, sequence)
                except Exception:
                    log.exception("change listener failed for %s", collection.full_name)

    # -- peer checkpoints and local values ---------------------------------------------------

    def get_checkpoint(self, client_id: str) -> tuple[bytes, str] | None:
        """The checkpoint a peer stored under ``client_id``: ``(body, rev)``, or ``None``."""
        rows = self.engine.query(
            "SELECT body, rev FROM checkpoints WHERE client_id = ?", (client_id,)
        )
        return (bytes(rows[0][0]), rows[0][1]) if rows else None

    def set_checkpoint(self, client_id: str, body: bytes, rev: str | None) -> str:
        """Store a peer's checkpoint body (byte for byte) if ``rev`` is the current revision
        (``None``/``""`` = there must be none yet). Returns the new revision ``"N-cc"``;
        ``CheckpointConflict`` if ``rev`` does not match."""
        if not isinstance(client_id, str) or not client_id:
            raise InvalidInput("checkpoint client ID must be a non-empty string")
        if not isinstance(body, bytes | bytearray | memoryview):
            raise InvalidInput("checkpoint body must be bytes")
        with self.engine.write() as conn:
            row = conn.execute(
                "SELECT rev FROM checkpoints WHERE client_id = ?", (client_id,)
            ).fetchone()
            current = row[0] if row else None
            if (rev or None) != current:
                raise CheckpointConflict(
                    f"checkpoint {client_id!r} is at revision {current or 'none'}, "
                    f"not {rev or 'none'}",
                    current,
                )
            new_rev = checkpoints.next_rev(current)
            conn.execute(
                "INSERT OR REPLACE INTO checkpoints (client_id, rev, body) VALUES (?, ?, ?)",
                (client_id, new_rev, bytes(body)),
            )
        return new_rev

    def get_local(self, key: str) -> bytes | None:
        """A local value (never replicated), or ``None``."""
        rows = self.engine.query("SELECT value FROM local_values WHERE key = ?", (key,))
        return bytes(rows[0][0]) if rows else None

    def set_local(self, key: str, value: bytes | None) -> None:
        """Store (or, with ``None``, delete) a local value, durably."""
        if not isinstance(key, str) or not key:
            raise InvalidInput("local key must be a non-empty string")
        with self.engine.write() as conn:
            if value is None:
                conn.execute("DELETE FROM local_values WHERE key = ?", (key,))
            else:
                conn.execute(
                    "INSERT OR REPLACE INTO local_values (key, value) VALUES (?, ?)",
                    (key, bytes(value)),
                )

    # -- blobs -------------------------------------------------------------------------------

    def missing_blobs(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The blob references in ``body`` whose content is not in the blob store."""
        return [blob for blob in find_blobs(body) if not self.blobs.has(blob["digest"])]

    # -- maintenance -------------------------------------------------------------------------

    def perform_maintenance(
        self,
        kind: MaintenanceType,
        *,
        policy: MaintenancePolicy | None = None,
        progress: Progress | None = None,
    ) -> MaintenanceResult:
        """Couchbase Lite's ``performMaintenance``: COMPACT, REINDEX, INTEGRITY_CHECK, OPTIMIZE
        or FULL_OPTIMIZE (see ``fieldsync.store.maintenance`` for what COMPACT keeps and why).
        Blocking; safe while replication runs and against a crash at any point."""
        return perform_maintenance(self, kind, policy=policy, progress=progress)

    def last_maintenance(self) -> MaintenanceResult | None:
        """The result of the last maintenance run on this database (any process), if any."""
        return load_last_result(self.engine)

    # -- information -------------------------------------------------------------------------

    @property
    def source_id(self) -> SourceID:
        """This database's version-vector source ID (16 random bytes, made once, persistent)."""
        return device_versions(self.engine).source_id

    def disk_size(self) -> int:
        """Bytes used on disk by the database directory (SQLite files and blobs)."""
        total = 0
        for root, _dirs, files in os.walk(self.path):
            for file in files:
                with contextlib.suppress(OSError):
                    total += os.stat(os.path.join(root, file)).st_size
        return total
