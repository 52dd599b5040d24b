"""Database maintenance (issue 14): COMPACT's blob GC, body trimming, tombstone purge and
vacuum; INTEGRITY_CHECK; purge and expiration. Real SQLite files and blob directories."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from fieldsync.store import (
    Collection,
    Database,
    IncomingRevision,
    MaintenancePolicy,
    MaintenanceType,
    NotFoundError,
    maintenance,
)
from fieldsync.store import blobs as blobs_module
from fieldsync.store.revid import make as make_rev

COMPACT = MaintenanceType.COMPACT
CHECK = MaintenanceType.INTEGRITY_CHECK
DAY = 86400.0


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def blob_ref(digest: str, length: int) -> dict[str, object]:
    return {"@type": "blob", "digest": digest, "length": length, "content_type": "image/jpeg"}


def age(path: Path, seconds: float) -> None:
    """Make a blob file look ``seconds`` old."""
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))


def age_all_blobs(db: Database, seconds: float = 7200) -> None:
    for digest in db.blobs.digests():
        age(db.blobs.path_for(digest), seconds)


def compact(db: Database, **policy: object) -> maintenance.MaintenanceResult:
    return db.perform_maintenance(COMPACT, policy=MaintenancePolicy(**policy))  # type: ignore[arg-type]


# -- blobs ---------------------------------------------------------------------------------------


def test_orphan_blobs_removed_referenced_kept(db: Database, coll: Collection) -> None:
    kept = db.blobs.put(b"current photo")
    conflicting = db.blobs.put(b"photo on a conflicting branch")
    replaced = db.blobs.put(b"old photo")
    orphan = db.blobs.put(b"never referenced")
    doc = coll.save_document("cam", {"photo": blob_ref(replaced, 9)})
    coll.save_document("cam", {"photo": blob_ref(kept, 13)}, expected_rev=doc.rev_id)
    # A conflicting branch from a peer keeps its own blob.
    body = json.dumps({"photo": blob_ref(conflicting, 29)}).encode()
    coll.insert_revisions(
        [IncomingRevision("cam", make_rev(doc.rev_id, False, body), [doc.rev_id], False, body)]
    )
    assert coll.is_conflicted("cam")
    # Legacy _attachments are references too.
    legacy = db.blobs.put(b"legacy attachment")
    coll.save_document("old", {"_attachments": {"a.txt": {"digest": legacy, "length": 17}}})
    age_all_blobs(db)

    result = compact(db)

    assert set(db.blobs.digests()) == {kept, conflicting, legacy}
    assert result.blobs_removed == 2
    assert result.blob_bytes_removed == len(b"old photo") + len(b"never referenced")
    assert not db.blobs.has(orphan) and not db.blobs.has(replaced)
    assert db.perform_maintenance(CHECK).ok


def test_young_orphan_survives_the_grace_period(db: Database) -> None:
    young = db.blobs.put(b"just arrived, revision not committed yet")
    result = compact(db, blob_grace=3600)
    assert db.blobs.has(young) and result.blobs_removed == 0
    age(db.blobs.path_for(young), 7200)
    compact(db, blob_grace=3600)
    assert not db.blobs.has(young)


def test_claim_protects_an_existing_orphan_for_an_incoming_revision(
    db: Database, coll: Collection
) -> None:
    """A peer sends a revision referencing a blob that is already stored but orphaned: the
    puller claims it instead of fetching it; GC in between must not remove it."""
    digest = db.blobs.put(b"photo the phone already sent once")
    age_all_blobs(db)
    assert db.blobs.claim(digest)  # what the puller does when it sees the blob is here
    compact(db)  # runs between the claim and the commit
    body = json.dumps({"photo": blob_ref(digest, 33)}).encode()
    [result] = coll.insert_revisions(
        [IncomingRevision("p", make_rev(None, False, body), [], False, body)]
    )
    assert result.ok and db.blobs.has(digest)
    assert db.perform_maintenance(CHECK).ok


def test_claim_racing_the_collectors_rename_wins(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worst interleaving: the collector saw an old mtime, then the claim lands just before
    its rename. The re-check after the rename must put the blob back."""
    digest = db.blobs.put(b"contested")
    age_all_blobs(db)
    real_rename = os.rename
    claimed: list[bool] = []

    def rename_after_claim(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        claimed.append(db.blobs.claim(digest))
        real_rename(src, dst)

    monkeypatch.setattr(blobs_module.os, "rename", rename_after_claim)
    compact(db)
    assert claimed == [True]
    assert db.blobs.has(digest) and db.blobs.read(digest) == b"contested"


def test_claim_after_removal_reports_missing(db: Database) -> None:
    digest = db.blobs.put(b"gone")
    age_all_blobs(db)
    compact(db)
    assert not db.blobs.claim(digest)  # so the puller fetches it again


def test_gc_and_incoming_revisions_race_in_threads(db: Database, coll: Collection) -> None:
    """Two threads: one keeps compacting, the other keeps receiving revisions whose blobs are
    either freshly written or already-stored orphans (claimed). No committed revision may ever
    reference a missing blob."""
    old_orphans = [db.blobs.put(f"orphan {i}".encode()) for i in range(40)]
    age_all_blobs(db)
    stop = threading.Event()
    errors: list[BaseException] = []

    def compactor() -> None:
        try:
            while not stop.is_set():
                compact(db, vacuum=False, blob_grace=1.0)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=compactor)
    thread.start()
    try:
        for i in range(120):
            if i % 2:
                digest = old_orphans[i % len(old_orphans)]
                if not db.blobs.claim(digest):
                    digest = db.blobs.put(f"orphan {i % len(old_orphans)}".encode())
            else:
                digest = db.blobs.put(f"fresh {i}".encode())
            body = json.dumps({"photo": blob_ref(digest, 1)}).encode()
            doc_id = f"d{i % 7}"
            current = coll.get_revision(doc_id)
            parent = current.rev_id if current else None
            rev = make_rev(parent, False, body)
            [result] = coll.insert_revisions(
                [IncomingRevision(doc_id, rev, [parent] if parent else [], False, body)]
            )
            assert result.ok
            assert db.blobs.has(digest), f"blob of {doc_id} {rev} was collected"
    finally:
        stop.set()
        thread.join()
    assert not errors
    result = db.perform_maintenance(CHECK)
    assert result.ok, result.problems


