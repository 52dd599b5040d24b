"""Validation of document IDs and of scope and collection names (LiteCore's rules)."""

from __future__ import annotations

import re
import string

from fieldsync.store.errors import InvalidInput

#: Longest document ID, in UTF-8 bytes.
MAX_DOC_ID_BYTES = 240
#: Longest scope or collection name.
MAX_COLLECTION_NAME = 251
DEFAULT_SCOPE = "_default"
DEFAULT_COLLECTION = "_default"

_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f]")
_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "_-%")


def check_doc_id(doc_id: object) -> str:
    """Return ``doc_id`` if valid, else raise ``InvalidInput``.

    Valid: a string of 1..240 UTF-8 bytes, not starting with ``_``, no control characters.
    """
    if not isinstance(doc_id, str) or not doc_id:
        raise InvalidInput(f"document ID must be a non-empty string, got {doc_id!r}")
    try:
        size = len(doc_id.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInput(f"document ID is not valid Unicode: {doc_id!r}") from None
    if size > MAX_DOC_ID_BYTES:
        raise InvalidInput(f"document ID longer than {MAX_DOC_ID_BYTES} bytes: {doc_id[:40]!r}…")
    if doc_id[0] == "_":
        raise InvalidInput(f"document ID may not start with '_': {doc_id!r}")
    if _CONTROL_CHARS.search(doc_id):
        raise InvalidInput(f"document ID contains control characters: {doc_id!r}")
    return doc_id


def is_valid_collection_name(name: object) -> bool:
    """A scope or collection name: ``_default``, or 1..251 of ``[A-Za-z0-9_%-]`` not starting
    with ``_`` or ``%``."""
    if name == DEFAULT_COLLECTION:
        return True
    return (
        isinstance(name, str)
        and 1 <= len(name) <= MAX_COLLECTION_NAME
        and _NAME_CHARS.issuperset(name)
        and name[0] not in "_%"
    )


def check_collection_name(name: object, what: str = "collection") -> str:
    if not is_valid_collection_name(name):
        raise InvalidInput(f"invalid {what} name {name!r}")
    return name  # type: ignore[return-value]


def split_full_name(full_name: str) -> tuple[str, str]:
    """``"scope.name"`` → ``(scope, name)``; a bare ``"name"`` is in the default scope."""
    scope, dot, name = full_name.rpartition(".")
    if not dot:
        scope = DEFAULT_SCOPE
    return check_collection_name(scope, "scope"), check_collection_name(name)
