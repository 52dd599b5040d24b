"""Database maintenance, Couchbase Lite's ``performMaintenance`` for a device left alone for
months: compaction (expired documents, old revision bodies, old tombstones, unreferenced blobs,
then free pages given back), integrity checks and query-planner statistics.

What COMPACT keeps, and why
---------------------------

* **Revision bodies.** Every leaf keeps its body (the current revision and every conflicting
  one: conflict resolution needs them). A non-leaf keeps its body only when it is an ancestor of
  a *live* leaf at most ``Database.keep_body_generations`` (5) generations up: those are the delta
  sources the Pusher may encode against (``replication/deltas.py``) and the bases a peer's delta
  may name. Ancestors of deleted leaves and deeper ancestors lose their bodies; their revIDs stay
  in the tree so histories still match.
* **Tombstones.** A deleted document (every leaf is a deletion) is purged only when BOTH
  1. it was deleted more than ``tombstone_purge_interval`` ago (measured with the sequence clock
     that maintenance records: the first recorded sample at or past its sequence), and
  2. every peer that pulls from this device is known to have received it: its sequence is at or
     below the smallest ``remote`` sequence of every checkpoint phones stored here
     (``checkpoints`` table) and the smallest ``local`` sequence of every checkpoint our own
     active replicator keeps (``checkpoint/…`` local values, i.e. pushed upstream).
  A checkpoint that has not moved for ``peer_retention`` stops holding tombstones back, as Sync
  Gateway's metadata purge interval does: a phone that returns after that long may keep a
  document deleted here (it still receives every later change). Checkpoints are not stored per
  collection in a form we can map, so the smallest one is applied to every collection (safe:
  it can only keep more).
* **Blobs.** A blob is removed when no stored *leaf* body references it (non-leaf bodies are
  delta sources only; nobody asks for their blobs) AND its file is older than ``blob_grace``.
  The reference scan and the removals run inside one write transaction, so no revision commits
  in between, in this process or another. A blob that arrives for a revision not committed yet
  is young (just written) or was ``claim``-ed (mtime refreshed) by the code that found it
  already present, so the grace period protects it; removal itself renames first and re-checks
  the mtime (``BlobStore.collect``), so a claim racing the collector always wins.
* **Space.** With ``auto_vacuum=incremental`` (new databases; older ones are converted by one
  full VACUUM when the free space allows it) freed pages are returned with
  ``PRAGMA incremental_vacuum``, which needs no extra space. A full VACUUM needs room for a
  copy of the file in the WAL plus a temporary copy; it is skipped (and said so in the result)
  when the file system has less than ``VACUUM_SPACE_FACTOR`` x the database size free. The WAL is
  then truncated (``wal_checkpoint(TRUNCATE)``).

Every step is a sequence of short SQLite transactions and file renames, so SIGKILL at any point
leaves a consistent database; the next run simply continues.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fieldsync.store import expiry
from fieldsync.store.blobs import BlobStore
from fieldsync.store.engine import Engine
from fieldsync.store.integrity import check_integrity, referenced_digests
from fieldsync.store.paths import DATABASE_FILE
from fieldsync.store.revtree import NODE_COLUMNS, RevTree, node_from_row
from fieldsync.store.schema import TEMP_STORE

log = logging.getLogger(__name__)

#: local_values keys (never replicated).
LAST_RESULT_KEY = "maintenance/last-result"
SEQUENCE_CLOCK_KEY = "maintenance/sequence-clock"
PEERS_SEEN_KEY = "maintenance/peers-seen"
ACTIVE_CHECKPOINT_PREFIX = "checkpoint/"

DAY = 86400.0
#: Defaults: Sync Gateway purges tombstones after 30 days by default.
DEFAULT_TOMBSTONE_PURGE_INTERVAL = 30 * DAY
DEFAULT_PEER_RETENTION = 90 * DAY
#: A blob younger than this is never removed (revision being received or saved).
DEFAULT_BLOB_GRACE = 3600.0
#: A full VACUUM runs only with this many times the database size free.
VACUUM_SPACE_FACTOR = 2.2
#: Documents per transaction when trimming bodies or purging tombstones.
BATCH = 200
#: Samples kept in the sequence clock.
MAX_CLOCK_SAMPLES = 400


class MaintenanceType(enum.Enum):
    """Couchbase Lite's ``MaintenanceType``."""

    COMPACT = "compact"
    REINDEX = "reindex"
    INTEGRITY_CHECK = "integrity_check"
    OPTIMIZE = "optimize"
    FULL_OPTIMIZE = "full_optimize"


