"""The error raised when a delta cannot be applied."""

from __future__ import annotations

from fieldsync.errors import FieldsyncError

__all__ = ["DeltaError"]


class DeltaError(FieldsyncError, ValueError):
    """A delta is malformed, or does not fit the value it is applied to.

    The replication layer answers such a ``rev`` so that the sender retries with the full body
    (LiteCore: BLIP error domain ``HTTP``, code 422).
    """
