"""Several processes on one database: change notification across processes, and durability of
acknowledged revisions when the writer is killed with SIGKILL in the middle of its batches."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from fieldsync.store import Database

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"


def run_python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(FIRMWARE), PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


OTHER_PROCESS_WRITER = """
    import sys
    from fieldsync.store import Database
    with Database.open(sys.argv[1]) as db:
        db.default_collection.save_document("from-child", {"pid": "child"})
        db.default_collection.save_document("from-child-2", {"pid": "child"})
        db.create_collection("sensors", "field").save_document("t1", {"c": 21.5})
    print("done")
"""


def test_poll_changes_sees_commits_of_another_process(tmp_path):
    path = tmp_path / "shared"
    with Database.open(path) as db:
        calls: list[tuple[str, int]] = []
        db.add_change_listener(lambda c, s: calls.append((c.full_name, s)))
        assert db.poll_changes() is False

        child = run_python(OTHER_PROCESS_WRITER, str(path))
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        assert out.strip() == "done"

        assert db.poll_changes() is True
        assert sorted(calls) == [("_default._default", 2), ("field.sensors", 1)]
        assert db.default_collection.get_document("from-child").body == {"pid": "child"}
        assert db.get_collection("sensors", "field").get_document("t1").body == {"c": 21.5}
        # Nothing new: a second poll reports nothing.
        assert db.poll_changes() is False
        assert len(calls) == 2


KILLED_WRITER = """
    import sys
    from fieldsync.store import Database, IncomingRevision

    PER_BATCH = 25
    body = ('{"payload":"' + "x" * 2000 + '"}').encode()

    def rev(gen, batch, i):
        return f"{gen}-{batch:08x}{i:08x}" + "0" * 24

    with Database.open(sys.argv[1]) as db:
        coll = db.default_collection
        batch = 0
        while True:
            revs = [IncomingRevision(f"b{batch}-{i}", rev(1, batch, i), [], False, body)
                    for i in range(PER_BATCH)]
            if batch:
                # ...and a second generation of every document of the previous batch:
                revs += [IncomingRevision(f"b{batch - 1}-{i}", rev(2, batch - 1, i),
                                          [rev(1, batch - 1, i)], False, body, True)
                         for i in range(PER_BATCH)]
            results = coll.insert_revisions(revs)
            assert all(r.status == 201 for r in results), results
            for r in revs:
                print(r.doc_id, r.rev_id, flush=True)
            batch += 1
"""


def test_acknowledged_revisions_survive_sigkill_and_batches_are_atomic(tmp_path):
    per_batch = 25
    for attempt, kill_after in enumerate((30, 197, 513)):
        path = tmp_path / f"db{attempt}"
        writer = run_python(KILLED_WRITER, str(path))
        acked: dict[str, str] = {}
        assert writer.stdout is not None
        for line in writer.stdout:
            doc_id, rev_id = line.split()
            acked[doc_id] = rev_id  # later lines are newer generations
            if len(acked) >= kill_after:
                break
        writer.send_signal(signal.SIGKILL)
        rest, err = writer.communicate(timeout=60)
        assert writer.returncode == -signal.SIGKILL, err
        for line in rest.splitlines():  # acknowledged before the kill, read after it
            if len(line.split()) == 2:
                doc_id, rev_id = line.split()
                acked[doc_id] = rev_id

        with Database.open(path, create=False) as db:
            coll = db.default_collection
            for doc_id, rev_id in acked.items():
                revision = coll.get_revision(doc_id, rev_id)
                assert revision is not None, f"acknowledged {doc_id} {rev_id} lost"
                assert revision.body is not None and len(revision.body) > 2000
            # No half-written batch: batch b adds generation 1 of its documents and generation 2
            # of batch b-1's, all or nothing.
            present = {c.doc_id: c.rev_id for c in coll.changes_since(0)}
            batches = {int(doc_id[1:].split("-")[0]) for doc_id in present}
            last = max(batches)
            assert batches == set(range(last + 1))
            for b in range(last + 1):
                members = [present.get(f"b{b}-{i}") for i in range(per_batch)]
                assert all(members), f"batch {b} only partly present"
                generations = {int(r.split("-")[0]) for r in members}
                expected_gen = 2 if b < last else 1
                assert generations == {expected_gen}, f"batch {b}: generations {generations}"
            assert coll.count() == (last + 1) * per_batch


CONCURRENT_WRITER = """
    import sys
    from fieldsync.store import Database
    name = sys.argv[2]
    with Database.open(sys.argv[1]) as db:
        coll = db.default_collection
        for batch in range(10):
            with db.transaction():
                for n in range(10):
                    coll.save_document(f"{name}-{batch}-{n}", {"by": name})
    print("done")
"""


def test_two_processes_write_concurrently(tmp_path):
    path = tmp_path / "shared"
    Database.open(path).close()
    writers = [run_python(CONCURRENT_WRITER, str(path), name) for name in ("p1", "p2")]
    for writer in writers:
        out, err = writer.communicate(timeout=60)
        assert writer.returncode == 0 and out.strip() == "done", err
    with Database.open(path) as db:
        changes = db.default_collection.changes_since(0)
        assert [c.sequence for c in changes] == list(range(1, 201))
        assert {c.doc_id.split("-")[0] for c in changes} == {"p1", "p2"}
