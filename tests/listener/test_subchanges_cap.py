"""Issue 11, row 8: one subChanges feed per collection per connection (as Sync Gateway)."""

from __future__ import annotations

import asyncio

import pytest
from tests.listener.raw_blip import RawClient

from fieldsync.listener import URLEndpointListener
from fieldsync.store import Database


@pytest.fixture
def served(
    served: tuple[URLEndpointListener, Database],
) -> tuple[URLEndpointListener, Database]:
    """conftest's listener, its database holding 20 documents."""
    _, db = served
    with db.transaction():
        for i in range(20):
            db.default_collection.save_document(f"d{i}", {"i": i})
    return served


async def test_300_subchanges_on_one_connection_open_one_feed(served) -> None:
    """A peer that asks 300 times and never answers a `changes`: one feed, 299 refusals, and
    the device sends one feed's worth of `changes`, not 300."""
    listener, _ = served
    async with RawClient(listener) as session:
        changes_seen = 0

        def on_changes(request) -> None:
            nonlocal changes_seen
            changes_seen += 1  # never answered

        session.register("changes", on_changes)
        futures = [
            session.send_nowait("subChanges", {"continuous": "true", "batch": "5"})
            for _ in range(300)
        ]
        replies = await asyncio.wait_for(asyncio.gather(*futures), 30)
        accepted = [r for r in replies if not r.is_error]
        refused = [r for r in replies if r.is_error]
        assert len(accepted) == 1
        assert {(r.error_domain, r.error_code) for r in refused} == {("HTTP", 409)}
        await asyncio.sleep(0.3)
        assert changes_seen <= 5  # LiteCore's kMaxChangeListsInFlight for one feed
    # another connection can open its own feed of the same collection
    async with RawClient(listener) as other:
        other.register("changes", lambda request: request.respond({}, b"[]"))
        reply = await other.request("subChanges", {})
        assert reply is not None and not reply.is_error


async def test_a_finished_one_shot_feed_can_be_asked_again(served) -> None:
    listener, _ = served
    async with RawClient(listener) as session:
        done = asyncio.Event()

        def on_changes(request) -> None:
            if request.json():
                request.respond({}, b"[]")
            else:
                done.set()  # the caught-up (empty) list ends a one-shot feed

        session.register("changes", on_changes)
        first = await session.request("subChanges", {})
        assert first is not None and not first.is_error
        await asyncio.wait_for(done.wait(), 10)
        await asyncio.sleep(0.1)
        again = await session.request("subChanges", {})
        assert again is not None and not again.is_error
