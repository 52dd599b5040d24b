"""The replicator's pure decisions, against a small in-memory revision lookup."""

from __future__ import annotations

import pytest

from fieldsync.replication import decisions
from fieldsync.replication.messages import parse_history, parse_sequence, trim_trailing
from fieldsync.replication.routing import CollectionRouter, Mode, RoutingError
from fieldsync.replication.sequences import SequenceTracker


class FakeCollection:
    """Known revisions per document, newest first; the first is current."""

    def __init__(self, docs: dict[str, list[str]]) -> None:
        self.docs = docs

    def check_proposed(self, doc_id, rev_id, parent_rev_id):
        revs = self.docs.get(doc_id)
        if not revs:
            return (0, None) if parent_rev_id is None else (409, None)
        if rev_id in revs:
            return 304, None
        if parent_rev_id != revs[0]:
            return 409, revs[0]
        return 0, None

    def find_known_revisions(self, doc_id, rev_id, *, max_ancestors=20, require_bodies=False):
        revs = self.docs.get(doc_id, [])
        return rev_id in revs, revs[:max_ancestors]


def test_proposed_changes_answers_each_case() -> None:
    coll = FakeCollection({"a": ["2-bb", "1-aa"], "b": ["1-cc"]})
    changes = decisions.parse_proposed_changes(
        [["a", "3-dd", "2-bb", 10], ["a", "2-bb", "1-aa"], ["b", "2-ee", "1-xx"], ["n", "1-ff"]]
    )
    assert decisions.answer_proposed_changes(coll, changes, conflict_includes_rev=False) == [
        0,
        304,
        409,
    ]
    assert decisions.answer_proposed_changes(coll, changes, conflict_includes_rev=True) == [
        0,
        304,
        {"status": 409, "rev": "1-cc"},
    ]


def test_all_wanted_proposals_trim_to_empty_array() -> None:
    coll = FakeCollection({})
    changes = decisions.parse_proposed_changes([["x", "1-aa", ""], ["y", "1-bb"]])
    assert decisions.answer_proposed_changes(coll, changes, conflict_includes_rev=True) == []


def test_changes_answer_lists_known_ancestors_and_zero_for_known() -> None:
    coll = FakeCollection({"a": ["2-bb", "1-aa"]})
    changes = decisions.parse_changes([[5, "a", "3-cc"], [6, "n", "1-dd", 0, 20], [7, "a", "2-bb"]])
    answers, wanted = decisions.answer_changes(coll, changes)
    assert answers == [["2-bb", "1-aa"], []]
    assert wanted == [0, 1]


@pytest.mark.parametrize(
    "body",
    [{"not": "a list"}, [["only-doc"]], [[1, "", "1-aa"]], [[1, "doc", 5]], "x"],
)
def test_malformed_changes_are_rejected(body) -> None:
    with pytest.raises(decisions.MalformedMessage):
        decisions.parse_changes(body)


@pytest.mark.parametrize("body", [{"a": 1}, [["doc"]], [[None, "1-aa"]], [["d", "1-a", 5]]])
def test_malformed_proposals_are_rejected(body) -> None:
    with pytest.raises(decisions.MalformedMessage):
        decisions.parse_proposed_changes(body)


def test_history_is_cut_at_first_known_ancestor_and_max_history() -> None:
    history = ["4-d", "3-c", "2-b", "1-a"]
    assert decisions.history_to_send(history, ["2-b"], 50) == ["4-d", "3-c", "2-b"]
    assert decisions.history_to_send(history, [], 2) == ["4-d", "3-c"]
    assert decisions.history_to_send(history, ["9-z"], 50) == history
    assert decisions.history_to_send([], [], 50) == []


def test_entries_have_the_wire_shape() -> None:
    assert decisions.changes_entry(7, "d", "1-a", True, 12) == [7, "d", "1-a", 1, 12]
    assert decisions.proposed_entry("d", "2-b", None, 30) == ["d", "2-b", "", 30]


def test_small_encodings() -> None:
    assert parse_history("3-c, 2-b,1-a") == ["3-c", "2-b", "1-a"]
    assert parse_history(None) == []
    assert parse_sequence("42") == 42
    assert parse_sequence('"12:3"') == 0
    assert parse_sequence("garbage") == 0
    assert trim_trailing([1, 0, 0], 0) == [1]
    assert trim_trailing([0, [], 0], 0) == [0, []]


def test_router_legacy_mode() -> None:
    router = CollectionRouter("default", {"_default._default": "default"})
    assert router.route("getCheckpoint", {}) == ("default", None)
    assert router.mode is Mode.LEGACY
    with pytest.raises(RoutingError) as err:
        router.route("rev", {"collection": "0"})
    assert err.value.status == 400
    with pytest.raises(RoutingError):
        router.resolve_collections(["_default"])


def test_router_collection_aware_mode() -> None:
    router = CollectionRouter(None, {"s.a": "A", "_default.b": "B"})
    assert router.resolve_collections(["s.a", "b", "s.missing"]) == ["A", "B", None]
    assert router.route("rev", {"collection": "1"}) == ("B", 1)
    with pytest.raises(RoutingError) as missing:
        router.route("rev", {"collection": "2"})
    assert missing.value.status == 404
    for bad in ({}, {"collection": "9"}, {"collection": "x"}):
        with pytest.raises(RoutingError) as err:
            router.route("changes", bad)
        assert err.value.status == 400
    assert router.route("getAttachment", {}) == (None, None)


def test_sequence_tracker_checkpoints_only_the_finished_prefix() -> None:
    tracker = SequenceTracker(0)
    for seq in (1, 2, 3, 4):
        tracker.add(seq)
    tracker.complete(2)
    assert tracker.checkpoint == 0
    tracker.complete(1)
    assert tracker.checkpoint == 2
    tracker.complete(4)
    assert tracker.checkpoint == 2
    tracker.caught_up(10)
    tracker.complete(3)
    assert tracker.checkpoint == 10
    assert tracker.pending_count == 0
