"""Resolving a conflict: the losing branch is closed, the merge lands on the winner."""

import pytest

from fieldsync.store import ConflictError, Database, IncomingRevision


def _conflicted(tmp_path):
    db = Database.open(tmp_path / "db")
    coll = db.default_collection
    base = coll.save_document("d", {"v": 0}).rev_id
    mine = coll.save_document("d", {"v": "mine"}).rev_id
    theirs = "2-" + "f" * 40
    [result] = coll.insert_revisions(
        [IncomingRevision("d", theirs, [base], False, b'{"v":"theirs"}')]
    )
    assert result.status == 201
    assert coll.is_conflicted("d")
    return db, coll, mine, theirs


def test_merge_on_top_of_winner_closes_loser(tmp_path) -> None:
    db, coll, mine, theirs = _conflicted(tmp_path)
    merged = coll.resolve_conflict("d", winning_rev=theirs, losing_rev=mine, body={"v": "both"})
    assert merged.body == {"v": "both"}
    assert coll.rev_history("d", merged.rev_id)[1] == theirs
    assert not coll.is_conflicted("d")
    assert coll.leaf_revisions("d")[0] == merged.rev_id
    db.close()


def test_keep_winner_as_is(tmp_path) -> None:
    db, coll, mine, theirs = _conflicted(tmp_path)
    kept = coll.resolve_conflict("d", winning_rev=mine, losing_rev=theirs)
    assert kept.rev_id == mine and kept.body == {"v": "mine"}
    assert not coll.is_conflicted("d")
    db.close()


def test_non_leaf_is_refused_and_nothing_changes(tmp_path) -> None:
    db, coll, mine, theirs = _conflicted(tmp_path)
    before = coll.last_sequence
    base = coll.rev_history("d", mine)[1]
    with pytest.raises(ConflictError):
        coll.resolve_conflict("d", winning_rev=base, losing_rev=theirs)
    assert coll.last_sequence == before and coll.is_conflicted("d")
    db.close()


def test_a_deleted_winner_is_returned_as_the_tombstone(tmp_path) -> None:
    db = Database.open(tmp_path / "db")
    coll = db.default_collection
    base = coll.save_document("d", {"v": 0}).rev_id
    mine = coll.save_document("d", {"v": "mine"}).rev_id
    gone = "2-" + "e" * 40
    [result] = coll.insert_revisions([IncomingRevision("d", gone, [base], True, b"{}")])
    assert result.status == 201 and set(coll.leaf_revisions("d")) == {mine, gone}
    resolved = coll.resolve_conflict("d", winning_rev=gone, losing_rev=mine)
    assert resolved.deleted and resolved.doc_id == "d"
    assert coll.get_document("d") is None  # a deletion won: the document reads as deleted
    db.close()


def test_closed_branch_never_outranks_a_later_deletion(tmp_path) -> None:
    """The tombstone closing the losing branch is marked closed (LiteCore's kRevClosed): once
    the winner is deleted too, the real deletion stays the winner, whatever the revIDs say,
    and survives a reopen (it is stored, not recomputed)."""
    db, coll, mine, theirs = _conflicted(tmp_path)
    coll.resolve_conflict("d", winning_rev=theirs, losing_rev=mine)
    closing = next(r for r in coll.leaf_revisions("d") if r != theirs)
    # The winner is deleted later by a peer, with a tombstone that sorts below the closing one.
    gone = "3-" + "0" * 40
    assert closing > gone  # same generation: only the closed flag keeps it from winning
    [result] = coll.insert_revisions([IncomingRevision("d", gone, [theirs], True, b"{}")])
    assert result.status == 201
    assert coll.get_revision("d", with_body=False).rev_id == gone
    db.close()
    db = Database.open(tmp_path / "db")
    try:
        coll = db.default_collection
        assert coll.get_revision("d", with_body=False).rev_id == gone
        assert coll.leaf_revisions("d")[0] == gone
    finally:
        db.close()
