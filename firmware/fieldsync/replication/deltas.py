"""Delta sync glue: when to send a delta, and the errors LiteCore expects when one fails.

The delta format itself lives in ``fieldsync.delta``; this module decides when it pays and
maps failures to the error replies that make LiteCore resend the full body (CBL-986).
"""

from __future__ import annotations

from collections.abc import Callable

from fieldsync.delta import DeltaError, apply_delta_json, revision_delta
from fieldsync.replication.errors import DeltaApplyError
from fieldsync.replication.ports import ReplicatedCollection

#: A Pusher delta encoder: (collection, doc_id, revision body, known ancestor revIDs) ->
#: (deltaSrc revID, delta JSON bytes), or None to send the full body.
DeltaEncoder = Callable[[ReplicatedCollection, str, bytes, list[str]], "tuple[str, bytes] | None"]

#: LiteCore error codes (C4ErrorCode) for delta failures. On the wire LiteCore sends both as
#: HTTP 422, and retries without a delta on HTTP/422, LiteCore/31 or LiteCore/32.
DELTA_BASE_UNKNOWN = 31
CORRUPT_DELTA = 32
DELTA_ERROR_DOMAIN = "HTTP"
DELTA_ERROR_STATUS = 422


def is_delta_error(domain: str | None, code: int | None) -> bool:
    """True for the error replies after which the sender should retry without a delta."""
    return (domain == "LiteCore" and code in (DELTA_BASE_UNKNOWN, CORRUPT_DELTA)) or (
        domain == "HTTP" and code == 422
    )


def apply_received_delta(
    collection: ReplicatedCollection, doc_id: str, base_rev_id: str, delta: bytes
) -> bytes:
    """The full JSON body a received delta stands for, or DeltaApplyError."""
    base = collection.get_revision(doc_id, base_rev_id)
    if base is None or base.body is None:
        raise DeltaApplyError(
            DELTA_BASE_UNKNOWN, f"base revision {base_rev_id} of '{doc_id}' is not available"
        )
    try:
        return apply_delta_json(base.body, delta)
    except (DeltaError, ValueError) as exc:
        raise DeltaApplyError(CORRUPT_DELTA, f"cannot apply delta to '{doc_id}': {exc}") from exc


def make_delta_encoder() -> DeltaEncoder:
    """A Pusher delta encoder: a delta against the newest ancestor the peer has and whose body
    we still keep, when LiteCore's rule says it pays (see ``fieldsync.delta.revision_delta``)."""

    def encode(
        collection: ReplicatedCollection, doc_id: str, body: bytes, known: list[str]
    ) -> tuple[str, bytes] | None:
        for base_rev_id in known:
            base = collection.get_revision(doc_id, base_rev_id)
            if base is None or base.body is None or base.deleted:
                continue
            delta = revision_delta(base.body, body)
            return None if delta is None else (base_rev_id, delta)
        return None

    return encode
