"""A revision queued while the pusher's sender task has just finished its loop (done, its
done-callback not run yet) must still be sent. It used to wait forever: a LiteCore phone's
first pull of a few hundred documents then hung at random, with revisions queued and nothing
in flight (found by tests/interop/test_volume_interop.py about one run in two)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.blip.test_blip_session import TIMEOUT, blip_pair

from fieldsync.blip import BLIPSession, IncomingRequest
from fieldsync.replication.pusher import Pusher, PushOptions
from fieldsync.replication.stats import ReplicationStats
from fieldsync.store import Database


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
            pusher = Pusher(
                pair.client,
                collection,
                None,
                options=PushOptions(),
                stats=ReplicationStats(),
                notifier=None,
                served_blobs=set(),
            )
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
