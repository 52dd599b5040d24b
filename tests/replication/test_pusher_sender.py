"""A revision queued while the pusher's sender task has just finished its loop (done, its
done-callback not run yet) must still be sent. It used to wait forever: a LiteCore phone's
first pull of a few hundred documents then hung at random, with revisions queued and nothing
in flight (found by tests/interop/test_volume_interop.py about one run in two)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.blip.test_blip_session import TIMEOUT, blip_pair

from fieldsync.blip import BLIPSession, IncomingRequest
from fieldsync.replication.pusher import READ_AHEAD_REVS, Pusher, PushOptions
from fieldsync.replication.stats import ReplicationStats
from fieldsync.store import Collection, Database


def _passive_pusher(session: BLIPSession, collection: Collection) -> Pusher:
    return Pusher(
        session,
        collection,
        None,
        options=PushOptions(),
        stats=ReplicationStats(),
        notifier=None,
        served_blobs=set(),
    )


async def test_revision_queued_as_the_sender_finishes_is_sent(tmp_path: Path) -> None:
    db = Database.open(tmp_path / "db")
    collection = db.default_collection
    collection.save_document("d", {"v": 1})
    received: list[str] = []

    def setup(session: BLIPSession) -> None:
        def rev(request: IncomingRequest) -> None:
            received.append(request.properties["id"])
            request.respond()

        session.register("rev", rev)

    try:
        async with blip_pair(setup) as pair:
            pusher = _passive_pusher(pair.client, collection)
            finished = asyncio.get_running_loop().create_task(asyncio.sleep(0))
            await finished
            pusher._sender = finished  # left its loop; its done-callback is still to run
            (change,) = collection.changes_since(0)
            pusher.tracker.add(change.sequence)
            pusher._queue_rev(change, [], 20, False)
            await asyncio.wait_for(pusher._revs_idle.wait(), TIMEOUT)
        assert received == ["d"]
    finally:
        db.close()


async def test_revisions_are_read_ahead_in_few_queries_and_sent_intact(tmp_path: Path) -> None:
    """The sender reads what it sends READ_AHEAD_REVS at a time; a document purged or
    replaced after it was queued still gets a norev / its queued revision, as one by one."""
    db = Database.open(tmp_path / "db")
    collection = db.default_collection
    for i in range(40):
        collection.save_document(f"d{i:02}", {"i": i, "pad": "x" * 100})
    received: dict[str, tuple[str, bytes]] = {}
    norevs: list[str] = []

    def setup(session: BLIPSession) -> None:
        def rev(request: IncomingRequest) -> None:
            received[request.properties["id"]] = (request.properties["rev"], request.body)
            request.respond()

        def norev(request: IncomingRequest) -> None:
            norevs.append(request.properties["id"])

        session.register("rev", rev)
        session.register("norev", norev)

    queries: list[int] = []
    read = collection.get_revisions

    def counting(wanted):  # type: ignore[no-untyped-def]
        queries.append(len(wanted))
        return read(wanted)

    collection.get_revisions = counting  # type: ignore[method-assign]
    try:
        async with blip_pair(setup) as pair:
            pusher = _passive_pusher(pair.client, collection)
            changes = collection.changes_since(0)
            collection.purge("d03")  # queued, then gone: a norev
            for change in changes:
                pusher.tracker.add(change.sequence)
                pusher._queue_rev(change, [], 20, False)
            await asyncio.wait_for(pusher._revs_idle.wait(), TIMEOUT)
    finally:
        db.close()
    assert queries == [READ_AHEAD_REVS, 40 - READ_AHEAD_REVS]
    assert norevs == ["d03"]
    assert set(received) == {f"d{i:02}" for i in range(40)} - {"d03"}
    for change in changes:
        if change.doc_id != "d03":
            rev_id, body = received[change.doc_id]
            assert rev_id == change.rev_id
            assert json.loads(body) == {"i": int(change.doc_id[1:]), "pad": "x" * 100}
