"""The calls the replicator makes to answer a peer: check_proposed and find_known_revisions."""

from __future__ import annotations

import pytest

from fieldsync.store import Collection, IncomingRevision, InvalidInput


def rev(generation: int, digit: str) -> str:
    """A well-formed revID: ``rev(3, "a")`` is ``3-aaaa…`` (40 hex digits)."""
    return f"{generation}-{digit * 40}"


def put(coll: Collection, doc_id: str, rev_id: str, history=(), *, deleted=False, body=b"{}"):
    [result] = coll.insert_revisions(
        [IncomingRevision(doc_id, rev_id, list(history), deleted, body)]
    )
    assert result.status == 201, result


def test_check_proposed_for_a_new_document(coll: Collection):
    assert coll.check_proposed("new", rev(1, "a"), None) == (0, None)
    # The peer thinks we have a parent but we have no such document: LiteCore answers 409.
    assert coll.check_proposed("new", rev(2, "a"), rev(1, "a")) == (409, None)


def test_check_proposed_against_the_current_revision(coll: Collection):
    put(coll, "d", rev(1, "a"))
    put(coll, "d", rev(2, "a"), [rev(1, "a")])
    assert coll.check_proposed("d", rev(2, "a"), rev(1, "a")) == (304, None)
    assert coll.check_proposed("d", rev(3, "a"), rev(2, "a")) == (0, None)
    assert coll.check_proposed("d", rev(2, "b"), rev(1, "a")) == (409, rev(2, "a"))
    assert coll.check_proposed("d", rev(1, "b"), None) == (409, rev(2, "a"))
    # An older revision we have, proposed again, is not the current one: a conflict as well.
    assert coll.check_proposed("d", rev(1, "a"), None) == (409, rev(2, "a"))


def test_check_proposed_on_a_deleted_document(coll: Collection):
    put(coll, "d", rev(1, "a"))
    put(coll, "d", rev(2, "a"), [rev(1, "a")], deleted=True)
    assert coll.check_proposed("d", rev(1, "z"), None) == (0, None)  # recreating is fine
    assert coll.check_proposed("d", rev(3, "a"), rev(2, "a")) == (0, None)
    assert coll.check_proposed("d", rev(2, "b"), rev(1, "a")) == (409, rev(2, "a"))


def test_check_proposed_uses_the_winner_of_a_conflict(coll: Collection):
    put(coll, "d", rev(2, "a"), [rev(1, "a")])
    put(coll, "d", rev(2, "b"), [rev(1, "a")])
    assert coll.check_proposed("d", rev(3, "b"), rev(2, "b")) == (0, None)
    assert coll.check_proposed("d", rev(3, "a"), rev(2, "a")) == (409, rev(2, "b"))


def test_find_known_revisions_for_unknown_document(coll: Collection):
    assert coll.find_known_revisions("none", rev(3, "a")) == (False, [])


def test_find_known_revisions_when_we_have_it(coll: Collection):
    put(coll, "d", rev(3, "a"), [rev(2, "a"), rev(1, "a")])
    assert coll.find_known_revisions("d", rev(3, "a")) == (True, [])
    assert coll.find_known_revisions("d", rev(2, "a")) == (True, [])  # an ancestor counts


def test_find_known_revisions_lists_possible_ancestors(coll: Collection):
    put(coll, "d", rev(3, "a"), [rev(2, "a"), rev(1, "a")])
    put(coll, "d", rev(2, "b"), [rev(1, "a")])
    put(coll, "d", rev(5, "c"), [rev(4, "c"), rev(3, "a"), rev(2, "a"), rev(1, "a")])
    have, known = coll.find_known_revisions("d", rev(6, "f"))
    assert not have
    # Leaves first (winner first), then the rest newest first:
    assert known == [rev(5, "c"), rev(2, "b"), rev(4, "c"), rev(3, "a"), rev(2, "a"), rev(1, "a")]
    # Only revisions of a lower generation can be ancestors:
    assert coll.find_known_revisions("d", rev(3, "f")) == (
        False,
        [rev(2, "b"), rev(2, "a"), rev(1, "a")],
    )
    assert coll.find_known_revisions("d", rev(6, "f"), max_ancestors=2) == (
        False,
        [rev(5, "c"), rev(2, "b")],
    )
    # With require_bodies, body-less history entries are skipped:
    _, with_bodies = coll.find_known_revisions("d", rev(6, "f"), require_bodies=True)
    assert with_bodies == [rev(5, "c"), rev(2, "b"), rev(3, "a")]


def test_find_known_revisions_rejects_bad_revid(coll: Collection):
    put(coll, "d", rev(1, "a"))
    with pytest.raises(InvalidInput):
        coll.find_known_revisions("d", "not-a-rev")


def test_revision_access_for_sending(coll: Collection):
    put(coll, "d", rev(3, "a"), [rev(2, "a"), rev(1, "a")], body=b'{"x":1}')
    current = coll.get_revision("d")
    assert (current.rev_id, current.body, current.deleted) == (rev(3, "a"), b'{"x":1}', False)
    assert coll.get_revision("d", rev(2, "a")).body is None
    assert coll.get_revision("d", rev(9, "a")) is None
    assert coll.get_revision("nope") is None
    assert coll.rev_history("d", rev(3, "a")) == [rev(3, "a"), rev(2, "a"), rev(1, "a")]
    assert coll.rev_history("d", rev(9, "a")) == []
    assert coll.rev_history("nope", rev(1, "a")) == []
    assert coll.leaf_revisions("nope") == []