# -- bodies ----------------------------------------------------------------------------------------


def test_bodies_kept_for_deltas_and_conflicts_others_dropped(
    db: Database, coll: Collection
) -> None:
    revs = []
    for n in range(3):
        revs.append(coll.save_document("doc", {"n": n}).rev_id)
    # Conflict closed by resolution: the losing leaf's body is no longer needed afterwards.
    loser_body = json.dumps({"n": "loser"}).encode()
    loser = make_rev(revs[0], False, loser_body)
    coll.insert_revisions([IncomingRevision("doc", loser, [revs[0]], False, loser_body)])
    coll.resolve_conflict("doc", winning_rev=revs[-1], losing_rev=loser)
    gone = coll.save_document("gone", {"v": 1}).rev_id
    coll.delete_document("gone")

    result = compact(db)

    assert coll.get_revision("doc", loser).body is None  # ancestor of a tombstone leaf
    assert coll.get_revision("gone", gone).body is None  # deleted document's history
    for rev_id in revs:  # ancestors of the live leaf within 5 generations: delta sources
        assert coll.get_revision("doc", rev_id).body is not None
    assert result.bodies_dropped == 2
    assert compact(db).bodies_dropped == 0  # nothing needless rewritten the second time


def test_compaction_keeps_the_delta_window_of_live_leaves(tmp_path: Path) -> None:
    with Database.open(tmp_path / "db", keep_body_generations=2) as db:
        coll = db.default_collection
        revs = [coll.save_document("d", {"n": n}).rev_id for n in range(6)]
        side_body = json.dumps({"side": 1}).encode()
        side = make_rev(revs[3], False, side_body)  # a live conflicting leaf on generation 4
        coll.insert_revisions([IncomingRevision("d", side, [revs[3]], False, side_body)])
        compact(db)
        kept = [r for r in [*revs, side] if coll.get_revision("d", r).body is not None]
        assert kept == [revs[3], revs[4], revs[5], side]


# -- tombstones ---------------------------------------------------------------------------------


def _delete_docs(coll: Collection, count: int, prefix: str) -> None:
    for i in range(count):
        coll.save_document(f"{prefix}{i}", {"i": i})
        coll.delete_document(f"{prefix}{i}")


def test_tombstones_purged_after_interval_when_every_peer_saw_them(
    db: Database, coll: Collection
) -> None:
    clock = Clock()
    policy = {"tombstone_purge_interval": 7 * DAY, "clock": clock}
    _delete_docs(coll, 3, "old")
    db.set_checkpoint("cp-phone", json.dumps({"remote": coll.last_sequence}).encode(), None)
    compact(db, **policy)  # first sample of the sequence clock
    assert coll.count(include_deleted=True) == 3  # too young
    clock.now += 8 * DAY
    _delete_docs(coll, 2, "new")  # deleted after the sample: younger than the interval
    result = compact(db, **policy)
    assert result.tombstones_purged == 3
    assert coll.get_revision("old0") is None and coll.get_revision("new0") is not None


