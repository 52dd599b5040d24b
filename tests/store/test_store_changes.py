"""Sequences, the changes feed, collections, purge and change listeners (same process)."""

from __future__ import annotations

import threading

import pytest

from fieldsync.store import Collection, Database, IncomingRevision, InvalidInput


def rev(generation: int, digit: str) -> str:
    """A well-formed revID: ``rev(3, "a")`` is ``3-aaaa…`` (40 hex digits)."""
    return f"{generation}-{digit * 40}"


def test_changes_are_in_sequence_order_one_entry_per_document(coll: Collection):
    a1 = coll.save_document("a", {"v": 1})
    coll.save_document("b", {"v": 1})
    coll.save_document("c", {"v": 1})
    a2 = coll.save_document("a", {"v": 2})
    coll.delete_document("b")
    changes = coll.changes_since(0)
    assert [(c.sequence, c.doc_id) for c in changes] == [(3, "c"), (4, "a"), (5, "b")]
    assert changes[1].rev_id == a2.rev_id and a2.rev_id != a1.rev_id
    assert [c.deleted for c in changes] == [False, False, True]
    assert changes[0].body_size == len(b'{"v":1}')
    assert changes[2].body_size == 2  # "{}"
    assert coll.last_sequence == 5


def test_since_limit_doc_ids_and_active_only(coll: Collection):
    for n in range(10):
        coll.save_document(f"d{n}", {"n": n})
    coll.delete_document("d3")
    coll.delete_document("d7")
    assert [c.doc_id for c in coll.changes_since(8)] == ["d8", "d9", "d3", "d7"]
    assert [c.doc_id for c in coll.changes_since(8, active_only=True)] == ["d8", "d9"]
    assert [c.doc_id for c in coll.changes_since(0, limit=3)] == ["d0", "d1", "d2"]
    assert [c.doc_id for c in coll.changes_since(0, limit=3, active_only=True)] == [
        "d0",
        "d1",
        "d2",
    ]
    assert [c.doc_id for c in coll.changes_since(0, limit=3, doc_ids=["d7", "d1", "x"])] == [
        "d1",
        "d7",
    ]
    assert [
        c.doc_id for c in coll.changes_since(0, doc_ids=iter(["d7", "d1"]), active_only=True)
    ] == ["d1"]
    assert coll.changes_since(0, doc_ids=[]) == []
    assert coll.changes_since(0, limit=0) == []
    assert coll.changes_since(coll.last_sequence) == []


def test_large_doc_id_filter(coll: Collection):
    with coll.database.transaction():
        for n in range(300):
            coll.save_document(f"d{n}", {"n": n})
    wanted = [f"d{n}" for n in range(0, 300, 2)] + [f"missing{n}" for n in range(200)]
    changes = coll.changes_since(0, doc_ids=wanted)
    assert [c.doc_id for c in changes] == [f"d{n}" for n in range(0, 300, 2)]


def test_collections_have_their_own_sequences(db: Database):
    things = db.create_collection("things", "field")
    assert db.create_collection("things", "field") is things  # idempotent
    assert things.full_name == "field.things" and things.scope == "field"
    assert db.get_collection("things", "field") is things
    assert db.get_collection("nope") is None
    db.default_collection.save_document("x", {})
    things.save_document("x", {"other": True})
    things.save_document("y", {})
    assert db.default_collection.last_sequence == 1 and things.last_sequence == 2
    assert db.default_collection.get_document("x").body == {}
    assert things.get_document("x").body == {"other": True}
    assert [c.full_name for c in db.collections()] == ["_default._default", "field.things"]
    assert db.collection("field.things") is things
    assert db.collection("things") is None  # a bare name is in the default scope


@pytest.mark.parametrize(
    ("name", "scope"),
    [("", "_default"), ("_x", "_default"), ("a.b", "_default"), ("ok", "%bad"), ("x y", "s")],
)
def test_bad_collection_names(db: Database, name, scope):
    with pytest.raises(InvalidInput):
        db.create_collection(name, scope)


def test_collections_survive_reopen(tmp_path):
    with Database.open(tmp_path / "db") as db:
        db.create_collection("c", "s").save_document("k", {"v": 1})
    with Database.open(tmp_path / "db", create=False) as db:
        coll = db.get_collection("c", "s")
        assert coll.get_document("k").body == {"v": 1} and coll.last_sequence == 1


