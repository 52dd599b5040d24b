"""Fleece's incremental string delta: ``"<ops>"`` in ``[ops, 0, 2]``.

The ops string walks the old string's UTF-8 bytes from the start; each op is a decimal byte count
followed by a code:

* ``n=`` copy the next *n* old bytes,
* ``n-`` skip (delete) the next *n* old bytes,
* ``n+<n bytes>|`` insert the *n* bytes that follow the ``+``; the ``|`` is a check mark.

The counts of ``=`` and ``-`` ops must add up to the old string's byte length.

:func:`create_string_ops` reproduces Fleece's ``JSONDelta::createStringDelta``: it diffs the
bytes (see :mod:`.textdiff`), walks the diff in diff-match-patch's patch groups (4-byte margin),
widens each edit to whole UTF-8 characters, and gives up when the new string is shorter than the
minimum length or the ops would not be clearly smaller than the new string. Unlike Fleece, it
then checks its own result and gives up instead of returning ops that would not reproduce the
new string (Fleece can emit such ops in rare byte-level corner cases).
"""

from __future__ import annotations

from .errors import DeltaError
from .textdiff import DELETE, EQUAL, INSERT, Diff, diff_texts

__all__ = [
    "DEFAULT_MIN_STRING_DIFF_LENGTH",
    "DEFAULT_TEXT_DIFF_TIMEOUT",
    "apply_string_ops",
    "create_string_ops",
]

#: Fleece's ``JSONDelta::gMinStringDiffLength``: new strings shorter than this (in UTF-8 bytes)
#: are always sent whole.
DEFAULT_MIN_STRING_DIFF_LENGTH = 60
#: Fleece's ``JSONDelta::gTextDiffTimeout`` in seconds.
DEFAULT_TEXT_DIFF_TIMEOUT = 0.25

_PATCH_MARGIN = 4  # diff-match-patch Patch_Margin
_OVERHEAD = 6  # Fleece gives up once len(ops) + 6 >= len(new)

_DIGITS = frozenset(b"0123456789")


def create_string_ops(
    old: str,
    new: str,
    *,
    min_length: int = DEFAULT_MIN_STRING_DIFF_LENGTH,
    timeout: float | None = DEFAULT_TEXT_DIFF_TIMEOUT,
) -> str | None:
    """Return the Fleece ops string turning ``old`` into ``new``, or None if not worth it.

    None when ``new`` is shorter than ``min_length`` UTF-8 bytes, when the ops would not be
    clearly smaller than ``new``, or when Fleece's algorithm would produce wrong ops.
    ``timeout`` in seconds; None or <= 0 means unbounded (and no half-match shortcut).
    """
    old_b = old.encode("utf-8", "surrogatepass")
    new_b = new.encode("utf-8", "surrogatepass")
    if len(new_b) < min_length or old_b == new_b:
        return None
    ops = _encode_ops(old_b, new_b, diff_texts(old_b, new_b, timeout))
    if ops is None:
        return None
    try:
        if _apply_ops(old_b, ops) != new_b:
            return None
        return ops.decode("utf-8", "surrogatepass")
    except (DeltaError, UnicodeDecodeError):
        return None


def apply_string_ops(old: str, ops: str) -> str:
    """Apply a Fleece ops string to ``old``; raise :class:`DeltaError` if it does not fit."""
    if not ops:
        raise DeltaError("empty text delta")
    try:
        old_b = old.encode("utf-8", "surrogatepass")
        ops_b = ops.encode("utf-8", "surrogatepass")
    except UnicodeEncodeError as exc:  # pragma: no cover - surrogatepass encodes every str
        raise DeltaError(f"text delta is not encodable: {exc}") from None
    try:
        return _apply_ops(old_b, ops_b).decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        raise DeltaError("text delta produces invalid UTF-8") from None


