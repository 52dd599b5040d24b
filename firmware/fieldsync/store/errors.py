"""Exceptions raised by the document store, each with the HTTP-like status it maps to."""

from __future__ import annotations

from fieldsync.errors import FieldsyncError


class StoreError(FieldsyncError):
    """Base class of every error the store raises on purpose."""

    status: int = 500


class InvalidInput(StoreError, ValueError):
    """A bad document ID, collection name, body, revID or digest (400)."""

    status = 400


class NotFoundError(StoreError, KeyError):
    """A document, revision, collection, database or blob that does not exist (404).

    Also a ``KeyError``, so ``except KeyError`` catches a missing blob.
    """

    status = 404

    def __str__(self) -> str:  # KeyError would quote the message
        return Exception.__str__(self)


class ConflictError(StoreError):
    """A write based on a revision that is not the document's current one (409)."""

    status = 409

    def __init__(self, message: str, current_rev: str | None = None) -> None:
        super().__init__(message)
        self.current_rev = current_rev


class CheckpointConflict(StoreError):
    """``set_checkpoint`` with a revision that does not match the stored one (409)."""

    status = 409

    def __init__(self, message: str, current_rev: str | None = None) -> None:
        super().__init__(message)
        self.current_rev = current_rev
