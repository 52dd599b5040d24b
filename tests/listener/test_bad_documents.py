"""Issue 11, row 4: JSON nested absurdly deep gets 400 for that message only, and one bad
document in an insert batch fails alone (each revision has its own savepoint)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from tests.listener.raw_blip import RawClient

from fieldsync.store import Database, IncomingRevision


def nested(depth: int) -> bytes:
    return b'{"a":' + b"[" * depth + b"]" * depth + b"}"


def rev_id(n: int) -> str:
    return f"1-{n:040x}"


@pytest.mark.parametrize(
    ("profile", "properties"),
    [
        ("rev", {"id": "deep", "rev": "1-" + "a" * 40}),
        ("proposeChanges", {}),
        ("changes", {}),
        ("subChanges", {}),
        ("getCollections", {}),
        ("setCheckpoint", {"client": "deep"}),
    ],
)
async def test_json_nested_100000_deep_is_400_and_the_connection_survives(
    served, profile: str, properties: dict[str, str]
) -> None:
    listener, db = served
    async with RawClient(listener) as session:
        reply = await session.request(profile, properties, b"[" * 100_000 + b"]" * 100_000)
        assert reply is not None and reply.is_error
        assert reply.error_code == 400, (reply.error_domain, reply.error_code, reply.body)
        alive = await session.request("getCheckpoint", {"client": "still-here"})
        assert alive is not None and alive.error_code == 404
    assert db.default_collection.get_document("deep") is None


async def test_one_deep_document_fails_alone_in_its_batch(served) -> None:
    """99 good revisions and one nested ~900 deep, sent together (one insert batch): the good
    ones are stored, the deep one gets 400."""
    listener, db = served
    async with RawClient(listener) as session:
        futures = []
        for n in range(100):
            body = nested(900) if n == 50 else json.dumps({"n": n}).encode()
            futures.append(
                session.send_nowait("rev", {"id": f"d{n}", "rev": rev_id(n), "history": ""}, body)
            )
        replies = await asyncio.wait_for(asyncio.gather(*futures), 30)
    errors = {n: r.error_code for n, r in enumerate(replies) if r.is_error}
    assert errors == {50: 400}
    collection = db.default_collection
    assert all(collection.get_document(f"d{n}") is not None for n in range(100) if n != 50)
    assert collection.get_document("d50") is None


def test_a_revision_that_breaks_the_insert_is_undone_alone(tmp_path: Path, monkeypatch) -> None:
    """Whatever goes wrong inside one revision's insert (here: a RecursionError half-way, after
    it has written), its writes are rolled back and the rest of the batch commits."""
    from fieldsync.store import collection as collection_module

    db = Database.open(tmp_path / "db")
    try:
        coll = db.default_collection
        real = collection_module.Collection._save_tree

        def flaky(self, conn, doc_id, *args, **kwargs):
            result = real(self, conn, doc_id, *args, **kwargs)
            if doc_id == "bad":
                raise RecursionError("maximum recursion depth exceeded")
            return result

        monkeypatch.setattr(collection_module.Collection, "_save_tree", flaky)
        # With a history each (so the per-revision path stores them, not the bulk one for
        # brand-new documents, which calls no _save_tree).
        revs = [
            IncomingRevision(name, "2-" + "b" * 40, [rev_id(i)], False, b'{"x":1}')
            for i, name in enumerate(["a", "bad", "c"])
        ]
        results = coll.insert_revisions(revs)
        assert [r.status for r in results] == [201, 400, 201]
        assert coll.get_document("a") is not None and coll.get_document("c") is not None
        assert coll.get_document("bad") is None
    finally:
        db.close()
