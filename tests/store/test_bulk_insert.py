"""A pushed batch of brand-new documents is stored in bulk (perf, issue 13): it must leave
exactly what inserting its revisions one at a time leaves, and mixed batches (invalid
revisions, deletions, known documents, histories, a document twice) keep their own results."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fieldsync.store import Database
from fieldsync.store.models import IncomingRevision
from fieldsync.store.paths import DATABASE_FILE
from fieldsync.store.versions import HLV, legacy_version

REV = "1-" + "a" * 40


def batch() -> list[IncomingRevision]:
    revs = [IncomingRevision(f"new-{i:02}", REV, (), False, b'{"n": %d}' % i) for i in range(20)]
    revs += [
        IncomingRevision("known", "2-" + "b" * 40, [REV], False, b'{"v": 2}', True),
        IncomingRevision("twice", REV, (), False, b'{"v": 1}'),
        IncomingRevision("twice", "1-" + "c" * 40, (), False, b'{"v": "other"}'),
        IncomingRevision("gone", REV, (), True, b"{}"),
        IncomingRevision("", REV, (), False, b"{}"),  # invalid doc ID
        IncomingRevision("bad-rev", "one", (), False, b"{}"),
        IncomingRevision("bad-json", REV, (), False, b'{"x": '),
        IncomingRevision("deep", REV, (), False, b'{"a":' * 5000 + b"1" + b"}" * 5000),
        IncomingRevision("from-4x", REV, (), False, b'{"k": 4}', True, True),
        IncomingRevision("with-history", "3-" + "d" * 40, ["2-" + "e" * 40], False, b"{}"),
        IncomingRevision("conflict", "2-" + "f" * 40, ["1-" + "0" * 40], False, b"{}", True),
    ]
    return revs


def seeded(path: Path) -> Database:
    db = Database.open(path)
    coll = db.default_collection
    coll.insert_revisions([IncomingRevision("known", REV, (), False, b'{"v": 1}')])
    coll.insert_revisions([IncomingRevision("conflict", REV, (), False, b'{"v": 1}')])
    return db


def table(db: Database, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db.path / DATABASE_FILE)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def vector_shape(text: object, me: str) -> object:
    """A stored vector with this database's own source ID and times made comparable."""
    if not isinstance(text, str):
        return text
    hlv = HLV.parse(text)
    return "own" if hlv.cv.source.text == me and not hlv.mv and not hlv.pv else text


def contents(db: Database) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    me = db.default_collection._me.text
    docs = table(
        db,
        "SELECT doc_id, rev_id, deleted, body_size, hlv, base_legacy FROM docs ORDER BY doc_id",
    )
    revs = table(
        db,
        "SELECT d.doc_id, r.rev_id, r.parent, r.deleted, r.body, r.hlv "
        "FROM revs r JOIN docs d ON d.id = r.doc ORDER BY d.doc_id, r.rev_id",
    )
    return (
        [(*row[:4], vector_shape(row[4], me), row[5]) for row in docs],
        [(*row[:5], vector_shape(row[5], me)) for row in revs],
    )


def test_bulk_batch_stores_what_one_by_one_does(tmp_path: Path) -> None:
    bulk, single = seeded(tmp_path / "bulk"), seeded(tmp_path / "single")
    try:
        got = bulk.default_collection.insert_revisions(batch())
        want = [single.default_collection.insert_revisions([rev])[0] for rev in batch()]
        assert [(r.status, r.current_rev) for r in got] == [(r.status, r.current_rev) for r in want]
        assert [r.status for r in got[:20]] == [201] * 20
        assert contents(bulk) == contents(single)
        # As many sequences are allocated, and the newest is a document's.
        sequences = [s for (s,) in table(bulk, "SELECT sequence FROM docs")]
        assert bulk.default_collection.last_sequence == single.default_collection.last_sequence
        assert bulk.default_collection.last_sequence == max(sequences)
        # A 4.x phone's legacy revision is named by its RTE version in bulk too.
        versions = bulk.default_collection.get_versions("from-4x")
        assert versions is not None and versions.hlv == HLV(legacy_version(REV))
    finally:
        bulk.close()
        single.close()


def test_bulk_batch_is_durable_and_readable(tmp_path: Path) -> None:
    db = Database.open(tmp_path / "db")
    coll = db.default_collection
    results = coll.insert_revisions(batch()[:20])
    assert {r.status for r in results} == {201}
    db.close()
    db = Database.open(tmp_path / "db")
    try:
        doc = db.default_collection.get_document("new-07")
        assert doc is not None and doc.body == {"n": 7} and doc.rev_id == REV
        assert [c.doc_id for c in db.default_collection.changes_since(0)][:3] == [
            "new-00",
            "new-01",
            "new-02",
        ]
    finally:
        db.close()
