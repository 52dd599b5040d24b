"""SIGKILL during COMPACT loses nothing: a child process compacts a real database and is killed
at random moments; after each kill the database opens, passes INTEGRITY_CHECK, and every live
document and every blob it references is exactly as before."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from fieldsync.store import Database, MaintenanceType

CHILD = r"""
import sys
from fieldsync.store import Database, MaintenancePolicy, MaintenanceType
db = Database.open(sys.argv[1])
print("open", flush=True)
policy = MaintenancePolicy(tombstone_purge_interval=0.0, blob_grace=0.0, clock=lambda: 4e9)
while True:
    db.perform_maintenance(MaintenanceType.COMPACT, policy=policy)
"""


def _blob(db: Database, seed: str, size: int) -> dict[str, object]:
    data = hashlib.sha256(seed.encode()).digest() * (size // 32)
    return {"@type": "blob", "digest": db.blobs.put(data), "length": len(data)}


def _make_garbage(db: Database, round_no: int) -> None:
    """Live documents with blobs and history, tombstones, orphan blobs, dropped bodies."""
    coll = db.default_collection
    for i in range(60):
        doc_id = f"live{i}"
        for gen in range(3):  # history whose blobs become orphans
            coll.save_document(
                doc_id,
                {"round": round_no, "gen": gen, "photo": _blob(db, f"{round_no}-{i}-{gen}", 32768)},
            )
    for i in range(80):
        doc_id = f"gone{round_no}-{i}"
        coll.save_document(doc_id, {"payload": "x" * 2000, "photo": _blob(db, doc_id, 8192)})
        coll.delete_document(doc_id)
    for i in range(20):
        db.blobs.put(f"orphan {round_no} {i}".encode() * 1000)
    with db.engine.locked() as conn:  # give pages back to the free list for the vacuum
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _snapshot(db: Database) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    coll = db.default_collection
    state: dict[str, tuple[str, bytes, dict[str, str]]] = {}
    for change in coll.changes_since(0):
        if change.deleted:
            continue
        rev = coll.get_revision(change.doc_id)
        assert rev is not None and rev.body is not None
        body = json.loads(rev.body)
        digest = body["photo"]["digest"]
        state[change.doc_id] = (
            rev.rev_id,
            rev.body,
            {digest: hashlib.sha1(db.blobs.read(digest)).hexdigest()},
        )
    return state


def test_sigkill_during_compaction_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "db"
    rng = random.Random(1405)
    kills = 0
    for round_no in range(6):
        with Database.open(path) as db:
            _make_garbage(db, round_no)
            if round_no == 3:  # an old file without auto_vacuum: the kill may hit a full VACUUM
                with db.engine.locked() as conn:
                    conn.execute("PRAGMA auto_vacuum=NONE")
                    conn.execute("VACUUM")
            before = _snapshot(db)
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path)],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == b"open"
            time.sleep(rng.uniform(0.0, 0.6))
            child.send_signal(signal.SIGKILL)
            kills += 1
        finally:
            child.wait(timeout=30)
        with Database.open(path) as db:
            check = db.perform_maintenance(MaintenanceType.INTEGRITY_CHECK)
            assert check.ok, check.problems
            after = _snapshot(db)
            assert after == before, f"round {round_no}: live data changed by a killed compaction"
    assert kills == 6
    with Database.open(path) as db:  # and a compaction that is allowed to finish cleans up
        db.perform_maintenance(MaintenanceType.COMPACT)
        assert db.perform_maintenance(MaintenanceType.INTEGRITY_CHECK).ok
        assert len(_snapshot(db)) == 60
