"""Document bodies: JSON objects, stored as canonical JSON text.

Canonical form: sorted keys, compact separators, non-ASCII kept as UTF-8, no NaN/Infinity. The
revID digest is computed over this form, so equal bodies always hash equally.
"""

from __future__ import annotations

import json
from typing import Any

from fieldsync import fastjson, safejson
from fieldsync.store.errors import InvalidInput

#: Top-level keys that carry revision metadata in other representations; never part of a body.
SPECIAL_KEYS = frozenset(("_id", "_rev", "_deleted", "_revisions"))

EMPTY_BODY = b"{}"


def canonical_json(body: dict[str, Any]) -> bytes:
    """Encode a body canonically; ``InvalidInput`` if it is not JSON-serialisable."""
    try:
        return json.dumps(
            body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"document body is not valid JSON: {exc}") from None


def clean_body(body: object) -> dict[str, Any]:
    """Check that ``body`` is a dict with string keys and drop the special metadata keys."""
    if not isinstance(body, dict):
        raise InvalidInput(f"document body must be a JSON object, got {type(body).__name__}")
    if not SPECIAL_KEYS.isdisjoint(body):
        body = {k: v for k, v in body.items() if k not in SPECIAL_KEYS}
    return body


def encode_body(body: object) -> bytes:
    """A body given by the application, cleaned and canonically encoded."""
    return canonical_json(clean_body(body))


def decode_incoming(data: bytes | bytearray | memoryview | str, *, deleted: bool) -> bytes:
    """Canonical JSON of a body received as JSON bytes; ``InvalidInput`` if it is not an object.

    An empty body is accepted for a deletion and means ``{}``.
    """
    if isinstance(data, memoryview | bytearray):
        data = bytes(data)
    if not data:
        if deleted:
            return EMPTY_BODY
        raise InvalidInput("document body is empty")
    try:
        parsed = safejson.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"document body is not valid JSON: {exc}") from None
    try:  # the same bytes canonical_json gives, faster (perf, issue 13)
        return fastjson.dumps_canonical(clean_body(parsed))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"document body is not valid JSON: {exc}") from None


def decode_stored(data: bytes) -> dict[str, Any]:
    """The dict of a stored (canonical) body."""
    body: dict[str, Any] = json.loads(data)
    return body
