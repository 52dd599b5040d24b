"""Issue 11, row 9: clients editing the same documents converge. The active replicator resolves
the conflicts it pulls as Couchbase Lite's default resolver does (deletion wins, then higher
generation, then higher revID) or with a custom ConflictResolver; afterwards every client and
the device hold the same winners and no open conflicts. (The full 20 clients: scripts/
converge_clients.py.)"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

from fieldsync.replicator import Replicator, ReplicatorConfiguration, ReplicatorType
from fieldsync.store import Database

BOTH = ReplicatorType.PUSH_AND_PULL


def side(rev_id: str, deleted: bool = False, **body: Any) -> Any:
    from fieldsync.replication.conflicts import ConflictingRevision

    return ConflictingRevision("d", rev_id, deleted, dict(body))


def test_default_resolver_rules() -> None:
    from fieldsync.replication.conflicts import Conflict, DefaultConflictResolver, decide

    resolve = DefaultConflictResolver().resolve
    a2, b2, c3 = side("2-aa", v=1), side("2-bb", v=2), side("3-cc", v=3)
    assert resolve(Conflict("d", c3, a2)) is c3  # higher generation
    assert resolve(Conflict("d", a2, c3)) is c3
    assert resolve(Conflict("d", a2, b2)) is b2  # then higher revID
    assert resolve(Conflict("d", b2, a2)) is b2
    gone = side("2-00", deleted=True)
    assert resolve(Conflict("d", c3, gone)) is gone  # deletion wins over anything
    assert resolve(Conflict("d", gone, c3)) is gone
    # Outcomes sit on top of the remote revision.
    assert decide(Conflict("d", a2, b2), b2).keep_remote
    local_wins = decide(Conflict("d", c3, a2), c3)
    assert not local_wins.keep_remote and local_wins.body == {"v": 3}
    assert decide(Conflict("d", gone, c3), gone).delete
    assert decide(Conflict("d", a2, b2), {"merged": True}).body == {"merged": True}


def state(db: Database) -> dict[str, tuple[str, Any]]:
    """Each document's winner: its revID and body, or for a deletion its tombstone's revID
    (the tombstones that close losing branches never outrank it, as in LiteCore)."""
    coll = db.default_collection
    result: dict[str, tuple[str, Any]] = {}
    for change in coll.changes_since(0):
        doc = coll.get_document(change.doc_id)
        if doc is not None:
            result[change.doc_id] = (doc.rev_id, doc.body)
        else:
            current = coll.get_revision(change.doc_id, with_body=False)
            result[change.doc_id] = ("deleted", current.rev_id if current else None)
    return result


async def sync(db: Database, url: str, **config: Any) -> Any:
    replicator = Replicator(
        ReplicatorConfiguration(database=db, url=url, replicator_type=BOTH, **config)
    )
    return await replicator.run()


async def test_clients_editing_the_same_documents_converge(
    tmp_path: Path, url_of, listener, device_db
) -> None:
    url = url_of(listener)
    rng = random.Random(11)
    device = device_db.default_collection
    for i in range(12):
        device.save_document(f"d{i}", {"i": i, "by": "device"})
    clients = [Database.open(tmp_path / f"client{n}", create=True) for n in range(5)]
    try:
        for client in clients:
            await sync(client, url)
        for round_ in range(3):
            for n, client in enumerate(clients):
                coll = client.default_collection
                for i in rng.sample(range(12), 5):
                    doc = coll.get_document(f"d{i}")
                    if doc is None:
                        coll.save_document(f"d{i}", {"i": i, "by": n, "round": round_})
                    elif rng.random() < 0.3:
                        coll.delete_document(f"d{i}")
                    else:
                        coll.save_document(f"d{i}", {**doc.body, "by": n, "round": round_})
            # Everyone syncs at once: concurrent pushes of the same documents.
            await asyncio.gather(*(sync(client, url) for client in clients))
        for _ in range(8):  # settle: sync one by one until nothing moves
            moved = 0
            for client in clients:
                result = await sync(client, url)
                moved += result.docs_pushed + result.docs_pulled
            if not moved:
                break
        assert not moved, "the clients did not settle"
        want = state(device_db)
        for n, client in enumerate(clients):
            assert state(client) == want, f"client {n} disagrees with the device"
            coll = client.default_collection
            assert not [d for d in want if coll.is_conflicted(d)], f"client {n} has conflicts"
        assert not [d for d in want if device.is_conflicted(d)]
    finally:
        for client in clients:
            client.close()


async def test_a_custom_resolver_merges(url_of, listener, device_db, phone_db) -> None:
    class Merge:
        def __init__(self) -> None:
            self.seen: list[str] = []

        def resolve(self, conflict: Any) -> dict[str, Any]:
            self.seen.append(conflict.doc_id)
            return {**conflict.remote.body, **conflict.local.body, "merged": True}

    url = url_of(listener)
    device, phone = device_db.default_collection, phone_db.default_collection
    phone.save_document("shared", {"v": 0})
    await sync(phone_db, url)
    base = phone.get_document("shared").rev_id
    device.save_document("shared", {"v": "device", "d": 1}, expected_rev=base)
    phone.save_document("shared", {"v": "phone", "p": 1}, expected_rev=base)
    merge = Merge()
    await sync(phone_db, url, conflict_resolver=merge)
    assert merge.seen == ["shared"]
    assert not phone.is_conflicted("shared")
    await sync(phone_db, url, conflict_resolver=merge)
    expected = {"v": "phone", "d": 1, "p": 1, "merged": True}
    assert phone.get_document("shared").body == expected
    assert device.get_document("shared").body == expected
