"""The exceptions of the replication layer."""

from __future__ import annotations

from fieldsync.errors import FieldsyncError


class ReplicationError(FieldsyncError):
    """The peer refused a replication step; the message names the collection and the reason."""


class RoutingError(FieldsyncError):
    """A message that addresses no collection it may address; answered with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BlobFetchError(FieldsyncError):
    """A blob a revision references could not be fetched or verified."""


class BlobProofError(BlobFetchError):
    """The peer named a blob we hold but did not prove it has its bytes (answered 403)."""


class DeltaApplyError(FieldsyncError):
    """A received delta could not be applied; ``code`` is the LiteCore error to answer with."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
