"""Upgrading a database written by the schema-1 code (commit 95bb12e) in place: nothing lost,
documents keep their legacy revIDs, and a SIGKILL at any statement of the upgrade leaves a file
that opens and finishes the upgrade with every document intact."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fieldsync.store import Database
from fieldsync.store.paths import DATABASE_FILE
from fieldsync.store.schema import SCHEMA_VERSION
from fieldsync.store.versions import Version

vv_version = Version.parse

#: The data the old code wrote, table by table (only the columns schema 1 had).
_OLD_TABLES = {
    "collections": "id, scope, name, last_sequence",
    "docs": "id, collection, doc_id, sequence, rev_id, deleted, body_size",
    "revs": "id, doc, rev_id, parent, deleted, sequence, body",
    "checkpoints": "client_id, rev, body",
    "local_values": "key, value",
}


def snapshot(db_dir: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(db_dir / DATABASE_FILE)
    try:
        return {
            table: conn.execute(f"SELECT {columns} FROM {table} ORDER BY 1, 2").fetchall()
            for table, columns in _OLD_TABLES.items()
        }
    finally:
        conn.close()


def user_version(db_dir: Path) -> int:
    conn = sqlite3.connect(db_dir / DATABASE_FILE)
    try:
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        return version
    finally:
        conn.close()


def test_upgrade_keeps_everything_and_legacy_revids(v1_database: Path) -> None:
    before = snapshot(v1_database)
    assert user_version(v1_database) == 1 and before["docs"]
    with Database.open(v1_database) as db:
        source = db.source_id
        coll = db.default_collection
        for doc_id, rev_id, deleted in [(row[2], row[4], row[5]) for row in before["docs"]]:
            state = coll.get_versions(doc_id) or db.collection("site.things").get_versions(doc_id)
            assert state is not None
            assert (state.rev_id, state.deleted, state.hlv) == (rev_id, bool(deleted), None)
        assert coll.is_conflicted("doc-0")
        assert db.get_checkpoint("cp-abc") == (b'{"local":7}', "1-cc")
        assert db.get_local("active-checkpoint") == b'{"remote":3}'
    assert snapshot(v1_database) == before
    assert user_version(v1_database) == SCHEMA_VERSION
    with Database.open(v1_database) as db:
        assert db.source_id == source  # made once, by the upgrade


_CRASHER = textwrap.dedent(
    """
    import os, signal, sqlite3, sys
    kill_at = int(sys.argv[2])
    seen = 0
    real_connect = sqlite3.connect

    def connect(*args, **kwargs):
        conn = real_connect(*args, **kwargs)

        def trace(statement):
            global seen
            seen += 1
            if seen == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

        conn.set_trace_callback(trace)
        return conn

    sqlite3.connect = connect
    from fieldsync.store import Database
    Database.open(sys.argv[1]).close()
    print("finished", seen)
    """
)


def test_sigkill_at_every_statement_of_the_upgrade_loses_nothing(
    tmp_path: Path, build_v1: Callable[[Path], Path]
) -> None:
    """Kill the upgrading process before each SQL statement in turn (the last runs are the
    commits), then check the file: old data intact at whatever version it reached, and the next
    open completes the upgrade."""
    reference = snapshot(build_v1(tmp_path / "reference"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    kill_at = 1
    finished = False
    versions_seen = set()
    while not finished:
        assert kill_at < 200, "the upgrade never finished"
        db_dir = build_v1(tmp_path / f"crash{kill_at}")
        proc = subprocess.run(
            [sys.executable, "-c", _CRASHER, str(db_dir), str(kill_at)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode == 0:
            assert proc.stdout.startswith("finished"), proc.stdout
            finished = True
        else:
            assert proc.returncode == -signal.SIGKILL, proc.stderr
        versions_seen.add(user_version(db_dir))
        assert snapshot(db_dir) == reference, f"data changed when killed at statement {kill_at}"
        with Database.open(db_dir) as db:
            assert db.source_id.text
            doc = db.default_collection.get_document("doc-2")
            assert doc is not None and doc.version is None
            saved = db.default_collection.save_document("doc-2", {"after": kill_at})
            assert saved.version is not None
        assert user_version(db_dir) == SCHEMA_VERSION
        kill_at += 1
    # the kills landed before, between and inside the steps
    assert {1, SCHEMA_VERSION} <= versions_seen and len(versions_seen) >= 2
    assert kill_at > 10  # the upgrade has many statements; each one was a crash point


_WRITER = textwrap.dedent(
    """
    import json, sys
    from fieldsync.store import Database, IncomingRevision, revid
    from fieldsync.store.models import IncomingVersioned
    from fieldsync.store import versions as vv
    db = Database.open(sys.argv[1])
    coll = db.default_collection
    phone = "+a694GBERHSnRp2GkS1abw"
    t = 0x18ECB6B01A350000
    i = 0
    while True:
        i += 1
        doc = f"d{i % 7}"
        kind = i % 3
        if kind == 0:
            saved = coll.save_document(doc, {"i": i})
            print("local", doc, saved.rev_id, flush=True)
        elif kind == 1:
            current = coll.get_versions(doc)
            t += 1 << 16
            mine = vv.Version(t, vv.SourceID(phone))
            vector = current.hlv.with_new_cv(mine) if current and current.hlv else vv.HLV(mine)
            legacy = () if current and current.hlv else ((current.rev_id,) if current else ())
            rev = vv.VersionWithLegacy(vector, legacy)
            [r] = coll.insert_versioned([IncomingVersioned(doc, rev, False, b'{"p":1}', "p")])
            print("vv", doc, r.status, r.current_rev, flush=True)
        else:
            current = coll.get_versions(doc)
            parent = current.rev_id if current else None
            body = json.dumps({"old": i}).encode()
            new = revid.make(parent, False, body)
            history = coll.rev_history(doc, parent) if parent else []
            [r] = coll.insert_revisions([IncomingRevision(doc, new, history, False, body, True)])
            print("tree", doc, r.status, new, flush=True)
    """
)


def test_sigkill_during_writes_keeps_tree_and_vector_together(tmp_path: Path) -> None:
    """Kill a process doing device saves, 4.x inserts and 3.x inserts at random moments: every
    acknowledged write is there, and every document's vector is its current revision's."""
    from fieldsync.store.integrity import check_integrity

    db_dir = tmp_path / "db"
    Database.open(db_dir).close()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for delay in (0.0, 0.05, 0.2, 0.5):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(db_dir)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()  # writing has started
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        out = first + out
        assert proc.returncode == -signal.SIGKILL  # killed mid-work, not crashed
        # A line the kill cut short was never acknowledged: keep only whole lines.
        whole = out if out.endswith("\n") else out[: out.rfind("\n") + 1]
        acknowledged = [line.split() for line in whole.splitlines() if line.strip()]
        assert acknowledged
        with Database.open(db_dir) as db:
            assert check_integrity(db)[0] == []
            coll = db.default_collection
            for fields in acknowledged[-7:]:  # the last acknowledged write of each document
                kind, doc = fields[0], fields[1]
                if kind in ("local", "tree") and (kind == "local" or fields[2] == "201"):
                    rev_id = fields[2] if kind == "local" else fields[3]
                    assert coll.get_revision(doc, rev_id, with_body=False) is not None
                elif kind == "vv" and fields[2] == "201":
                    assert coll.has_version(doc, vv_version(fields[3]))
