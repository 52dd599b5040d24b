"""Exceptions raised by the document store, each with the HTTP-like status it maps to."""

from __future__ import annotations

import errno
import sqlite3

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


class StorageError(StoreError):
    """The device's storage failed, not the data: full (507), busy (503) or broken (500).

    Made by :func:`storage_error` from the ``sqlite3``/``OSError`` a write raised.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_IO_ERRNOS = {errno.EIO, errno.EROFS, errno.ENXIO, errno.ENODEV}


def storage_error(exc: BaseException) -> StorageError | None:
    """What ``exc`` says about the storage (full disk, locked database, I/O error), or None if
    it is no storage failure."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, sqlite3.Error):
        text = str(exc).lower()
        if "full" in text:
            return StorageError(507, "insufficient storage: the device's disk is full")
        if "locked" in text or "busy" in text:
            return StorageError(503, "the database is busy (locked by another process)")
        if "i/o" in text or "readonly" in text or "read-only" in text or "malformed" in text:
            return StorageError(500, f"storage error on the device: {exc}")
        return None
    if isinstance(exc, OSError) and exc.errno is not None:
        if exc.errno in _FULL_ERRNOS:
            return StorageError(507, "insufficient storage: the device's disk is full")
        if exc.errno in _IO_ERRNOS:
            return StorageError(500, f"storage error on the device: {exc.strerror}")
    cause = exc.__cause__ or exc.__context__
    return storage_error(cause) if cause is not None and cause is not exc else None