def test_purge_removes_every_trace(coll: Collection):
    coll.save_document("a", {"v": 1})
    coll.save_document("a", {"v": 2})
    coll.save_document("b", {})
    assert coll.purge_document("a") is True
    assert coll.purge_document("a") is False
    assert coll.get_document("a") is None and coll.get_revision("a") is None
    assert coll.leaf_revisions("a") == [] and coll.count(include_deleted=True) == 1
    assert [c.doc_id for c in coll.changes_since(0)] == ["b"]
    again = coll.save_document("a", {"v": 3})
    assert again.rev_id.startswith("1-")


def test_listener_called_after_each_commit(db: Database, coll: Collection):
    calls: list[tuple[str, int, bool]] = []

    def listener(collection, sequence):
        # Called after commit: the data is already visible.
        doc_seen = collection.changes_since(sequence - 1)[0].sequence == sequence
        calls.append((collection.full_name, sequence, doc_seen))

    token = db.add_change_listener(listener)
    coll.save_document("a", {})
    coll.delete_document("a")
    coll.insert_revisions([IncomingRevision("b", rev(1, "b"), [], False, b"{}")])
    assert calls == [
        ("_default._default", 1, True),
        ("_default._default", 2, True),
        ("_default._default", 3, True),
    ]
    db.remove_change_listener(token)
    coll.save_document("c", {})
    assert len(calls) == 3
    db.remove_change_listener(token)  # removing twice is harmless


def test_transaction_notifies_once_after_commit(db: Database, coll: Collection):
    calls: list[tuple[str, int]] = []
    db.add_change_listener(lambda c, s: calls.append((c.full_name, s)))
    other = db.create_collection("other")
    with db.transaction():
        for n in range(5):
            coll.save_document(f"d{n}", {})
        other.save_document("x", {})
        assert calls == []
    assert sorted(calls) == [("_default._default", 5), ("_default.other", 1)]


def test_rolled_back_transaction_writes_nothing_and_notifies_nobody(db: Database, coll: Collection):
    calls = []
    db.add_change_listener(lambda c, s: calls.append(s))
    with pytest.raises(RuntimeError), db.transaction():
        coll.save_document("a", {})
        raise RuntimeError("abandon")
    assert calls == [] and coll.get_document("a") is None and coll.last_sequence == 0


def test_failed_write_inside_transaction_is_undone_alone(db: Database, coll: Collection):
    with db.transaction():
        coll.save_document("a", {})
        with pytest.raises(InvalidInput):
            coll.save_document("b", {"bad": float("inf")})
    assert coll.get_document("a") is not None and coll.get_document("b") is None


def test_a_failing_listener_does_not_break_writes(db: Database, coll: Collection):
    seen = []

    def broken(_c, _s):
        raise ValueError("listener bug")

    db.add_change_listener(broken)
    db.add_change_listener(lambda c, s: seen.append(s))
    coll.save_document("a", {})
    assert seen == [1] and coll.get_document("a") is not None


def test_poll_changes_ignores_own_writes(db: Database, coll: Collection):
    calls = []
    db.add_change_listener(lambda c, s: calls.append(s))
    coll.save_document("a", {})
    assert db.poll_changes() is False
    assert calls == [1]


def test_two_connections_in_one_process_see_each_other(tmp_path):
    with Database.open(tmp_path / "db") as writer, Database.open(tmp_path / "db") as reader:
        calls = []
        reader.add_change_listener(lambda c, s: calls.append((c.full_name, s)))
        assert reader.poll_changes() is False
        writer.default_collection.save_document("a", {})
        writer.create_collection("late", "s").save_document("b", {})
        assert reader.poll_changes() is True
        assert sorted(calls) == [("_default._default", 1), ("s.late", 1)]
        assert reader.poll_changes() is False
        writer.set_local("k", b"v")  # a commit that adds no sequence
        assert reader.poll_changes() is False
        assert len(calls) == 2


def test_collection_created_in_a_rolled_back_transaction_is_forgotten(db: Database):
    with pytest.raises(RuntimeError), db.transaction():
        db.create_collection("temp").save_document("a", {})
        raise RuntimeError("abandon")
    assert db.get_collection("temp") is None
    assert [c.full_name for c in db.collections()] == ["_default._default"]
    again = db.create_collection("temp")
    assert again.last_sequence == 0 and again.get_document("a") is None


def test_threads_share_one_database(db: Database, coll: Collection):
    calls = []
    db.add_change_listener(lambda c, s: calls.append(s))

    def writer(name: str) -> None:
        for n in range(40):
            coll.save_document(f"{name}-{n}", {"n": n})

    threads = [threading.Thread(target=writer, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    changes = coll.changes_since(0)
    assert len(changes) == 160 and [c.sequence for c in changes] == list(range(1, 161))
    assert sorted(calls) == list(range(1, 161))
