"""The sequence tracker against a plain model of what a checkpoint may record."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from fieldsync.replication.sequences import SequenceTracker


class _Model:
    """Announced sequences in order with a finished flag; the checkpoint is the last of the
    finished prefix (by JSON spelling, so 1, "1" and [1] are different sequences)."""

    def __init__(self, checkpoint: Any) -> None:
        self.entries: list[list[Any]] = []
        self.checkpoint = checkpoint
        self.caught_up_at: Any = None

    def _find(self, sequence: Any) -> list[Any] | None:
        key = (type(sequence), repr(sequence))
        return next((e for e in self.entries if (type(e[0]), repr(e[0])) == key), None)

    def add(self, sequence: Any) -> None:
        entry = self._find(sequence)
        if entry is not None:
            entry[1] = False
        else:
            self.entries.append([sequence, False])

    def complete(self, sequence: Any) -> None:
        entry = self._find(sequence)
        if entry is None:
            return
        entry[1] = True
        while self.entries and self.entries[0][1]:
            self.checkpoint = self.entries.pop(0)[0]
        if not self.entries and self.caught_up_at is not None:
            self.checkpoint = self.caught_up_at

    def caught_up(self, sequence: Any) -> None:
        self.caught_up_at = sequence
        if not self.entries:
            self.checkpoint = sequence


sequences = st.one_of(
    st.integers(0, 20),
    st.sampled_from(["1", "2", "12:3", "7"]),
    st.lists(st.integers(0, 3), max_size=2),
)
operations = st.lists(
    st.tuples(st.sampled_from(["add", "complete", "caught_up"]), sequences), max_size=60
)


@given(operations)
def test_the_tracker_records_what_the_model_records(ops: list[tuple[str, Any]]) -> None:
    tracker, model = SequenceTracker(0), _Model(0)
    for name, sequence in ops:
        getattr(tracker, name)(sequence)
        getattr(model, name)(sequence)
        assert tracker.checkpoint == model.checkpoint
        assert type(tracker.checkpoint) is type(model.checkpoint)
        assert tracker.pending_count == len(model.entries)


def test_ten_thousand_in_flight_finish_out_of_order() -> None:
    tracker = SequenceTracker(0)
    for sequence in range(1, 10_001):
        tracker.add(sequence)
    for sequence in range(10_000, 1, -1):
        tracker.complete(sequence)
    assert tracker.checkpoint == 0 and tracker.pending_count == 10_000
    tracker.complete(1)
    assert tracker.checkpoint == 10_000 and tracker.pending_count == 0
