"""Tracking which announced sequences are finished, to know what a checkpoint may record."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class SequenceTracker:
    """Sequences in announcement order; the checkpoint is the last of the finished prefix.

    Sequences are opaque (a Sync Gateway's may be strings); only their order of announcement
    counts. Pure and synchronous.
    """

    def __init__(self, checkpoint: Any = None) -> None:
        self._announced: OrderedDict[str, list[Any]] = OrderedDict()  # key -> [sequence, done]
        self.checkpoint = checkpoint
        self._caught_up_at: Any = None

    @staticmethod
    def _key(sequence: Any) -> str:
        return repr(sequence)

    def add(self, sequence: Any) -> None:
        """Announce a sequence that is now in progress."""
        self._announced[self._key(sequence)] = [sequence, False]

    def complete(self, sequence: Any) -> None:
        """Mark an announced sequence finished (synced, skipped or failed for good)."""
        entry = self._announced.get(self._key(sequence))
        if entry is None:
            return
        entry[1] = True
        while self._announced:
            first_key = next(iter(self._announced))
            first_sequence, done = self._announced[first_key]
            if not done:
                break
            del self._announced[first_key]
            self.checkpoint = first_sequence
        if not self._announced and self._caught_up_at is not None:
            self.checkpoint = self._caught_up_at

    def caught_up(self, sequence: Any) -> None:
        """Everything up to ``sequence`` has been announced."""
        self._caught_up_at = sequence
        if not self._announced:
            self.checkpoint = sequence

    @property
    def pending_count(self) -> int:
        return len(self._announced)