def _apply_ops(old: bytes, ops: bytes) -> bytes:
    out = bytearray()
    pos = 0  # position in old
    i = 0  # position in ops
    n_ops = len(ops)
    while i < n_ops:
        j = i
        while j < n_ops and ops[j] in _DIGITS:
            j += 1
        if j == i:
            raise DeltaError(f"text delta: expected a byte count at offset {i}")
        if j == n_ops:
            raise DeltaError(f"text delta: byte count at offset {i} has no operation")
        count = int(ops[i:j])
        op = ops[j]
        i = j + 1
        if op == 0x3D:  # '='
            if pos + count > len(old):
                raise DeltaError(
                    f"text delta copies {count} bytes at {pos}, past the end of the "
                    f"{len(old)}-byte string"
                )
            out += old[pos : pos + count]
            pos += count
        elif op == 0x2D:  # '-'
            if pos + count > len(old):
                raise DeltaError(
                    f"text delta deletes {count} bytes at {pos}, past the end of the "
                    f"{len(old)}-byte string"
                )
            pos += count
        elif op == 0x2B:  # '+'
            if i + count > n_ops:
                raise DeltaError(f"text delta: insertion of {count} bytes runs past its end")
            out += ops[i : i + count]
            i += count
            if i >= n_ops or ops[i] != 0x7C:  # '|'
                raise DeltaError(f"text delta: insertion not terminated by '|' at offset {i}")
            i += 1
        else:
            raise DeltaError(f"text delta: unknown operation {chr(op)!r} at offset {j}")
    if pos != len(old):
        raise DeltaError(f"text delta covers {pos} of the string's {len(old)} bytes")
    return bytes(out)


def _encode_ops(old: bytes, new: bytes, diffs: list[Diff]) -> bytes | None:
    """Fleece's walk over diff-match-patch's patches, producing the ops string."""
    out = bytearray()
    last_old = 0
    for start_old, start_new, patch in _patches(diffs):
        old_pos, new_pos = start_old, start_new
        for op, text in patch:
            length = len(text)
            if op == EQUAL:
                old_pos += length
                new_pos += length
            else:
                if op == DELETE:
                    old_pos, length = _snap_to_character(old_pos, length, old)
                else:
                    new_pos, length = _snap_to_character(new_pos, length, new)
                if old_pos < 0 or new_pos < 0 or old_pos < last_old:
                    return None  # Fleece would fail (exception or assertion) here
                if old_pos > last_old:
                    out += b"%d=" % (old_pos - last_old)
                if op == DELETE:
                    out += b"%d-" % length
                    old_pos += length
                else:
                    out += b"%d+" % length
                    out += new[new_pos : new_pos + length]
                    out += b"|"
                    new_pos += length
                last_old = old_pos
            if len(out) + _OVERHEAD >= len(new):
                return None  # not clearly smaller than the string itself
    if len(old) > last_old:
        out += b"%d=" % (len(old) - last_old)
    return bytes(out)


def _patches(diffs: list[Diff]) -> list[tuple[int, int, list[Diff]]]:
    """Group diffs like diff-match-patch's ``patch_make``: (old start, new start, diffs).

    Starts are positions in the original texts. As in the original, an equality of up to
    8 bytes stays inside the current patch unless it equals the last diff of the whole list,
    and one of 8 or more bytes closes the patch; context padding is left out, since it only
    moves both starts back by the same amount it then adds again.
    """
    patches: list[tuple[int, int, list[Diff]]] = []
    current: list[Diff] = []
    start_old = start_new = 0
    pos_old = pos_new = 0
    last = diffs[-1] if diffs else None
    for d in diffs:
        op, text = d
        if not current and op != EQUAL:
            start_old, start_new = pos_old, pos_new
        if op != EQUAL:
            current.append(d)
        else:
            if len(text) <= 2 * _PATCH_MARGIN and current and d != last:
                current.append(d)
            if len(text) >= 2 * _PATCH_MARGIN and current:
                patches.append((start_old, start_new, current))
                current = []
        if op != INSERT:
            pos_old += len(text)
        if op != DELETE:
            pos_new += len(text)
    if current:
        patches.append((start_old, start_new, current))
    return patches


def _snap_to_character(pos: int, length: int, text: bytes) -> tuple[int, int]:
    """Widen the byte range so neither end splits a UTF-8 multibyte character."""
    while 0 <= pos < len(text) and (text[pos] & 0xC0) == 0x80:
        pos -= 1
        length += 1
    while pos + length < len(text) and (text[pos + length] & 0xC0) == 0x80:
        length += 1
    return pos, length
