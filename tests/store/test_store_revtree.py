"""Revision-tree semantics through a real database: saves, conflicts, winners, tombstones,
pruning, body retention and inserting revisions with history (grafting)."""

from __future__ import annotations

import json
import re

import pytest

from fieldsync.store import (
    Collection,
    ConflictError,
    Database,
    IncomingRevision,
    InvalidInput,
    NotFoundError,
)
from fieldsync.store.revtree import RevNode, RevTree


def rev(generation: int, digit: str) -> str:
    """A well-formed revID: ``rev(3, "a")`` is ``3-aaaa…`` (40 hex digits)."""
    return f"{generation}-{digit * 40}"


REVID = re.compile(r"^[1-9][0-9]*-[0-9a-f]{40}$")


def incoming(doc_id, rev_id, history=(), body=None, *, deleted=False, no_conflicts=False):
    data = json.dumps(body if body is not None else {"rev": rev_id}).encode()
    return IncomingRevision(doc_id, rev_id, list(history), deleted, data, no_conflicts)


# -- local saves --------------------------------------------------------------------------------


def test_save_creates_generations_with_sha1_revids(coll: Collection):
    first = coll.save_document("doc", {"n": 1})
    assert REVID.match(first.rev_id) and first.rev_id.startswith("1-")
    second = coll.save_document("doc", {"n": 2})
    assert second.rev_id.startswith("2-") and REVID.match(second.rev_id)
    assert second.sequence > first.sequence
    assert coll.rev_history("doc", second.rev_id) == [second.rev_id, first.rev_id]
    assert coll.get_document("doc") == second
    assert second.body == {"n": 2}


def test_same_edit_gives_same_revid_in_any_database(tmp_path):
    with Database.open(tmp_path / "a") as a, Database.open(tmp_path / "b") as b:
        # Key order must not matter: the digest is over canonical JSON.
        ra = a.default_collection.save_document("d", {"x": 1, "y": "é"})
        rb = b.default_collection.save_document("d", {"y": "é", "x": 1})
        assert ra.rev_id == rb.rev_id
        assert ra.rev_id != a.default_collection.save_document("e", {"x": 2}).rev_id


def test_special_keys_are_stripped_and_body_is_canonical(coll: Collection):
    doc = coll.save_document(
        "d", {"_id": "x", "_rev": "1-ab", "_deleted": False, "_revisions": {}, "b": 1, "a": "é"}
    )
    assert doc.body == {"a": "é", "b": 1}
    stored = coll.get_revision("d")
    assert stored.body == '{"a":"é","b":1}'.encode()


def test_new_document_without_id_gets_a_random_one(coll: Collection):
    one = coll.save_document(None, {"a": 1})
    two = coll.save_document(None, {"a": 1})
    assert one.doc_id != two.doc_id
    assert coll.get_document(one.doc_id).body == {"a": 1}


@pytest.mark.parametrize("doc_id", ["", "_design", "a\nb", "x" * 241, 42])
def test_invalid_document_ids_are_rejected(coll: Collection, doc_id):
    with pytest.raises(InvalidInput):
        coll.save_document(doc_id, {})
    assert coll.count(include_deleted=True) == 0


@pytest.mark.parametrize("body", [[1, 2], "text", {"nan": float("nan")}, {"obj": object()}])
def test_invalid_bodies_are_rejected(coll: Collection, body):
    with pytest.raises(InvalidInput):
        coll.save_document("d", body)
    assert coll.get_document("d") is None and coll.last_sequence == 0


def test_expected_rev_guards_updates(coll: Collection):
    first = coll.save_document("d", {"v": 1})
    second = coll.save_document("d", {"v": 2}, expected_rev=first.rev_id)
    with pytest.raises(ConflictError) as err:
        coll.save_document("d", {"v": 3}, expected_rev=first.rev_id)
    assert err.value.current_rev == second.rev_id and err.value.status == 409
    with pytest.raises(ConflictError):
        coll.save_document("missing", {"v": 1}, expected_rev=first.rev_id)
    assert coll.get_document("d").rev_id == second.rev_id


# -- tombstones ---------------------------------------------------------------------------------


def test_delete_creates_tombstone_revision(coll: Collection):
    saved = coll.save_document("d", {"v": 1})
    tomb = coll.delete_document("d", expected_rev=saved.rev_id)
    assert tomb.deleted and tomb.body == {} and tomb.rev_id.startswith("2-")
    assert coll.get_document("d") is None
    current = coll.get_revision("d")
    assert current.rev_id == tomb.rev_id and current.deleted and current.body == b"{}"
    assert coll.count() == 0 and coll.count(include_deleted=True) == 1
    with pytest.raises(NotFoundError):
        coll.delete_document("d")
    with pytest.raises(NotFoundError):
        coll.delete_document("never")


