"""Resolving the conflicts the active replicator pulls, as Couchbase Lite does.

A conflict: a revision pulled from the remote (``remote``) that does not descend from the
document's current local revision (``local``). A :class:`ConflictResolver` picks the outcome;
the default is Couchbase Lite's: a deletion wins, then the revision with the higher
generation, then the higher revID. As in Couchbase Lite, the outcome is stored as a revision
*on top of the remote one* (the losing local branch is closed with a tombstone), so it pushes
back to the remote without a new conflict; and since revIDs are digests of parent and body,
every client that resolves the same conflict the same way makes the same revision.

:func:`decide` is pure; :func:`apply` writes the outcome through the store.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fieldsync.replication.ports import Transactional
from fieldsync.store import IncomingRevision, InsertResult, revid

__all__ = [
    "Conflict",
    "ConflictResolver",
    "ConflictingRevision",
    "DefaultConflictResolver",
    "Outcome",
    "Resolution",
    "ResolvableCollection",
    "apply",
    "decide",
]


@dataclass(frozen=True)
class ConflictingRevision:
    """One side of a conflict: a revision and its body (``{}`` for a deletion)."""

    doc_id: str
    rev_id: str
    deleted: bool
    body: dict[str, Any]

    @property
    def generation(self) -> int:
        return revid.generation(self.rev_id)


@dataclass(frozen=True)
class Conflict:
    """Couchbase Lite's ``Conflict``: the document ID and both sides."""

    doc_id: str
    local: ConflictingRevision
    remote: ConflictingRevision


#: What a resolver returns: one side as it is, a merged body, or None to delete the document.
Resolution = ConflictingRevision | dict[str, Any] | None


class ConflictResolver(Protocol):
    """Couchbase Lite's ``ConflictResolver``: return ``conflict.local``, ``conflict.remote``,
    a merged body (dict) or ``None`` (the document is deleted)."""

    def resolve(self, conflict: Conflict) -> Resolution: ...


class DefaultConflictResolver:
    """Couchbase Lite's default: deletion wins, then higher generation, then higher revID."""

    def resolve(self, conflict: Conflict) -> Resolution:
        local, remote = conflict.local, conflict.remote
        if remote.deleted:
            return remote
        if local.deleted:
            return local
        if local.generation != remote.generation:
            return local if local.generation > remote.generation else remote
        return local if local.rev_id > remote.rev_id else remote


@dataclass(frozen=True)
class Outcome:
    """What to store: the remote revision stays the winner (``body`` None and not ``delete``),
    or a new revision on top of it with ``body``, or a tombstone on top of it (``delete``)."""

    keep_remote: bool
    body: dict[str, Any] | None = None
    delete: bool = False


def decide(conflict: Conflict, resolution: Resolution) -> Outcome:
    """Turn a resolver's answer into what to store (pure)."""
    remote = conflict.remote
    if resolution is None:
        return Outcome(keep_remote=remote.deleted, delete=not remote.deleted)
    if isinstance(resolution, ConflictingRevision):
        if resolution.rev_id == remote.rev_id:
            return Outcome(keep_remote=True)
        if resolution.deleted:
            return Outcome(keep_remote=remote.deleted, delete=not remote.deleted)
        return Outcome(keep_remote=False, body=dict(resolution.body))
    if not isinstance(resolution, dict):
        raise TypeError(f"a conflict resolver returned {type(resolution).__name__}")
    return Outcome(keep_remote=False, body=dict(resolution))


class ResolvableCollection(Protocol):
    """The store calls conflict resolution needs."""

    def rev_history(self, doc_id: str, rev_id: str) -> list[str]: ...

    def leaf_revisions(self, doc_id: str) -> list[str]: ...

    def resolve_conflict(
        self, doc_id: str, *, winning_rev: str, losing_rev: str, body: dict[str, Any] | None = None
    ) -> Any: ...

    def delete_document(self, doc_id: str, *, expected_rev: str | None = None) -> Any: ...

    def save_document(
        self, doc_id: str | None, body: dict[str, Any], *, expected_rev: str | None = None
    ) -> Any: ...

    def purge_document(self, doc_id: str) -> bool: ...

    def insert_revisions(self, revs: Sequence[IncomingRevision]) -> list[InsertResult]: ...

    @property
    def database(self) -> Transactional: ...


def apply(collection: ResolvableCollection, conflict: Conflict, outcome: Outcome) -> None:
    """Store ``outcome`` on top of the remote revision.

    A live outcome: the local branch is closed with a tombstone and the remote revision (or a
    new revision on top of it) is the live winner. A deletion: the document becomes exactly
    the remote revision (the local branch is dropped: a tombstone closing it could outrank the
    remote one and leave this side on a different revID than every other), then, if the remote
    is live, a tombstone on top of it.
    """
    doc_id, local, remote = conflict.doc_id, conflict.local, conflict.remote
    if outcome.delete or (outcome.keep_remote and remote.deleted):
        history = collection.rev_history(doc_id, remote.rev_id)
        with collection.database.transaction():
            collection.purge_document(doc_id)
            body = json.dumps(remote.body, separators=(",", ":")).encode()
            stored = collection.insert_revisions(
                [IncomingRevision(doc_id, remote.rev_id, history[1:], remote.deleted, body)]
            )
            if stored[0].status >= 300:
                raise ValueError(f"re-storing {remote.rev_id}: {stored[0].message}")
            if outcome.delete and not remote.deleted:
                collection.delete_document(doc_id, expected_rev=remote.rev_id)
        return
    leaves = collection.leaf_revisions(doc_id)
    if local.rev_id in leaves and not local.deleted:
        collection.resolve_conflict(
            doc_id,
            winning_rev=remote.rev_id,
            losing_rev=local.rev_id,
            body=None if outcome.keep_remote else outcome.body,
        )
    elif not outcome.keep_remote and outcome.body is not None:
        # The local side was a deletion and the resolver chose a body: on top of the remote.
        collection.save_document(doc_id, outcome.body, expected_rev=remote.rev_id)
