"""The plain values the store hands out and takes in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fieldsync.store.versions import HLV, VersionWithLegacy, parse_stored


@dataclass(frozen=True)
class Document:
    """A document's current (winning) revision with its decoded body. ``rev_id`` is its
    rev-tree revID (Couchbase Lite's ``revisionID``); ``version`` its version vector (``None``
    for a document nobody has changed since the version-vector upgrade)."""

    doc_id: str
    rev_id: str
    sequence: int
    deleted: bool
    body: dict[str, Any]
    version: HLV | None = None


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
    #: The vector this revision carried, as stored (``None`` before the upgrade).
    vector_text: str | None = None

    @property
    def version(self) -> HLV | None:
        """The vector this revision carried (``None`` for revisions from before the upgrade),
        parsed when asked for."""
        return parse_stored(self.vector_text)


@dataclass(frozen=True)
class Change:
    """An entry of a collection's changes feed: a document at its latest sequence."""

    sequence: int
    doc_id: str
    rev_id: str
    deleted: bool
    body_size: int
    #: The document's current vector as stored; ``None`` for a legacy document.
    vector_text: str | None = None

    @property
    def version(self) -> HLV | None:
        """The document's current vector; ``None`` for a legacy document (CBMobile_4 peers
        then see ``rev_id``). Parsed when asked for: a 3.x session never asks (perf)."""
        return parse_stored(self.vector_text)


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
    #: A legacy revID pushed by a 4.x phone in a CBMobile_4 session: its vector becomes the
    #: RTE form of ``rev_id`` (Sync Gateway's rule) instead of a new device version.
    from_vv_peer: bool = False


@dataclass(frozen=True)
class IncomingVersioned:
    """A revision a 4.x phone pushed as a version: ``version`` is its vector plus legacy tail
    (``versions.parse_rev_history``). ``peer`` identifies the phone for the per-peer
    ``lastLegacyRevID`` bookkeeping (``None``: not recorded). With ``no_conflicts`` off (never
    the case for LiteCore 4.x pushers) a conflicting revision is kept as a rev-tree branch
    instead of being refused."""

    doc_id: str
    version: VersionWithLegacy
    deleted: bool
    body: bytes
    peer: str | None = None
    no_conflicts: bool = True


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
