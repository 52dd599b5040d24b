"""Revision IDs of the revision-tree model: ``<generation>-<hex digest>``.

This is the only module that knows what a revID looks like. Everything else treats revIDs as
opaque strings and asks here for their generation or their order. The other spelling of a
version, the version vector of CBMobile_4, lives in ``versions``, which builds on this module
(legacy revIDs, their RTE form, and comparisons across the two spellings).

Parsing follows LiteCore's rules for tree revIDs: a decimal generation from 1 to 2**32-1, a dash,
then a non-empty, even-length, lowercase hex digest that fits LiteCore's 42-byte binary revID
beside the varint-encoded generation (so at most 37..41 bytes). Revisions this
store creates use a SHA-1 digest, 40 hex digits.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import NamedTuple

from fieldsync.errors import FieldsyncError

#: Largest generation LiteCore accepts (it stores it as a 32-bit unsigned number).
MAX_GENERATION = 2**32 - 1
#: Size of LiteCore's binary revID buffer: varint generation followed by the digest bytes.
_BINARY_REVID_BYTES = 42

#: Generation without leading zeros, a dash, then an even number of lowercase hex digits.
_TREE_REVID = re.compile(r"([1-9][0-9]{0,9})-((?:[0-9a-f]{2})+)", re.ASCII)


class BadRevisionID(FieldsyncError, ValueError):
    """A string that is not a valid tree revID."""


class ParsedRevID(NamedTuple):
    generation: int
    digest: str  # lowercase hex


def parse(rev_id: str) -> ParsedRevID:
    """Split a revID into generation and hex digest; ``BadRevisionID`` if malformed."""
    if not isinstance(rev_id, str):
        raise BadRevisionID(f"revID must be a string, got {type(rev_id).__name__}")
    return _parse(rev_id)


@functools.lru_cache(maxsize=1024)
def _parse(rev_id: str) -> ParsedRevID:
    match = _TREE_REVID.fullmatch(rev_id)
    if match is None:
        raise BadRevisionID(f"malformed revID {rev_id!r} (expected <generation>-<lowercase hex>)")
    generation = int(match[1])
    digest = match[2]
    varint_bytes = 1 + (generation.bit_length() - 1) // 7
    if generation > MAX_GENERATION or len(digest) // 2 > _BINARY_REVID_BYTES - varint_bytes:
        raise BadRevisionID(f"revID generation or digest too large in {rev_id!r}")
    return ParsedRevID(generation, digest)


def is_valid(rev_id: object) -> bool:
    """Whether ``rev_id`` is a well-formed tree revID."""
    try:
        parse(rev_id)  # type: ignore[arg-type]
    except BadRevisionID:
        return False
    return True


def generation(rev_id: str) -> int:
    """The generation number of a revID."""
    return parse(rev_id).generation


def sort_key(rev_id: str) -> tuple[int, str]:
    """Key ordering revIDs as LiteCore does: by generation, then by digest bytes.

    Comparing lowercase hex strings orders them exactly like the digest bytes they encode.
    """
    parsed = parse(rev_id)
    return parsed.generation, parsed.digest


def compare(a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` orders before, equal to, or after ``b``."""
    ka, kb = sort_key(a), sort_key(b)
    return (ka > kb) - (ka < kb)


def make(parent_rev_id: str | None, deleted: bool, canonical_body: bytes) -> str:
    """The revID of a new child of ``parent_rev_id`` (``None`` for a first revision).

    The digest is SHA-1 over a deterministic encoding: the parent revID's length as one byte and
    its ASCII bytes (length 0 for none), one byte for the deleted flag, then the canonical JSON
    body. The same edit on the same parent therefore always produces the same revID.
    """
    parent = parent_rev_id.encode("ascii") if parent_rev_id else b""
    if len(parent) > 255:
        raise BadRevisionID(f"parent revID too long: {parent_rev_id!r}")
    gen = generation(parent_rev_id) + 1 if parent_rev_id else 1
    if gen > MAX_GENERATION:
        raise BadRevisionID("revision generation overflow")
    sha = hashlib.sha1(usedforsecurity=False)
    sha.update(bytes((len(parent),)))
    sha.update(parent)
    sha.update(b"\x01" if deleted else b"\x00")
    sha.update(canonical_body)
    return f"{gen}-{sha.hexdigest()}"
