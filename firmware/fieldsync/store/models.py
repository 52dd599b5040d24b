"""The plain values the store hands out and takes in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Document:
    """A document's current (winning) revision with its decoded body."""

    doc_id: str
    rev_id: str
    sequence: int
    deleted: bool
    body: dict[str, Any]


@dataclass(frozen=True)
class Revision:
    """One revision of a document. ``body`` is JSON bytes, or ``None`` when the body was not
    asked for or is no longer stored (only the revID is known). ``sequence`` is the sequence the
    revision was stored at. Use ``Collection.rev_history`` for its ancestry."""

    doc_id: str
    rev_id: str
    sequence: int
    deleted: bool
    body: bytes | None


@dataclass(frozen=True)
class Change:
    """An entry of a collection's changes feed: a document at its latest sequence."""

    sequence: int
    doc_id: str
    rev_id: str
    deleted: bool
    body_size: int


@dataclass(frozen=True)
class IncomingRevision:
    """A revision received from a peer. ``history`` holds its ancestors, newest first, without
    ``rev_id`` itself. ``body`` is JSON bytes (``{}`` or empty for a deletion)."""

    doc_id: str
    rev_id: str
    history: Sequence[str]
    deleted: bool
    body: bytes
    no_conflicts: bool = False


@dataclass(frozen=True)
class InsertResult:
    """Outcome of inserting one ``IncomingRevision``: 201 inserted, 200 already present,
    409 conflict (``current_rev`` = the document's current revID), 400 bad revision."""

    status: int
    message: str = ""
    current_rev: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in (200, 201)