def test_lagging_phone_holds_tombstones_back_until_it_syncs(db: Database, coll: Collection) -> None:
    clock = Clock()
    policy = {"tombstone_purge_interval": DAY, "peer_retention": 90 * DAY, "clock": clock}
    coll.save_document("x", {"v": 1})
    lag_rev = db.set_checkpoint(
        "cp-lagging", json.dumps({"remote": coll.last_sequence}).encode(), None
    )
    db.set_checkpoint("cp-pushonly", json.dumps({"local": 999}).encode(), None)  # never pulls
    coll.delete_document("x")
    compact(db, **policy)
    clock.now += 30 * DAY
    result = compact(db, **policy)
    assert result.tombstones_purged == 0 and result.tombstones_held == 1
    assert coll.changes_since(0)[0].deleted  # the phone will still get the deletion
    db.set_checkpoint("cp-lagging", json.dumps({"remote": coll.last_sequence}).encode(), lag_rev)
    assert compact(db, **policy).tombstones_purged == 1


def test_active_replicator_checkpoint_holds_tombstones_until_pushed(
    db: Database, coll: Collection
) -> None:
    clock = Clock()
    policy = {"tombstone_purge_interval": DAY, "clock": clock}
    coll.save_document("x", {"v": 1})
    db.set_local("checkpoint/cp-up", json.dumps({"local": coll.last_sequence}).encode())
    coll.delete_document("x")
    compact(db, **policy)
    clock.now += 2 * DAY
    assert compact(db, **policy).tombstones_purged == 0
    db.set_local("checkpoint/cp-up", json.dumps({"local": coll.last_sequence}).encode())
    assert compact(db, **policy).tombstones_purged == 1


def test_peer_gone_longer_than_retention_stops_holding(db: Database, coll: Collection) -> None:
    clock = Clock()
    policy = {"tombstone_purge_interval": DAY, "peer_retention": 10 * DAY, "clock": clock}
    db.set_checkpoint("cp-gone", json.dumps({"remote": 0}).encode(), None)
    _delete_docs(coll, 1, "t")
    compact(db, **policy)
    clock.now += 5 * DAY
    assert compact(db, **policy).tombstones_purged == 0
    clock.now += 6 * DAY  # checkpoint unchanged for 11 days
    assert compact(db, **policy).tombstones_purged == 1


# -- space ----------------------------------------------------------------------------------------


def test_compaction_gives_pages_back(db: Database, coll: Collection) -> None:
    for i in range(300):
        coll.save_document(f"d{i}", {"payload": "x" * 4000})
    big = maintenance.sqlite_bytes(db.path)
    for i in range(300):
        coll.purge(f"d{i}")
    result = compact(db)
    assert result.vacuum.startswith("incremental")
    assert maintenance.sqlite_bytes(db.path) < big / 4


def test_full_vacuum_skipped_without_free_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Database.open(tmp_path / "db") as db:
        with db.engine.locked() as conn:  # an old file, created without auto_vacuum
            conn.execute("PRAGMA auto_vacuum=NONE")
            conn.execute("VACUUM")
        monkeypatch.setattr(maintenance, "free_bytes", lambda _path: 1000)
        result = compact(db)
        assert result.vacuum.startswith("skipped")
        monkeypatch.undo()
        assert compact(db).vacuum == "full"
        assert db.engine.query("PRAGMA auto_vacuum")[0][0] == 2  # converted once
        # The copy went to a file; savepoint journals are back in memory (2 = MEMORY).
        with db.engine.locked() as conn:
            assert conn.execute("PRAGMA temp_store").fetchone()[0] == 2


def test_compaction_inside_a_write_leaves_the_write_to_its_owner(
    db: Database, coll: Collection
) -> None:
    for i in range(50):
        coll.save_document(f"d{i}", {"payload": "x" * 4000})
    for i in range(50):
        coll.purge(f"d{i}")
    with pytest.raises(RuntimeError, match="undo"), db.engine.write():
        coll.save_document("half-done", {"v": 1})
        result = compact(db)  # e.g. from an application callback inside its transaction
        assert result.vacuum.startswith("skipped")
        raise RuntimeError("undo")  # the caller's write must still be undoable
    assert coll.get_document("half-done") is None
    assert compact(db).vacuum.startswith("incremental")


