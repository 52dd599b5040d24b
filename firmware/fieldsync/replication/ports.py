"""What replication needs from the document store, as ``typing.Protocol``s.

Replication is written against these, never against ``Any``: ``fieldsync.store.Database``,
``Collection`` and ``BlobStore`` satisfy them structurally (the store does not import this
module; ``tests/replication/test_ports.py`` checks the fit with mypy-visible assignments).
Add a method here before replication starts calling it on the store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from fieldsync.replication.decisions import RevisionLookup
from fieldsync.store.blobs import BlobWriter
from fieldsync.store.models import (
    Change,
    IncomingRevision,
    IncomingVersioned,
    InsertResult,
    Revision,
)
from fieldsync.store.versions import HLV, Version


class ReplicatedCollection(RevisionLookup, Protocol):
    """One collection of the store, as a feed (pusher) and a destination (puller)."""

    @property
    def full_name(self) -> str: ...

    def get_revision(
        self, doc_id: str, rev_id: str | None = None, *, with_body: bool = True
    ) -> Revision | None: ...

    def get_revisions(
        self, wanted: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], Revision | None]: ...

    def rev_history(self, doc_id: str, rev_id: str) -> list[str]: ...

    def changes_since(
        self,
        since: int,
        *,
        limit: int | None = None,
        doc_ids: Iterable[str] | None = None,
        active_only: bool = False,
    ) -> list[Change]: ...

    def insert_revisions(self, revs: Sequence[IncomingRevision]) -> list[InsertResult]: ...

    # -- version vectors (CBMobile_4 sessions; store.versions / VV-NOTES) --------------------

    def check_proposed_version(
        self,
        doc_id: str,
        rev: Version | str,
        parent: Version | str | None,
        proposed: HLV | None = None,
    ) -> tuple[int, str | None]: ...

    def has_version(self, doc_id: str, version: Version | str) -> bool: ...

    def get_revision_by_version(
        self, doc_id: str, version: Version, *, with_body: bool = True
    ) -> Revision | None: ...

    def get_peer_legacy(self, doc_id: str, peer: str) -> str | None: ...

    def set_peer_legacy(self, doc_id: str, peer: str, legacy_rev: str) -> None: ...

    def insert_versioned(self, revs: Sequence[IncomingVersioned]) -> list[InsertResult]: ...


class BlobAccess(Protocol):
    """The content-addressed blob store of a database."""

    def has(self, digest: str) -> bool: ...

    def claim(self, digest: str) -> bool:
        """``has``, and protect the blob from garbage collection for the grace period: use it
        when skipping a fetch because the blob is already stored (issue 14 GC rule)."""
        ...

    def read(self, digest: str) -> bytes: ...

    def writer(self, expected_digest: str | None = None) -> BlobWriter: ...


class Transactional(Protocol):
    """A database that can group writes into one durable transaction."""

    def transaction(self) -> AbstractContextManager[object]:
        """One durable transaction around several writes (nested ones are savepoints)."""
        ...


class ReplicatedDatabase(Transactional, Protocol):
    """A database of the store: checkpoints, local values, blobs and change notification."""

    @property
    def blobs(self) -> BlobAccess: ...

    @property
    def default_collection(self) -> ReplicatedCollection: ...

    def get_checkpoint(self, client_id: str) -> tuple[bytes, str] | None: ...

    def set_checkpoint(self, client_id: str, body: bytes, rev: str | None) -> str: ...

    def get_local(self, key: str) -> bytes | None: ...

    def set_local(self, key: str, value: bytes | None) -> None: ...

    def add_change_listener(
        self, callback: Callable[[ReplicatedCollection, int], None]
    ) -> object: ...

    def remove_change_listener(self, token: object) -> None: ...

    def poll_changes(self, *, wait: bool = True) -> bool: ...