def test_delete_with_stale_rev_conflicts(coll: Collection):
    first = coll.save_document("d", {"v": 1})
    coll.save_document("d", {"v": 2})
    with pytest.raises(ConflictError):
        coll.delete_document("d", expected_rev=first.rev_id)
    assert coll.get_document("d").body == {"v": 2}


def test_save_after_delete_resurrects_on_top_of_tombstone(coll: Collection):
    coll.save_document("d", {"v": 1})
    tomb = coll.delete_document("d")
    again = coll.save_document("d", {"v": 3})
    assert again.rev_id.startswith("3-")
    assert coll.rev_history("d", again.rev_id)[1] == tomb.rev_id
    assert coll.leaf_revisions("d") == [again.rev_id]


# -- conflicts and the winner -------------------------------------------------------------------


def test_conflicting_branches_are_kept_and_higher_revid_wins(coll: Collection):
    results = coll.insert_revisions(
        [
            incoming("d", rev(1, "1")),
            incoming("d", rev(2, "a"), [rev(1, "1")]),
            incoming("d", rev(2, "b"), [rev(1, "1")]),
        ]
    )
    assert [r.status for r in results] == [201, 201, 201]
    assert coll.leaf_revisions("d") == [rev(2, "b"), rev(2, "a")]
    assert coll.get_document("d").rev_id == rev(2, "b")
    assert coll.is_conflicted("d")
    # A longer branch wins over a higher digest:
    coll.insert_revisions([incoming("d", rev(3, "0"), [rev(2, "a"), rev(1, "1")])])
    assert coll.leaf_revisions("d") == [rev(3, "0"), rev(2, "b")]
    assert coll.get_document("d").body == {"rev": rev(3, "0")}


def test_live_leaf_beats_deleted_leaf_of_higher_generation(coll: Collection):
    coll.insert_revisions(
        [
            incoming("d", rev(2, "a"), [rev(1, "1")]),
            incoming("d", rev(4, "f"), [rev(3, "e"), rev(2, "e"), rev(1, "1")], deleted=True),
        ]
    )
    assert coll.leaf_revisions("d") == [rev(2, "a"), rev(4, "f")]
    doc = coll.get_document("d")
    assert doc is not None and doc.rev_id == rev(2, "a")
    assert [c.deleted for c in coll.changes_since(0)] == [False]


def test_deleting_the_winner_of_a_conflict_exposes_the_other_branch(coll: Collection):
    coll.insert_revisions(
        [incoming("d", rev(2, "a"), [rev(1, "1")]), incoming("d", rev(2, "b"), [rev(1, "1")])]
    )
    tomb = coll.delete_document("d", expected_rev=rev(2, "b"))
    doc = coll.get_document("d")
    assert doc is not None and doc.rev_id == rev(2, "a")
    assert coll.leaf_revisions("d") == [rev(2, "a"), tomb.rev_id]
    assert not coll.is_conflicted("d")
    change = coll.changes_since(0)[-1]
    assert (change.rev_id, change.deleted, change.body_size) == (
        rev(2, "a"),
        False,
        len(json.dumps({"rev": rev(2, "a")}, separators=(",", ":"))),
    )


def test_all_leaves_deleted_means_document_deleted_and_highest_tombstone_wins(coll: Collection):
    coll.insert_revisions(
        [
            incoming("d", rev(2, "a"), [rev(1, "1")], deleted=True),
            incoming("d", rev(2, "b"), [rev(1, "1")], deleted=True),
        ]
    )
    assert coll.get_document("d") is None
    assert coll.get_revision("d").rev_id == rev(2, "b")


def test_local_save_on_a_conflicted_document_extends_the_winner(coll: Collection):
    coll.insert_revisions(
        [incoming("d", rev(2, "a"), [rev(1, "1")]), incoming("d", rev(2, "b"), [rev(1, "1")])]
    )
    saved = coll.save_document("d", {"local": True})
    assert coll.rev_history("d", saved.rev_id)[1] == rev(2, "b")
    assert set(coll.leaf_revisions("d")) == {saved.rev_id, rev(2, "a")}


# -- pruning and body retention -----------------------------------------------------------------


def test_history_depth_is_bounded(tmp_path):
    with Database.open(tmp_path / "db", max_rev_tree_depth=5) as db:
        coll = db.default_collection
        revs = [coll.save_document("d", {"n": n}).rev_id for n in range(12)]
        history = coll.rev_history("d", revs[-1])
        assert history == list(reversed(revs[-5:]))
        assert coll.get_revision("d", revs[0]) is None
        assert coll.get_revision("d", revs[6]) is None
        assert coll.get_revision("d", revs[7]) is not None