def test_last_result_is_recorded(db: Database) -> None:
    assert db.last_maintenance() is None
    compact(db)
    last = db.last_maintenance()
    assert last is not None and last.kind == "compact" and last.ok
    for kind in (MaintenanceType.REINDEX, MaintenanceType.OPTIMIZE, MaintenanceType.FULL_OPTIMIZE):
        assert db.perform_maintenance(kind).ok
    assert db.last_maintenance().kind == "full_optimize"


# -- integrity -------------------------------------------------------------------------------------


def test_integrity_check_finds_a_corrupted_blob(db: Database, coll: Collection) -> None:
    digest = db.blobs.put(b"A" * 5000)
    coll.save_document("p", {"photo": blob_ref(digest, 5000)})
    assert db.perform_maintenance(CHECK).ok
    path = db.blobs.path_for(digest)
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01  # one bit flipped on the card
    path.write_bytes(bytes(data))
    result = db.perform_maintenance(CHECK)
    assert not result.ok
    assert any(digest in p and "corrupt" in p for p in result.problems)


def test_integrity_check_finds_a_missing_referenced_blob(db: Database, coll: Collection) -> None:
    digest = db.blobs.put(b"B" * 10)
    coll.save_document("p", {"photo": blob_ref(digest, 10)})
    db.blobs.path_for(digest).unlink()
    result = db.perform_maintenance(CHECK)
    assert any("missing" in p for p in result.problems)


def test_integrity_check_finds_broken_rev_trees(db: Database, coll: Collection) -> None:
    first = coll.save_document("a", {"v": 1}).rev_id
    coll.save_document("a", {"v": 2})
    coll.save_document("b", {"v": 1})
    coll.save_document("c", {"v": 1})
    with db.engine.write() as conn:
        # a: a revision pointing at a parent that does not exist
        conn.execute(
            "UPDATE revs SET parent = '1-dead' WHERE rev_id != ? AND parent = ?", (first, first)
        )
        # b: the document row names a revision that is not the winner
        conn.execute("UPDATE docs SET rev_id = '9-beef' WHERE doc_id = 'b'")
        # c: the current revision lost its body
        conn.execute(
            "UPDATE revs SET body = NULL WHERE doc = (SELECT id FROM docs WHERE doc_id = 'c')"
        )
    problems = db.perform_maintenance(CHECK).problems
    assert any("'a'" in p and "not in the tree" in p for p in problems)
    assert any("'b'" in p and "winner" in p for p in problems)
    assert any("'c'" in p and "no body" in p for p in problems)


# -- purge and expiration ------------------------------------------------------------------------


def test_purge_leaves_no_tombstone(db: Database, coll: Collection) -> None:
    coll.save_document("p", {"v": 1})
    since = coll.last_sequence
    assert coll.purge("p") and not coll.purge("p")
    assert coll.get_revision("p") is None
    assert coll.changes_since(since) == []  # nothing for the replicator to send
    assert coll.changes_since(0) == []


def test_expiration_set_get_clear(coll: Collection) -> None:
    with pytest.raises(NotFoundError):
        coll.set_document_expiration("nope", 10.0)
    coll.save_document("e", {"v": 1})
    assert coll.get_document_expiration("e") is None
    coll.set_document_expiration("e", 1234.5)
    assert coll.get_document_expiration("e") == 1234.5
    coll.set_document_expiration("e", None)
    assert coll.get_document_expiration("e") is None
    coll.set_document_expiration("e", 99.0)
    coll.purge("e")
    coll.save_document("e", {"v": "new life"})
    assert coll.get_document_expiration("e") is None  # a purge forgets the expiration


def test_schema_upgrade_from_version_1(v1_database: Path) -> None:
    """A database written before expiration existed (by the schema-1 code, conftest fixture)
    opens, upgrades in its own step, and keeps its documents."""
    with Database.open(v1_database) as db:
        assert db.engine.query("PRAGMA user_version")[0][0] >= 2
        db.default_collection.set_document_expiration("doc-1", 5.0)
        assert db.default_collection.get_document("doc-1") is not None


def test_purge_forgets_what_phones_showed_of_the_document(coll: Collection) -> None:
    doc = coll.save_document("p", {"v": 1})
    coll.set_peer_legacy("p", "phone-1", doc.rev_id)
    assert coll.get_peer_legacy("p", "phone-1") == doc.rev_id
    coll.purge("p")
    coll.save_document("p", {"v": "new life"})
    assert coll.get_peer_legacy("p", "phone-1") is None