class MaintenanceOwner(Protocol):
    """What maintenance needs from a database (``Database`` satisfies it)."""

    @property
    def path(self) -> Path: ...
    @property
    def engine(self) -> Engine: ...
    @property
    def blobs(self) -> BlobStore: ...
    @property
    def keep_body_generations(self) -> int: ...


class Progress(Protocol):
    def __call__(self, phase: str, done: int, total: int) -> None: ...


@dataclass
class MaintenancePolicy:
    """The knobs of COMPACT (seconds). ``clock`` gives the time tombstone ages and expirations
    are judged by (tests inject one); blob ages are file mtimes, judged by the real clock."""

    tombstone_purge_interval: float = DEFAULT_TOMBSTONE_PURGE_INTERVAL
    peer_retention: float = DEFAULT_PEER_RETENTION
    blob_grace: float = DEFAULT_BLOB_GRACE
    vacuum: bool = True
    clock: Callable[[], float] = time.time


@dataclass
class MaintenanceResult:
    """What one maintenance run did (or found, for INTEGRITY_CHECK)."""

    kind: str
    started_at: float
    seconds: float = 0.0
    ok: bool = True
    expired_purged: int = 0
    bodies_dropped: int = 0
    tombstones_purged: int = 0
    tombstones_held: int = 0
    blobs_removed: int = 0
    blob_bytes_removed: int = 0
    blobs_checked: int = 0
    vacuum: str = ""
    size_before: int = 0
    size_after: int = 0
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> MaintenanceResult:
        raw = json.loads(data)
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def summary(self) -> str:
        """One line for logs and ``fieldsync status``."""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at))
        if self.kind == MaintenanceType.INTEGRITY_CHECK.value:
            state = "ok" if self.ok else f"{len(self.problems)} problem(s)"
            return f"{self.kind} at {when}: {state}, {self.blobs_checked} blobs checked"
        parts = [f"{self.kind} at {when} ({self.seconds:.1f} s)"]
        if self.kind == MaintenanceType.COMPACT.value:
            parts.append(
                f"{self.expired_purged} expired, {self.tombstones_purged} tombstones purged "
                f"({self.tombstones_held} held for peers), {self.bodies_dropped} bodies dropped, "
                f"{self.blobs_removed} blobs ({self.blob_bytes_removed} bytes) removed, "
                f"{self.size_before} -> {self.size_after} bytes, vacuum {self.vacuum}"
            )
        if not self.ok:
            parts.append("FAILED: " + "; ".join(self.problems[:3]))
        return ", ".join(parts)


# -- sizes ------------------------------------------------------------------------------------