def test_default_max_depth_is_litecores_50(coll: Collection):
    revs = [coll.save_document("d", {"n": n}).rev_id for n in range(60)]
    history = coll.rev_history("d", revs[-1])
    assert len(history) == 50 and history[-1] == revs[10]


def test_pruning_keeps_every_leaf_and_cuts_deep_ancestors(tmp_path):
    with Database.open(tmp_path / "db", max_rev_tree_depth=4) as db:
        coll = db.default_collection
        trunk = [rev(g, "1") for g in range(1, 4)]  # 1-1, 2-1, 3-1
        short = incoming("d", rev(4, "a"), trunk[::-1])
        long_chain = [rev(g, "b") for g in range(4, 9)]  # 4-b … 8-b
        long = incoming("d", long_chain[-1], long_chain[-2::-1] + trunk[::-1])
        assert [r.status for r in coll.insert_revisions([short, long])] == [201, 201]
        assert set(coll.leaf_revisions("d")) == {rev(4, "a"), rev(8, "b")}
        assert coll.rev_history("d", rev(8, "b")) == [rev(g, "b") for g in (8, 7, 6, 5)]
        # The trunk is more than 4 deep below 8-b, so it goes even though 4-a is a leaf:
        assert coll.rev_history("d", rev(4, "a")) == [rev(4, "a")]
        assert coll.get_revision("d", trunk[0]) is None


def test_ancestor_bodies_are_kept_for_n_generations(tmp_path):
    with Database.open(tmp_path / "db", keep_body_generations=2) as db:
        coll = db.default_collection
        revs = [coll.save_document("d", {"n": n}).rev_id for n in range(5)]
        bodies = [coll.get_revision("d", r).body for r in revs]
        assert bodies[4] == b'{"n":4}'  # leaf
        assert bodies[3] == b'{"n":3}' and bodies[2] == b'{"n":2}'  # recent ancestors
        assert bodies[1] is None and bodies[0] is None  # superseded by more than 2
        # The revisions themselves are still known:
        old = coll.get_revision("d", revs[0])
        assert old is not None and old.rev_id == revs[0] and not old.deleted
        assert coll.get_revision("d", revs[2], with_body=False).body is None


def test_zero_body_generations_keeps_only_leaf_bodies(tmp_path):
    with Database.open(tmp_path / "db", keep_body_generations=0) as db:
        coll = db.default_collection
        first = coll.save_document("d", {"n": 1})
        coll.save_document("d", {"n": 2})
        assert coll.get_revision("d", first.rev_id).body is None


# -- inserting revisions with history ----------------------------------------------------------


def test_insert_grafts_onto_deepest_known_ancestor(coll: Collection):
    one = coll.save_document("d", {"n": 1})
    two = coll.save_document("d", {"n": 2})
    r3, r4, r5 = rev(3, "c"), rev(4, "d"), rev(5, "e")
    [result] = coll.insert_revisions(
        [incoming("d", r5, [r4, r3, two.rev_id, one.rev_id], {"n": 5}, no_conflicts=True)]
    )
    assert result.status == 201 and result.current_rev == r5
    assert coll.rev_history("d", r5) == [r5, r4, r3, two.rev_id, one.rev_id]
    assert coll.get_revision("d", r4).body is None  # only its revID is known
    assert coll.get_revision("d", r3).body is None
    assert coll.get_revision("d", r5).body == b'{"n":5}'
    assert coll.leaf_revisions("d") == [r5]
    assert coll.get_document("d").body == {"n": 5}


def test_insert_of_unknown_document_with_history_builds_the_chain(coll: Collection):
    chain = [rev(g, "7") for g in (9, 8, 7)]
    [result] = coll.insert_revisions([incoming("new", chain[0], chain[1:], {"k": 1})])
    assert result.status == 201
    assert coll.rev_history("new", chain[0]) == chain
    assert coll.get_document("new").rev_id == chain[0]


def test_insert_known_revision_is_200_and_changes_nothing(coll: Collection):
    coll.insert_revisions([incoming("d", rev(2, "a"), [rev(1, "1")])])
    sequence = coll.last_sequence
    results = coll.insert_revisions(
        [incoming("d", rev(2, "a"), [rev(1, "1")]), incoming("d", rev(1, "1"))]
    )
    assert [r.status for r in results] == [200, 200]
    assert coll.last_sequence == sequence


def test_no_conflicts_rejects_revisions_not_based_on_the_winner(coll: Collection):
    coll.insert_revisions(
        [incoming("d", rev(2, "a"), [rev(1, "1")]), incoming("d", rev(2, "b"), [rev(1, "1")])]
    )
    results = coll.insert_revisions(
        [
            incoming("d", rev(3, "a"), [rev(2, "a"), rev(1, "1")], no_conflicts=True),
            incoming("d", rev(2, "c"), [rev(1, "1")], no_conflicts=True),
            incoming("d", rev(1, "9"), no_conflicts=True),
            incoming("d", rev(3, "b"), [rev(2, "b"), rev(1, "1")], no_conflicts=True),
        ]
    )
    assert [r.status for r in results] == [409, 409, 409, 201]
    assert results[0].current_rev == rev(2, "b")
    assert coll.leaf_revisions("d") == [rev(3, "b"), rev(2, "a")]


