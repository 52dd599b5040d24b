"""Test helpers for delta tests: a type-aware canonical form and JSON value strategies."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import strategies as st


def canon(value: Any) -> Any:
    """A hashable, type-tagged form: equal iff the JSON values are equal *and* of equal types.

    ``1``, ``1.0`` and ``True`` all differ; ``0.0`` and ``-0.0`` differ; key order is ignored.
    Independent of ``fieldsync.delta.json_equal`` on purpose.
    """
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, float):
        assert math.isfinite(value)
        return ("float", value.hex())
    if isinstance(value, str):
        return ("str", value)
    if isinstance(value, list):
        return ("list", tuple(canon(v) for v in value))
    if isinstance(value, dict):
        return ("dict", frozenset((k, canon(v)) for k, v in value.items()))
    raise TypeError(type(value))


# Text with no lone surrogates (not encodable as UTF-8); plenty of multi-byte characters.
_CHARS = st.characters(blacklist_categories=("Cs",))
_WORDS = st.sampled_from(
    ("the", "fog", "cat", "café", "naïve", "データ", "ベース", "😀", "👍🏽", "a", "b", " ", "\n")
)
short_text = st.text(_CHARS, max_size=12)
long_text = st.lists(
    _WORDS | st.text(_CHARS, min_size=1, max_size=4), min_size=20, max_size=60
).map("".join)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | short_text
    | long_text
)
keys = st.text(_CHARS, max_size=6) | st.sampled_from(["a", "b", "c", "0", "1-", "_id"])
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(keys, children, max_size=6),
    max_leaves=25,
)


def _edit_text(draw: st.DrawFn, text: str) -> str:
    chars = list(text)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(chars)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = list(draw(short_text | _WORDS))
        if action == "insert":
            chars[pos:pos] = piece
        elif action == "delete":
            del chars[pos : pos + draw(st.integers(1, 8))]
        else:
            chars[pos : pos + draw(st.integers(1, 8))] = piece
    return "".join(chars)


def mutate(draw: st.DrawFn, value: Any, depth: int = 0) -> Any:
    """A value derived from ``value`` by a few random edits at random depths."""
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(json_values)  # replace wholesale
    if choice <= 2 or depth > 4:
        return value  # unchanged
    if isinstance(value, dict):
        out = dict(value)
        for key in list(out):
            action = draw(st.sampled_from(["keep", "keep", "mutate", "delete"]))
            if action == "mutate":
                out[key] = mutate(draw, out[key], depth + 1)
            elif action == "delete":
                del out[key]
        for key in draw(st.lists(keys, max_size=2)):
            out[key] = draw(json_values)
        return out
    if isinstance(value, list):
        out = [mutate(draw, v, depth + 1) if draw(st.booleans()) else v for v in value]
        action = draw(st.sampled_from(["none", "truncate", "append"]))
        if action == "truncate" and out:
            out = out[: draw(st.integers(0, len(out) - 1))]
        elif action == "append":
            out.extend(draw(st.lists(json_values, min_size=1, max_size=3)))
        return out
    if isinstance(value, str):
        return _edit_text(draw, value)
    return draw(scalars)


@st.composite
def related_pairs(draw: st.DrawFn) -> tuple[Any, Any]:
    """(old, new) where new is usually an edit of old, sometimes unrelated."""
    old = draw(json_values)
    if draw(st.integers(0, 9)) == 0:
        return old, draw(json_values)
    return old, mutate(draw, old)


@st.composite
def edited_texts(draw: st.DrawFn) -> tuple[str, str]:
    """(old, new): a long text and a few edits of it."""
    old = draw(long_text)
    return old, _edit_text(draw, old)


@st.composite
def edited_documents(draw: st.DrawFn) -> tuple[dict, dict]:
    """(old, new): a document of long texts (some in a list) with a few of them edited."""
    old = draw(st.dictionaries(keys, long_text, min_size=1, max_size=4))
    old["list"] = draw(st.lists(long_text, max_size=3))
    new = {
        k: _edit_text(draw, v) if isinstance(v, str) and draw(st.booleans()) else v
        for k, v in old.items()
    }
    new["list"] = [_edit_text(draw, v) if draw(st.booleans()) else v for v in old["list"]]
    return old, new