def sqlite_bytes(path: Path) -> int:
    """Bytes of the SQLite file and its WAL/SHM."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            total += (path / (DATABASE_FILE + suffix)).stat().st_size
    return total


def disk_bytes(database: MaintenanceOwner) -> int:
    """SQLite files plus blob files."""
    return sqlite_bytes(database.path) + database.blobs.total_size()


def free_bytes(path: Path) -> int:
    """Free bytes for an unprivileged writer on the file system holding ``path``."""
    return shutil.disk_usage(path).free


def load_last_result(engine: Engine) -> MaintenanceResult | None:
    rows = engine.query("SELECT value FROM local_values WHERE key = ?", (LAST_RESULT_KEY,))
    if not rows:
        return None
    try:
        return MaintenanceResult.from_json(bytes(rows[0][0]))
    except (ValueError, TypeError):
        return None


def _save_local(conn: sqlite3.Connection, key: str, value: Any) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO local_values (key, value) VALUES (?, ?)",
        (key, json.dumps(value).encode()),
    )


def _load_local(conn: sqlite3.Connection, key: str) -> Any:
    row = conn.execute("SELECT value FROM local_values WHERE key = ?", (key,)).fetchone()
    if row is None:
        return None
    try:
        return json.loads(bytes(row[0]))
    except ValueError:
        return None


# -- entry point --------------------------------------------------------------------------------


def perform_maintenance(
    database: MaintenanceOwner,
    kind: MaintenanceType,
    *,
    policy: MaintenancePolicy | None = None,
    progress: Progress | None = None,
) -> MaintenanceResult:
    """Run one kind of maintenance and record its result in the database (local value
    ``maintenance/last-result``, shown by ``fieldsync status``). Blocking: call it off the
    event loop. Never raises for what it finds; SQLite errors propagate."""
    policy = policy or MaintenancePolicy()
    result = MaintenanceResult(kind.value, policy.clock())
    started = time.monotonic()
    result.size_before = disk_bytes(database)
    if kind is MaintenanceType.COMPACT:
        _compact(database, policy, result, progress)
    elif kind is MaintenanceType.INTEGRITY_CHECK:
        result.problems, result.blobs_checked = check_integrity(database, progress)
        result.ok = not result.problems
    elif kind is MaintenanceType.REINDEX:
        with database.engine.write() as conn:
            conn.execute("REINDEX")
    elif kind is MaintenanceType.OPTIMIZE:
        with database.engine.locked() as conn:
            conn.execute("PRAGMA analysis_limit=400")
            conn.execute("ANALYZE")
    elif kind is MaintenanceType.FULL_OPTIMIZE:
        with database.engine.locked() as conn:
            conn.execute("PRAGMA analysis_limit=0")
            conn.execute("ANALYZE")
    result.seconds = time.monotonic() - started
    result.size_after = disk_bytes(database)
    with database.engine.write() as conn:
        _save_local(conn, LAST_RESULT_KEY, asdict(result))
    log.info("maintenance of %s: %s", database.path.name, result.summary())
    return result


def _compact(
    database: MaintenanceOwner,
    policy: MaintenancePolicy,
    result: MaintenanceResult,
    progress: Progress | None,
) -> None:
    engine = database.engine
    now = policy.clock()
    record_sequence_clock(engine, now)
    result.expired_purged = expiry.purge_expired(engine, now, progress)
    result.bodies_dropped = drop_unneeded_bodies(engine, database.keep_body_generations, progress)
    result.tombstones_purged, result.tombstones_held = purge_old_tombstones(
        engine, now, policy.tombstone_purge_interval, policy.peer_retention, progress
    )
    # Blob ages are file mtimes: always measured against the real clock.
    result.blobs_removed, result.blob_bytes_removed = collect_blobs(
        engine, database.blobs, time.time() - policy.blob_grace, progress
    )
    if policy.vacuum:
        result.vacuum = reclaim_space(engine, database.path)


# -- the sequence clock -------------------------------------------------------------------------


def record_sequence_clock(engine: Engine, now: float) -> None:
    """Remember ``{collection: last sequence}`` at ``now``; tombstone ages are read from it."""
    with engine.write() as conn:
        sequences = {
            str(cid): seq for cid, seq in conn.execute("SELECT id, last_sequence FROM collections")
        }
        samples = _load_local(conn, SEQUENCE_CLOCK_KEY) or []
        if samples and samples[-1][1] == sequences:
            return  # nothing changed since the last sample: keep its (older) time
        samples.append([now, sequences])
        if len(samples) > MAX_CLOCK_SAMPLES:
            # Keep the oldest, thin the middle: ages only need to be bounded from below.
            samples = samples[:1] + samples[2::2][-(MAX_CLOCK_SAMPLES // 2) :]
        _save_local(conn, SEQUENCE_CLOCK_KEY, samples)


def sequence_older_than(samples: list[Any], collection_id: int, cutoff: float) -> int:
    """The highest sequence of ``collection_id`` known to have been written at or before
    ``cutoff`` (0 if none): the last sample taken at or before ``cutoff``."""
    best = 0
    for taken, sequences in samples:
        if taken <= cutoff:
            best = max(best, int(sequences.get(str(collection_id), 0)))
    return best


# -- bodies -------------------------------------------------------------------------------------


def bodies_to_drop(tree: RevTree, keep_generations: int) -> list[str]:
    """RevIDs whose stored body COMPACT drops (see the module docstring)."""
    keep: set[str] = set()
    for leaf in tree.leaves():
        keep.add(leaf.rev_id)
        if leaf.deleted:
            continue
        for distance, rev_id in enumerate(tree.ancestry(leaf.rev_id)):
            if distance > keep_generations:
                break
            keep.add(rev_id)
    return [n.rev_id for n in tree.nodes.values() if n.has_body and n.rev_id not in keep]


def drop_unneeded_bodies(
    engine: Engine, keep_generations: int, progress: Progress | None = None
) -> int:
    """Drop the bodies no delta or conflict needs; return how many."""
    candidates = [
        row[0]
        for row in engine.query(
            "SELECT doc FROM revs r WHERE body IS NOT NULL AND EXISTS "
            "(SELECT 1 FROM revs c WHERE c.doc = r.doc AND c.parent = r.rev_id) "
            "GROUP BY doc"
        )
    ]
    dropped = 0
    for start in range(0, len(candidates), BATCH):
        with engine.write() as conn:
            for doc in candidates[start : start + BATCH]:
                rows = conn.execute(
                    f"SELECT {NODE_COLUMNS} FROM revs WHERE doc = ?", (doc,)
                ).fetchall()
                tree = RevTree(node_from_row(row) for row in rows)
                doomed = bodies_to_drop(tree, keep_generations)
                conn.executemany(
                    "UPDATE revs SET body = NULL WHERE doc = ? AND rev_id = ?",
                    [(doc, rev_id) for rev_id in doomed],
                )
                dropped += len(doomed)
        if progress is not None:
            progress("bodies", min(start + BATCH, len(candidates)), len(candidates))
    return dropped


# -- tombstones ---------------------------------------------------------------------------------


def peer_floor(conn: sqlite3.Connection, now: float, peer_retention: float) -> int | None:
    """The smallest sequence every known pulling peer has received, or ``None`` if no peer
    holds tombstones back. Also records when each checkpoint last moved."""
    seen: dict[str, list[Any]] = _load_local(conn, PEERS_SEEN_KEY) or {}
    current: dict[str, list[Any]] = {}
    floors: list[int] = []

    def consider(key: str, rev: str, progress_seq: object) -> None:
        previous = seen.get(key)
        moved_at = previous[1] if previous and previous[0] == rev else now
        current[key] = [rev, moved_at]
        if now - moved_at > peer_retention:
            return  # gone too long: it no longer holds tombstones back
        floors.append(progress_seq if isinstance(progress_seq, int) else 0)

    for client_id, rev, body in conn.execute("SELECT client_id, rev, body FROM checkpoints"):
        parsed = _json_object(body)
        if parsed is None:
            consider("peer:" + client_id, rev, 0)  # unreadable: hold everything back
        elif "remote" in parsed:  # the phone pulls from us; push-only peers need no tombstones
            consider("peer:" + client_id, rev, parsed["remote"])
    for key, value in conn.execute(
        "SELECT key, value FROM local_values WHERE key LIKE ?", (ACTIVE_CHECKPOINT_PREFIX + "%",)
    ):
        parsed = _json_object(value)
        if parsed is not None and "local" in parsed:  # we push upstream
            consider("active:" + key, json.dumps(parsed, sort_keys=True), parsed["local"])
    if current != seen:  # no needless rewrite when no checkpoint moved
        _save_local(conn, PEERS_SEEN_KEY, current)
    return min(floors) if floors else None


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        parsed = json.loads(bytes(data))
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def purge_old_tombstones(
    engine: Engine,
    now: float,
    interval: float,
    peer_retention: float,
    progress: Progress | None = None,
) -> tuple[int, int]:
    """Purge deleted documents old enough and seen by every peer; return ``(purged, held)``
    where ``held`` counts tombstones old enough but kept for a peer that has not synced."""
    purged = held = 0
    with engine.write() as conn:
        floor = peer_floor(conn, now, peer_retention)
        samples = _load_local(conn, SEQUENCE_CLOCK_KEY) or []
        collections = [row[0] for row in conn.execute("SELECT id FROM collections")]
    for collection_id in collections:
        old_enough = sequence_older_than(samples, collection_id, now - interval)
        if not old_enough:
            continue
        limit = old_enough if floor is None else min(old_enough, floor)
        held += engine.query(
            "SELECT COUNT(*) FROM docs WHERE collection = ? AND deleted = 1 "
            "AND sequence <= ? AND sequence > ?",
            (collection_id, old_enough, limit),
        )[0][0]
        while True:
            with engine.write() as conn:
                doomed = conn.execute(
                    "SELECT doc_id FROM docs WHERE collection = ? AND deleted = 1 "
                    "AND sequence <= ? LIMIT ?",
                    (collection_id, limit, BATCH),
                ).fetchall()
                for (doc_id,) in doomed:
                    purged += expiry.purge_in(conn, collection_id, doc_id)
            if progress is not None and doomed:
                progress("tombstones", purged, purged)
            if len(doomed) < BATCH:
                break
    return purged, held


# -- blobs --------------------------------------------------------------------------------------


def collect_blobs(
    engine: Engine, blobs: BlobStore, older_than: float, progress: Progress | None = None
) -> tuple[int, int]:
    """Remove blobs no leaf references and older than ``older_than``; ``(count, bytes)``."""
    blobs.restore_trash()
    removed = freed = 0
    # The write transaction keeps every writer (this process or another) from committing a
    # revision between the scan and the removals.
    with engine.write() as conn:
        used = referenced_digests(conn)
        orphans = [d for d in blobs.digests() if d not in used]
        for index, digest in enumerate(orphans):
            size = blobs.collect(digest, older_than)
            if size is not None:
                removed += 1
                freed += size
            if progress is not None and (index % 50 == 0 or index == len(orphans) - 1):
                progress("blobs", index + 1, len(orphans))
    if removed:
        blobs.sync_directory()
    return removed, freed


# -- space --------------------------------------------------------------------------------------


def reclaim_space(engine: Engine, path: Path) -> str:
    """Give free pages back to the file system; return what was done."""
    with engine.locked() as conn:
        if conn.in_transaction:
            # Called from inside a write (e.g. by an application's callback): a checkpoint or
            # vacuum cannot run there, and executescript would commit the caller's half-done work.
            return "skipped: a transaction is open on this connection"
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        auto_vacuum = conn.execute("PRAGMA auto_vacuum").fetchone()[0]
        free_pages = conn.execute("PRAGMA freelist_count").fetchone()[0]
        if auto_vacuum == 2:
            if free_pages:
                # Each step of the statement frees one page and yields no row, so a cursor
                # would stop after one; executescript steps it to the end (one transaction).
                conn.executescript("PRAGMA incremental_vacuum;")
            outcome = f"incremental ({free_pages} pages)"
        else:
            size = sqlite_bytes(path)
            available = free_bytes(path)
            if available < VACUUM_SPACE_FACTOR * size:
                return (
                    f"skipped: full VACUUM needs {int(VACUUM_SPACE_FACTOR * size)} bytes free, "
                    f"{available} available"
                )
            # One full VACUUM converts the file to incremental auto-vacuum (LiteCore does the
            # same for databases created without it).
            conn.execute("PRAGMA auto_vacuum=incremental")
            conn.execute("PRAGMA temp_store=FILE")  # its copy of the database: not in RAM
            try:
                conn.execute("VACUUM")
            finally:
                conn.execute(f"PRAGMA temp_store={TEMP_STORE}")
            outcome = "full"
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return outcome


def free_space_low(path: Path, minimum_bytes: int) -> bool:
    """Whether the file system holding ``path`` has less than ``minimum_bytes`` free."""
    try:
        return free_bytes(path) < minimum_bytes
    except OSError:
        return False
