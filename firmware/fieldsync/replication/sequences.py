"""Tracking which announced sequences are finished, to know what a checkpoint may record."""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Any


class SequenceTracker:
    """Sequences in announcement order; the checkpoint is the last of the finished prefix.

    Sequences are opaque (a Sync Gateway's may be strings or JSON arrays); only their order of
    announcement counts. Pure and synchronous. A pusher has thousands announced at once (its
    revisions awaiting replies), so an integer or string sequence is its own key, and only
    order, membership and the finished ones are kept (~60 bytes each, not ~250).
    """

    def __init__(self, checkpoint: Any = None) -> None:
        self._order: deque[Any] = deque()  # announced sequences, oldest first
        self._announced: set[Hashable] = set()
        self._done: set[Hashable] = set()  # finished, behind an unfinished one
        self.checkpoint = checkpoint
        self._caught_up_at: Any = None

    @staticmethod
    def _key(sequence: Any) -> Hashable:
        kind = type(sequence)
        return sequence if kind is int or kind is str else (kind.__name__, repr(sequence))

    def add(self, sequence: Any) -> None:
        """Announce a sequence that is now in progress."""
        key = self._key(sequence)
        if key in self._announced:  # announced again: it keeps its first place
            self._done.discard(key)
            return
        self._announced.add(key)
        self._order.append(sequence)

    def complete(self, sequence: Any) -> None:
        """Mark an announced sequence finished (synced, skipped or failed for good)."""
        key = self._key(sequence)
        if key not in self._announced:
            return
        self._done.add(key)
        order, done, key_of = self._order, self._done, self._key
        while order:
            first = key_of(order[0])
            if first not in done:
                break
            self.checkpoint = order.popleft()
            done.discard(first)
            self._announced.discard(first)
        if not order and self._caught_up_at is not None:
            self.checkpoint = self._caught_up_at

    def caught_up(self, sequence: Any) -> None:
        """Everything up to ``sequence`` has been announced."""
        self._caught_up_at = sequence
        if not self._order:
            self.checkpoint = sequence

    @property
    def pending_count(self) -> int:
        return len(self._order)
