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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fieldsync.store import Database
from fieldsync.store.paths import DATABASE_FILE
from fieldsync.store.schema import SCHEMA_VERSION

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
