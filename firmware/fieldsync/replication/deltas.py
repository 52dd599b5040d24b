"""Delta sync glue: when to send a delta, and the errors LiteCore expects when one fails.

The delta format itself lives in ``fieldsync.delta``; this module decides when it pays and
maps failures to the error replies that make LiteCore resend the full body (CBL-986).
"""

from __future__ import annotations

from typing import Any

#: LiteCore error codes (C4ErrorCode) for delta failures, sent in the "LiteCore" domain.
DELTA_BASE_UNKNOWN = 30
CORRUPT_DELTA = 31

#: LiteCore only sends a delta for bodies at least this big, and only when the delta is at most
#: this fraction of the body.
MIN_BODY_SIZE_FOR_DELTA = 200
MAX_DELTA_RATIO = 1.2


def is_delta_error(domain: str | None, code: int | None) -> bool:
    """True for the error replies after which the sender should retry without a delta."""
    return (domain == "LiteCore" and code in (DELTA_BASE_UNKNOWN, CORRUPT_DELTA)) or (
        domain == "HTTP" and code == 422
    )


class DeltaApplyError(Exception):
    """A received delta could not be applied; ``code`` is the LiteCore error to answer with."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def apply_received_delta(collection: Any, doc_id: str, base_rev_id: str, delta: bytes) -> bytes:
    """The full JSON body a received delta stands for, or DeltaApplyError."""
    from fieldsync.delta import DeltaError, apply_delta_json

    base = collection.get_revision(doc_id, base_rev_id)
    if base is None or base.body is None:
        raise DeltaApplyError(
            DELTA_BASE_UNKNOWN, f"base revision {base_rev_id} of '{doc_id}' is not available"
        )
    try:
        return apply_delta_json(base.body, delta)
    except (DeltaError, ValueError) as exc:
        raise DeltaApplyError(CORRUPT_DELTA, f"cannot apply delta to '{doc_id}': {exc}") from exc


def make_delta_encoder() -> Any:
    """A Pusher delta encoder: delta against the newest known ancestor whose body we still have."""

    def encode(collection: Any, doc_id: str, body: bytes, known: list[str]) -> Any:
        if len(body) < MIN_BODY_SIZE_FOR_DELTA:
            return None
        from fieldsync.delta import create_delta_json

        for base_rev_id in known:
            base = collection.get_revision(doc_id, base_rev_id)
            if base is None or base.body is None:
                continue
            delta = create_delta_json(base.body, body)
            if delta is None or len(delta) > len(body) * MAX_DELTA_RATIO:
                return None
            return base_rev_id, delta
        return None

    return encode
