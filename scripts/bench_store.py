"""Benchmark: the document store on a real SQLite file (WAL, synchronous=FULL).

Measures, for 10,000 documents of ~1 KB:
  * save_document in transactions of 100 (and a few single-document commits, one fsync each);
  * insert_revisions of generation-3 revisions with a 2-entry history, batches of 100
    (LiteCore's insertion batch size);
  * the changes feed: one full scan, and pages of 200 as a pull replication reads it;
  * reading each revision back (get_revision with body).
Writes documents/s to a JSON file (default bench/results/store.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sqlite3
import tempfile
import time
from pathlib import Path

from fieldsync.store import Database, IncomingRevision

DOCS = 10_000
BATCH = 100
SINGLE_COMMITS = 200
PAGE = 200


def body_for(i: int) -> dict:
    """A ~1 KB JSON object."""
    return {"type": "reading", "n": i, "sensor": f"s-{i % 37}", "filler": "x" * 940}


def rev(gen: int, i: int, tag: str) -> str:
    return f"{gen}-" + hashlib.sha1(f"{tag}{gen}{i}".encode()).hexdigest()


def bench_save(db: Database) -> dict:
    coll = db.create_collection("saves")
    start = time.perf_counter()
    for first in range(0, DOCS, BATCH):
        with db.transaction():
            for i in range(first, first + BATCH):
                coll.save_document(f"doc-{i:06}", body_for(i))
    batched = DOCS / (time.perf_counter() - start)
    single_coll = db.create_collection("single")
    start = time.perf_counter()
    for i in range(SINGLE_COMMITS):
        single_coll.save_document(f"doc-{i:06}", body_for(i))
    single = SINGLE_COMMITS / (time.perf_counter() - start)
    return {
        "save_document_batched_docs_per_s": round(batched),
        "save_document_single_commit_docs_per_s": round(single),
    }


def bench_insert(db: Database) -> dict:
    coll = db.create_collection("pulled")
    payload = [json.dumps(body_for(i)).encode() for i in range(DOCS)]
    revs = [
        IncomingRevision(
            f"doc-{i:06}", rev(3, i, "p"), [rev(2, i, "p"), rev(1, i, "p")], False, payload[i], True
        )
        for i in range(DOCS)
    ]
    start = time.perf_counter()
    for first in range(0, DOCS, BATCH):
        results = coll.insert_revisions(revs[first : first + BATCH])
        assert all(r.status == 201 for r in results)
    new_docs = DOCS / (time.perf_counter() - start)
    # Second generation on top of existing documents (each needs its tree loaded):
    updates = [
        IncomingRevision(
            f"doc-{i:06}", rev(4, i, "p"), [rev(3, i, "p"), rev(2, i, "p")], False, payload[i], True
        )
        for i in range(DOCS)
    ]
    start = time.perf_counter()
    for first in range(0, DOCS, BATCH):
        results = coll.insert_revisions(updates[first : first + BATCH])
        assert all(r.status == 201 for r in results)
    updated = DOCS / (time.perf_counter() - start)
    return {
        "insert_revisions_new_docs_per_s": round(new_docs),
        "insert_revisions_updates_docs_per_s": round(updated),
    }


def bench_changes(db: Database) -> dict:
    coll = db.get_collection("pulled")
    assert coll is not None
    start = time.perf_counter()
    changes = coll.changes_since(0)
    full = len(changes) / (time.perf_counter() - start)
    assert len(changes) == DOCS
    start = time.perf_counter()
    since, seen = 0, 0
    while page := coll.changes_since(since, limit=PAGE, active_only=True):
        seen += len(page)
        since = page[-1].sequence
    paged = seen / (time.perf_counter() - start)
    start = time.perf_counter()
    for change in changes:
        revision = coll.get_revision(change.doc_id, change.rev_id)
        assert revision is not None and revision.body
        coll.rev_history(change.doc_id, change.rev_id)
    reads = len(changes) / (time.perf_counter() - start)
    return {
        "changes_full_scan_docs_per_s": round(full),
        "changes_paged_200_docs_per_s": round(paged),
        "get_revision_and_history_docs_per_s": round(reads),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench/results/store.json", help="result file")
    parser.add_argument("--dir", default=None, help="where to create the scratch database")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-store-") as scratch:
        db = Database.open(Path(scratch) / "bench")
        try:
            results = {"documents": DOCS, "body_bytes": len(json.dumps(body_for(0)))}
            results.update(bench_save(db))
            results.update(bench_insert(db))
            results.update(bench_changes(db))
            results["disk_bytes"] = db.disk_size()
        finally:
            db.close()
    results["python"] = platform.python_version()
    results["sqlite"] = sqlite3.sqlite_version
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
