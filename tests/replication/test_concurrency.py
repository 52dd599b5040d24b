"""Guarantees that must hold with the store writer thread and the engine's reader connection
(issue 13): several phones at once, a server killed with SIGKILL while phones push, and reads
while another process holds SQLite's write lock. No timings are asserted, only outcomes and
orderings."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.listener.raw_blip import RawClient

from fieldsync.replication.checkpoints import CollectionCheckpoint
from fieldsync.replication.sequences import SequenceTracker
from fieldsync.replication.writer import WRITER
from fieldsync.replicator import Replicator, ReplicatorConfiguration, ReplicatorType
from fieldsync.store import Database, IncomingRevision

PUSH, PULL = ReplicatorType.PUSH, ReplicatorType.PULL
PHONES = 5
OWN = 120
SHARED = 15
FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"


def _replicator(db: Database, url: str, kind: ReplicatorType) -> Replicator:
    return Replicator(ReplicatorConfiguration(database=db, url=url, replicator_type=kind))


async def test_five_phones_at_once_conflicts_once_and_checkpoints_hold(
    url_of, listener, device_db, tmp_path
) -> None:
    await _five_phones(url_of(listener), device_db, tmp_path)


async def test_five_phones_on_two_worker_processes_conflict_once_and_checkpoints_hold(
    tmp_path,
) -> None:
    """The same guarantees with ``fieldsync run --workers 2``: the phones' sessions are spread
    over two processes, each with its own connections to the database."""
    server, port = await _start_server(tmp_path / "device", workers=2)
    try:
        assert len(_children(server.pid)) == 2
        with Database.open(tmp_path / "device", create=False) as device_db:
            await _five_phones(f"ws://127.0.0.1:{port}/device", device_db, tmp_path)
    finally:
        _stop(server)


async def _five_phones(url: str, device_db: Database, tmp_path: Path) -> None:
    phones = [Database.open(tmp_path / f"phone{p}") for p in range(PHONES)]
    try:
        for p, phone in enumerate(phones):
            coll = phone.default_collection
            for i in range(OWN):
                coll.save_document(f"p{p}-{i:04}", {"phone": p, "i": i, "pad": "x" * 200})
            for k in range(SHARED):  # every phone creates the same documents: conflicts
                coll.save_document(f"shared-{k}", {"phone": p, "k": k})

        pushed = await asyncio.gather(*(_replicator(db, url, PUSH).run() for db in phones))
        device = device_db.default_collection
        for p in range(PHONES):
            for i in (0, OWN - 1):
                assert device.get_document(f"p{p}-{i:04}").body["phone"] == p
        for k in range(SHARED):
            doc_id = f"shared-{k}"
            assert device.leaf_revisions(doc_id) == [device.get_document(doc_id).rev_id]
            winner = device.get_document(doc_id).body["phone"]
            # Exactly one phone's revision was stored; every other phone heard of the
            # conflict exactly once, and the winner did not.
            reports = [[d for d, _ in result.conflicts].count(doc_id) for result in pushed]
            assert reports[winner] == 0
            assert sorted(reports) == [0] + [1] * (PHONES - 1), (doc_id, reports)
        assert sum(r.docs_pushed for r in pushed) == PHONES * OWN + SHARED
        assert device.count() == PHONES * OWN + SHARED

        pulled = await asyncio.gather(*(_replicator(db, url, PULL).run() for db in phones))
        for phone, result in zip(phones, pulled, strict=True):
            assert result.errors == 0, result.last_error
            assert phone.default_collection.count() == PHONES * OWN + SHARED

        # The pull resolved each phone's conflicts (issue 11): resolutions where the phone's
        # side won go back to the device and on to the others; then everything is still.
        for _ in range(4):
            moved = 0
            for kind in (PUSH, PULL):
                runs = await asyncio.gather(*(_replicator(db, url, kind).run() for db in phones))
                moved += sum(r.docs_pushed + r.docs_pulled for r in runs)
            if not moved:
                break
        for k in range(SHARED):
            winners = {p.default_collection.get_document(f"shared-{k}").rev_id for p in phones}
            assert winners == {device.get_document(f"shared-{k}").rev_id}
            assert not any(p.default_collection.is_conflicted(f"shared-{k}") for p in phones)

        # Checkpoints: nothing is sent again, either way, even with all phones at once.
        again = await asyncio.gather(
            *(_replicator(db, url, kind).run() for db in phones for kind in (PUSH, PULL))
        )
        assert [r.docs_pushed + r.docs_pulled for r in again] == [0] * (2 * PHONES)
    finally:
        for phone in phones:
            phone.close()


def _rev_id(doc_id: str) -> str:
    return "1-" + hashlib.sha1(doc_id.encode()).hexdigest()


async def _push_raw(port: int, phone: int, acked: list[tuple[str, str]], docs: int) -> None:
    """Send ``rev`` messages without waiting between them; record each acknowledged one."""

    class _Where:
        pass

    where = _Where()
    where.port = port  # type: ignore[attr-defined]
    body = b'{"pad":"' + b"y" * 900 + b'"}'
    async with RawClient(where, database="device", name=f"phone{phone}") as session:
        replies = []
        for i in range(docs):
            doc_id = f"k{phone}-{i:05}"
            future = session.send_nowait(
                "rev", {"id": doc_id, "rev": _rev_id(doc_id), "sequence": str(i + 1)}, body
            )
            assert future is not None
            future.add_done_callback(
                lambda f, d=doc_id: (
                    acked.append((d, _rev_id(d)))
                    if not f.cancelled() and f.exception() is None and not f.result().is_error
                    else None
                )
            )
            replies.append(future)
            if i % 50 == 0:
                await asyncio.sleep(0)
        await asyncio.gather(*replies, return_exceptions=True)


def _spawn_server(db_dir: Path, port: int, workers: int, stderr: int) -> subprocess.Popen[str]:
    """``fieldsync run --no-tls`` in a session of its own (``os.killpg`` reaches its workers)."""
    env = dict(os.environ, PYTHONPATH=str(FIRMWARE), PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "fieldsync", "run", "--db", str(db_dir), "--name", "device"]
    command += ["--port", str(port), "--no-tls", "--workers", str(workers)]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True
    )


async def _start_server(db_dir: Path, workers: int = 1) -> tuple[subprocess.Popen[str], int]:
    """``fieldsync run`` on a port of the OS's choice; returns it and its port once it prints
    its URL."""
    server = _spawn_server(db_dir, 0, workers, subprocess.DEVNULL)
    assert server.stdout is not None
    while True:
        line = await asyncio.to_thread(server.stdout.readline)
        if not line:
            _stop(server)
            raise AssertionError("fieldsync run ended before printing its URL")
        match = re.search(r"ws://\S+:(\d+)/device", line)
        if match:
            # Keep reading its output, so that it never blocks on a full pipe.
            threading.Thread(target=server.stdout.read, daemon=True).start()
            if workers > 1:
                await _until(lambda: len(_children(server.pid)) == workers, "workers started")
            return server, int(match.group(1))


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.05)


def _stop(server: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.add(int(entry.name))
    return found


@pytest.mark.parametrize("workers", [1, 2])
async def test_acknowledged_revisions_survive_sigkill_with_three_phones(
    tmp_path, workers: int
) -> None:
    db_dir = tmp_path / "device"
    server, port = await _start_server(db_dir, workers)
    try:
        acked: list[tuple[str, str]] = []
        pushes = [asyncio.create_task(_push_raw(port, p, acked, 3000)) for p in range(3)]
        while len(acked) < 600 and not all(t.done() for t in pushes):
            await asyncio.sleep(0.005)
        os.killpg(server.pid, signal.SIGKILL)  # the server and every worker at once
        snapshot = list(acked)  # acknowledged before the kill was sent
        await asyncio.gather(*pushes, return_exceptions=True)
        assert server.wait(timeout=30) == -signal.SIGKILL
    finally:
        _stop(server)
    assert len(snapshot) >= 1
    with Database.open(db_dir, create=False) as db:
        coll = db.default_collection
        for doc_id, rev_id in snapshot:
            revision = coll.get_revision(doc_id, rev_id)
            assert revision is not None, f"acknowledged {doc_id} {rev_id} lost"
            assert revision.body is not None and b"yyyy" in revision.body


async def test_a_killed_worker_is_replaced_and_the_others_keep_serving(tmp_path) -> None:
    server, port = await _start_server(tmp_path / "device", workers=2)
    try:
        workers = _children(server.pid)
        assert len(workers) == 2
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        await _until(
            lambda: len(_children(server.pid)) == 2 and victim not in _children(server.pid),
            f"a replacement for worker {victim}",
        )
        acked: list[tuple[str, str]] = []
        await asyncio.gather(*(_push_raw(port, p, acked, 50) for p in range(4)))
        assert len(acked) == 200
        server.send_signal(signal.SIGTERM)  # stops the workers, then itself
        assert server.wait(timeout=30) == 0
        assert not _children(server.pid)
    finally:
        _stop(server)
    with Database.open(tmp_path / "device", create=False) as db:
        assert db.default_collection.count() == 200


async def test_workers_stop_when_their_parent_is_killed(tmp_path) -> None:
    """No unsupervised worker keeps the port: SIGKILL of the parent stops the workers (they
    get SIGTERM and close), and the port can be served again."""
    server, port = await _start_server(tmp_path / "device", workers=2)
    try:
        workers = _children(server.pid)
        os.kill(server.pid, signal.SIGKILL)
        assert server.wait(timeout=30) == -signal.SIGKILL
        await _until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), "exit")
        again = socket.create_server(("127.0.0.1", port))  # free again
        again.close()
    finally:
        _stop(server)


def test_a_worker_that_keeps_failing_at_start_stops_the_server() -> None:
    """Worker 1 ends at once every time: after MAX_EARLY_ENDS tries the supervisor stops the
    healthy worker 0 too and returns 1, instead of restarting forever."""
    script = (
        "import sys, time\n"
        "from fieldsync.listener import prefork\n"
        "prefork.RESTART_DELAY = 0.05\n"
        "def serve(index):\n"
        "    if index == 1:\n"
        "        return 1\n"
        "    time.sleep(600)\n"
        "    return 0\n"
        "sys.exit(prefork.serve_in_workers(2, serve))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(FIRMWARE))
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("starting another") == 4
    assert "5 times in a row right after starting; stopping" in done.stderr


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_second_server_cannot_join_the_port_of_workers(tmp_path, workers: int) -> None:
    """Workers share their port (SO_REUSEPORT); another fieldsync on it, with or without
    workers, is refused as it would be without them, instead of taking some of the phones."""
    server, port = await _start_server(tmp_path / "device", workers=2)
    try:
        second = _spawn_server(tmp_path / "other", port, workers, subprocess.PIPE)
        try:
            out, err = await asyncio.to_thread(second.communicate, timeout=60)
        finally:
            _stop(second)
        assert second.returncode == 1, out + err
        assert "cannot listen" in err
        assert len(_children(server.pid)) == 2 and server.poll() is None
    finally:
        _stop(server)


def test_reads_do_not_wait_for_a_write_stuck_behind_another_process(tmp_path) -> None:
    """Another process holds the write lock; the writer thread's transaction waits for it;
    meanwhile reads (as the event loop makes them) answer from the committed state."""
    with Database.open(tmp_path / "db") as db:
        coll = db.default_collection
        coll.save_document("before", {"n": 1})
        holder = sqlite3.connect(db.path / "db.sqlite3", isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")  # the other process's write lock
            started = threading.Event()

            def write() -> object:
                started.set()
                return coll.insert_revisions(
                    [IncomingRevision("later", _rev_id("later"), [], False, b'{"n":2}')]
                )

            pending = WRITER.submit(write)
            assert started.wait(10)
            while db.engine.lock.acquire(blocking=False):  # until the writer thread holds it
                db.engine.lock.release()
                if pending.done():
                    break
                time.sleep(0.001)
            # These would wait for the lock (up to the busy timeout) without the reader.
            assert coll.get_document("before").body == {"n": 1}
            assert [c.doc_id for c in coll.changes_since(0)] == ["before"]
            assert coll.rev_history("before", coll.get_document("before").rev_id)
            assert not pending.done(), "the write was expected to be waiting for the lock"
            holder.execute("COMMIT")
            assert [r.status for r in pending.result(timeout=30)] == [201]
            assert coll.get_document("later").body == {"n": 2}
        finally:
            holder.close()


async def test_session_answers_while_another_process_holds_the_write_lock(
    listener, device_db
) -> None:
    """A setCheckpoint waits for the lock on the writer thread; meanwhile the same session
    still answers reads (the event loop is not blocked by the store)."""

    class _Where:
        port = listener.port

    device_db.set_checkpoint("other-phone", b'{"seq":1}', None)
    holder = sqlite3.connect(device_db.path / "db.sqlite3", isolation_level=None)
    try:
        async with RawClient(_Where(), database="device") as session:
            holder.execute("BEGIN IMMEDIATE")  # another process's write lock
            pending = session.send_nowait("setCheckpoint", {"client": "phone-a"}, b'{"seq":7}')
            got = await asyncio.wait_for(
                session.request("getCheckpoint", {"client": "other-phone"}), 30
            )
            assert got is not None and not got.is_error, got
            assert got.body == b'{"seq":1}'
            assert pending is not None and not pending.done()  # still waiting for the lock
            holder.execute("COMMIT")
            stored = await asyncio.wait_for(pending, 30)
            assert not stored.is_error, stored
    finally:
        holder.close()
    assert device_db.get_checkpoint("phone-a")[0] == b'{"seq":7}'


async def test_active_checkpoint_save_waits_for_the_lock_off_the_loop(
    listener, device_db, tmp_path
) -> None:
    """The active replicator's checkpoint save writes its local copies on the writer thread:
    while another process holds the local database's write lock, the save waits and the
    event loop keeps running other work; once the lock goes, both copies are stored."""

    class _Where:
        port = listener.port

    local = Database.open(tmp_path / "local")
    checkpoint = CollectionCheckpoint("cp-test")
    checkpoint.push_tracker = SequenceTracker(7)
    checkpoint.remote_revs = {"d": "1-" + "a" * 40}
    holder = sqlite3.connect(local.path / "db.sqlite3", isolation_level=None)
    try:
        async with RawClient(_Where(), database="device") as session:
            holder.execute("BEGIN IMMEDIATE")  # another process's write lock
            save = asyncio.create_task(checkpoint.save(session, local, None))
            ticks = 0
            for _ in range(20):  # the loop is free: these run while the save waits
                await asyncio.sleep(0.01)
                ticks += 1
            assert ticks == 20 and not save.done()
            holder.execute("COMMIT")
            await asyncio.wait_for(save, 30)
    finally:
        holder.close()
    try:
        assert local.get_local(checkpoint.local_key) is not None
        assert local.get_local(checkpoint.remote_revs_key) is not None
        assert device_db.get_checkpoint("cp-test") is not None
    finally:
        local.close()