def test_without_no_conflicts_a_new_branch_is_created(coll: Collection):
    coll.save_document("d", {"v": 1})
    [result] = coll.insert_revisions([incoming("d", rev(1, "f"), body={"other": 1})])
    assert result.status == 201
    assert len(coll.leaf_revisions("d")) == 2


def test_no_conflicts_allows_recreating_a_deleted_document(coll: Collection):
    coll.save_document("d", {"v": 1})
    coll.delete_document("d")
    [result] = coll.insert_revisions([incoming("d", rev(1, "f"), no_conflicts=True)])
    assert result.status == 201
    assert coll.get_document("d").rev_id == rev(1, "f")


def test_incoming_tombstone_and_special_keys(coll: Collection):
    coll.insert_revisions([incoming("d", rev(1, "1"))])
    results = coll.insert_revisions(
        [
            IncomingRevision("d", rev(2, "1"), [rev(1, "1")], True, b""),
            IncomingRevision("e", rev(1, "2"), [], False, b'{"_id":"e","_rev":"x","a":1}'),
        ]
    )
    assert [r.status for r in results] == [201, 201]
    tomb = coll.get_revision("d")
    assert tomb.deleted and tomb.body == b"{}"
    assert coll.get_revision("e").body == b'{"a":1}'


def test_bad_revisions_get_400_and_do_not_stop_the_batch(coll: Collection):
    results = coll.insert_revisions(
        [
            incoming("d", "garbage"),
            incoming("d", rev(3, "a"), [rev(1, "a")]),  # generations not consecutive
            incoming("d", rev(2, "a"), ["nonsense"]),
            IncomingRevision("d", rev(1, "a"), [], False, b"[1,2]"),
            IncomingRevision("d", rev(1, "a"), [], False, b"{not json"),
            IncomingRevision("d", rev(1, "a"), [], False, b""),
            incoming("_bad", rev(1, "a")),
            incoming("ok", rev(1, "a")),
        ]
    )
    assert [r.status for r in results] == [400] * 7 + [201]
    assert all(r.message for r in results[:7])
    assert coll.count() == 1 and coll.get_document("d") is None


def test_history_gap_is_tolerated_only_beyond_the_prune_depth(tmp_path):
    with Database.open(tmp_path / "db", max_rev_tree_depth=3) as db:
        coll = db.default_collection
        gap_deep = [rev(10, "a"), rev(9, "a"), rev(8, "a"), rev(2, "a")]
        gap_shallow = [rev(10, "b"), rev(3, "b")]
        results = coll.insert_revisions(
            [
                incoming("x", gap_deep[0], gap_deep[1:]),
                incoming("y", gap_shallow[0], gap_shallow[1:]),
            ]
        )
        assert [r.status for r in results] == [201, 400]


def test_batch_with_several_revisions_of_one_document(coll: Collection):
    results = coll.insert_revisions(
        [
            incoming("d", rev(1, "1")),
            incoming("d", rev(2, "1"), [rev(1, "1")], no_conflicts=True),
            incoming("d", rev(3, "1"), [rev(2, "1"), rev(1, "1")], no_conflicts=True),
        ]
    )
    assert [r.status for r in results] == [201, 201, 201]
    assert coll.get_document("d").rev_id == rev(3, "1")
    assert [(c.doc_id, c.sequence) for c in coll.changes_since(0)] == [("d", 3)]


def test_a_failing_batch_writes_nothing(coll: Collection):
    good = incoming("good", rev(1, "1"))
    broken = IncomingRevision("bad", rev(1, "2"), [], False, 12345)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        coll.insert_revisions([good, broken])
    assert coll.get_document("good") is None and coll.last_sequence == 0


# -- the pure tree ------------------------------------------------------------------------------


def test_revtree_prune_relinks_and_reports_removed():
    tree = RevTree(
        RevNode(rev(g, "a"), rev(g - 1, "a") if g > 1 else None, False, g, True)
        for g in range(1, 7)
    )
    removed = tree.prune(4)
    assert removed == [rev(1, "a"), rev(2, "a")]
    assert tree.removed == {rev(1, "a"), rev(2, "a")}
    assert tree.get(rev(3, "a")).parent is None and rev(3, "a") in tree.changed
    assert tree.ancestry(rev(6, "a")) == [rev(g, "a") for g in (6, 5, 4, 3)]
