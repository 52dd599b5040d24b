"""Fleece's JSON delta format: create and apply deltas between JSON values.

A delta is itself a JSON value (Fleece ``Deltas.md``):

* ``{"k": d, ...}`` applied to an object: apply delta ``d`` to the value at key ``k``
  (inserting it if absent); applied to an array: keys are indices (``"3"``) and at most one
  ``"n-"`` key whose array replaces everything from index *n* on (``[]`` truncates);
  ``{}`` means "no change" and applies to any value.
* ``[]`` deletes the value (an object key); ``[v]`` replaces the value with *v*;
* ``[ops, 0, 2]`` edits a string (see :mod:`.stringdelta`);
* any other scalar replaces the value. At the top level a scalar is always wrapped, ``[v]``.
* For compatibility Fleece also applies JsonDiffPatch's ``[old, new]`` (replace) and
  ``[old, 0, 0]`` (delete); it never creates them, nor does this module.

:func:`create_delta` writes the same deltas as Fleece's ``JSONDelta::create`` as LiteCore calls
it (``FLCreateJSONDelta``: strings of 60+ UTF-8 bytes may be diffed, 0.25 s diff budget). Keys
come in the new object's order, then deleted keys (Fleece: its own dict order, then deleted
keys). Like Fleece, values are compared type-aware: ``1`` -> ``1.0`` and ``1`` -> ``true`` are
changes. Unlike Fleece, a string delta that would not reproduce the new string (an upstream bug,
see :mod:`.stringdelta`) is never emitted; the string is sent whole instead.

:func:`revision_delta` adds LiteCore's rule for when a delta is worth sending at all.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .errors import DeltaError
from .stringdelta import (
    DEFAULT_MIN_STRING_DIFF_LENGTH,
    DEFAULT_TEXT_DIFF_TIMEOUT,
    apply_string_ops,
    create_string_ops,
)

__all__ = [
    "MAX_DELTA_SIZE_RATIO",
    "MIN_BODY_SIZE_FOR_DELTA",
    "apply_delta",
    "apply_delta_json",
    "create_delta",
    "create_delta_json",
    "json_equal",
    "revision_delta",
]

#: LiteCore ``tuning::kMinBodySizeForDelta``: revisions smaller than this are sent whole.
MIN_BODY_SIZE_FOR_DELTA = 200
#: LiteCore sends the full body if the delta is larger than this times the body size.
MAX_DELTA_SIZE_RATIO = 1.2

_TEXT_DIFF_MODE = 2
_DELETION_MODE = 0
_ARRAY_KEY = re.compile(r"(0|[1-9][0-9]*)(-?)")


class _Marker:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


_KIND_NAMES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
}

_MISSING: Any = _Marker("<missing>")  # no value (absent key)
_DELETED: Any = _Marker("<deleted>")  # result of applying a deletion
_NO_CHANGE: Any = _Marker("<no change>")  # create: nothing to write


# ---------------------------------------------------------------------------------------------
# Creating


def create_delta(
    old: Any,
    new: Any,
    *,
    min_string_diff_length: int = DEFAULT_MIN_STRING_DIFF_LENGTH,
    text_diff_timeout: float | None = DEFAULT_TEXT_DIFF_TIMEOUT,
) -> Any:
    """Return the delta turning JSON value ``old`` into ``new``; ``{}`` if they are equal.

    ``min_string_diff_length`` is the minimum UTF-8 length of a new string for it to be diffed
    rather than sent whole; ``text_diff_timeout`` bounds each string diff (None: unbounded,
    which also makes the diff minimal rather than fast, as in Fleece). The delta may share
    sub-objects with ``new``. Raises TypeError/ValueError for values that are not JSON.
    """
    builder = _DeltaBuilder(min_string_diff_length, text_diff_timeout)
    delta = builder.diff(old, new, nested=False)
    return {} if delta is _NO_CHANGE else delta


class _DeltaBuilder:
    def __init__(self, min_string_diff_length: int, text_diff_timeout: float | None) -> None:
        self._min_string = min_string_diff_length
        self._timeout = text_diff_timeout

    def diff(self, old: Any, new: Any, nested: bool) -> Any:
        if new is _MISSING:
            return []
        if old is not _MISSING:
            kind = _kind(old)
            if kind is _kind(new):
                if kind is dict:
                    return self._diff_dicts(old, new)
                if kind is list:
                    if old and new:
                        return self._diff_lists(old, new)
                    if not old and not new:
                        return _NO_CHANGE
                elif _scalar_equal(old, new):
                    return _NO_CHANGE
                elif kind is str:
                    ops = create_string_ops(
                        old, new, min_length=self._min_string, timeout=self._timeout
                    )
                    if ops is not None:
                        return [ops, 0, _TEXT_DIFF_MODE]
        # Replacement or insertion: a scalar inside a container is written as is.
        _check_value(new)
        if nested and not isinstance(new, dict | list):
            return new
        return [new]

    def _diff_dicts(self, old: dict, new: dict) -> Any:
        out: dict[str, Any] = {}
        for key, value in new.items():
            _check_key(key)
            d = self.diff(old.get(key, _MISSING), value, True)
            if d is not _NO_CHANGE:
                out[key] = d
        for key in old:
            if key not in new:
                _check_key(key)
                out[key] = []
        return out if out else _NO_CHANGE

    def _diff_lists(self, old: list, new: list) -> Any:
        out: dict[str, Any] = {}
        common = min(len(old), len(new))
        for i in range(common):
            d = self.diff(old[i], new[i], True)
            if d is not _NO_CHANGE:
                out[str(i)] = d
        if len(old) != len(new):
            tail = new[common:]
            for value in tail:
                _check_value(value)
            out[f"{common}-"] = tail
        return out if out else _NO_CHANGE


# ---------------------------------------------------------------------------------------------
# Applying


def apply_delta(old: Any, delta: Any) -> Any:
    """Apply ``delta`` (as made by :func:`create_delta` or Fleece) to JSON value ``old``.

    Returns a new value; ``old`` is not modified and shares nothing with the result.
    Raises :class:`DeltaError` if the delta is malformed or does not fit ``old``.
    """
    result = _apply(old, delta, "$")
    if result is _DELETED:
        raise DeltaError("$: the delta deletes the whole value")
    return result


def _apply(old: Any, delta: Any, path: str) -> Any:
    if isinstance(delta, list):
        return _apply_array_form(old, delta, path)
    if isinstance(delta, dict):
        if old is _MISSING:
            raise DeltaError(f"{path}: object delta for a value that does not exist")
        if isinstance(old, dict):
            return _patch_dict(old, delta, path)
        if isinstance(old, list):
            return _patch_list(old, delta, path)
        if not delta:
            return old
        raise DeltaError(f"{path}: object delta applied to {_kind_name(old)}")
    if delta is None or isinstance(delta, bool | int | float | str):
        return _copy(delta, path)
    raise DeltaError(f"{path}: delta holds a {type(delta).__name__}, which is not JSON")


def _apply_array_form(old: Any, delta: list, path: str) -> Any:
    n = len(delta)
    if n == 0:
        if old is _MISSING:
            raise DeltaError(f"{path}: deletes a value that does not exist")
        return _DELETED
    if n == 1:
        return _copy(delta[0], path)
    if n == 2:  # JsonDiffPatch replacement [old, new]
        if old is _MISSING:
            raise DeltaError(f"{path}: replaces a value that does not exist")
        return _copy(delta[1], path)
    if n == 3:
        mode = delta[2]
        if isinstance(mode, bool) or not isinstance(mode, int | float):
            raise DeltaError(f"{path}: delta mode {mode!r} is not a number")
        if mode == _DELETION_MODE:  # JsonDiffPatch deletion [old, 0, 0]
            if old is _MISSING:
                raise DeltaError(f"{path}: deletes a value that does not exist")
            return _DELETED
        if mode == _TEXT_DIFF_MODE:
            if not isinstance(old, str):
                what = "a value that does not exist" if old is _MISSING else _kind_name(old)
                raise DeltaError(f"{path}: text delta applied to {what}")
            ops = delta[0]
            if not isinstance(ops, str) or not ops:
                raise DeltaError(f"{path}: text delta has no operations")
            try:
                return apply_string_ops(old, ops)
            except DeltaError as exc:
                raise DeltaError(f"{path}: {exc}") from None
        raise DeltaError(f"{path}: unknown delta mode {mode!r}")
    raise DeltaError(f"{path}: array delta with {n} items (expected 0 to 3)")


def _patch_dict(old: dict, delta: dict, path: str) -> dict:
    result: dict[str, Any] = {}
    for key, value in old.items():
        if key in delta:
            patched = _apply(value, delta[key], f"{path}.{key}")
            if patched is not _DELETED:
                result[key] = patched
        else:
            result[key] = _copy(value, path)
    for key, d in delta.items():
        if key not in old:
            if not isinstance(key, str):
                raise DeltaError(f"{path}: object key {key!r} is not a string")
            result[key] = _apply(_MISSING, d, f"{path}.{key}")
    return result


def _patch_list(old: list, delta: dict, path: str) -> list:
    changes: dict[int, Any] = {}
    tail_start: int | None = None
    tail: list = []
    for key, d in delta.items():
        m = _ARRAY_KEY.fullmatch(key) if isinstance(key, str) else None
        if m is None:
            raise DeltaError(f"{path}: {key!r} is not an array index")
        index = int(m[1])
        if m[2]:
            if tail_start is not None:
                raise DeltaError(f"{path}: more than one 'n-' key ({tail_start}- and {key})")
            if index > len(old):
                raise DeltaError(f"{path}: {key!r} starts past the end of a {len(old)}-item array")
            if not isinstance(d, list):
                raise DeltaError(f"{path}: value of {key!r} is not an array")
            tail_start, tail = index, d
        else:
            if index >= len(old):
                raise DeltaError(f"{path}: index {index} out of range for {len(old)} items")
            changes[index] = d
    end = len(old) if tail_start is None else tail_start
    if changes and max(changes) >= end:
        raise DeltaError(f"{path}: index {max(changes)} is inside the replaced tail {end}-")
    result = []
    for i in range(end):
        if i in changes:
            item = _apply(old[i], changes[i], f"{path}[{i}]")
            if item is _DELETED:
                raise DeltaError(f"{path}[{i}]: array items cannot be deleted, only truncated")
            result.append(item)
        else:
            result.append(_copy(old[i], path))
    result.extend(_copy(v, path) for v in tail)
    return result


def _copy(value: Any, path: str) -> Any:
    """Deep copy of a JSON value; DeltaError if it holds something that is not JSON."""
    if isinstance(value, dict):
        return {_delta_key(k, path): _copy(v, path) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v, path) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise DeltaError(f"{path}: {value!r} is not a JSON value")


def _delta_key(key: Any, path: str) -> str:
    if not isinstance(key, str):
        raise DeltaError(f"{path}: object key {key!r} is not a string")
    return key


# ---------------------------------------------------------------------------------------------
# JSON bytes


def create_delta_json(
    old_json: bytes | str,
    new_json: bytes | str,
    *,
    min_string_diff_length: int = DEFAULT_MIN_STRING_DIFF_LENGTH,
    text_diff_timeout: float | None = DEFAULT_TEXT_DIFF_TIMEOUT,
) -> bytes:
    """:func:`create_delta` on JSON texts; returns compact UTF-8 JSON (``b"{}"``: no change).

    Raises ValueError if either input is not valid JSON.
    """
    old = _loads(old_json, "old JSON", ValueError)
    new = _loads(new_json, "new JSON", ValueError)
    return _dumps(
        create_delta(
            old,
            new,
            min_string_diff_length=min_string_diff_length,
            text_diff_timeout=text_diff_timeout,
        )
    )


def apply_delta_json(old_json: bytes | str, delta_json: bytes | str) -> bytes:
    """:func:`apply_delta` on JSON texts; returns the new value as compact UTF-8 JSON.

    Raises :class:`DeltaError` if the delta is not valid JSON or does not apply, ValueError
    if ``old_json`` is not valid JSON. Object keys keep ``old``'s order, new keys come last.
    """
    old = _loads(old_json, "base JSON", ValueError)
    delta = _loads(delta_json, "delta", DeltaError)
    return _dumps(apply_delta(old, delta))


def revision_delta(
    base_json: bytes,
    new_json: bytes,
    *,
    min_body_size: int = MIN_BODY_SIZE_FOR_DELTA,
    max_size_ratio: float = MAX_DELTA_SIZE_RATIO,
) -> bytes | None:
    """The delta to send for a revision body, or None to send the full body (LiteCore's rule).

    None if the new body is shorter than ``min_body_size`` bytes, or the delta is more than
    ``max_size_ratio`` times the body's size. (LiteCore measures its binary Fleece body; this
    uses the JSON length.) The caller also sends full bodies when the base revision is a
    tombstone or its body is unavailable, when delta sync is off, or after the peer rejected a
    delta for this revision.
    """
    if len(new_json) < min_body_size:
        return None
    delta = create_delta_json(base_json, new_json)
    if len(delta) > len(new_json) * max_size_ratio:
        return None
    return delta


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _loads(data: bytes | str, what: str, error: type[ValueError]) -> Any:
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"{what} is not valid JSON: {exc}") from None


def _dumps(value: Any) -> bytes:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: fall back to \u escapes
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("ascii")


# ---------------------------------------------------------------------------------------------
# Values


def json_equal(a: Any, b: Any) -> bool:
    """Type-aware JSON equality: ``1 != 1.0 != True``, ``0.0 != -0.0``; key order ignored."""
    kind = _kind(a)
    if kind is not _kind(b):
        return False
    if kind is dict:
        return len(a) == len(b) and all(k in b and json_equal(v, b[k]) for k, v in a.items())
    if kind is list:
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return _scalar_equal(a, b)


def _scalar_equal(a: Any, b: Any) -> bool:
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return a == b


def _kind(value: Any) -> type:
    """The JSON kind of a value (dict, list, str, bool, int, float or NoneType)."""
    if value is None:
        return type(None)
    if isinstance(value, bool):
        return bool
    if isinstance(value, str):
        return str
    if isinstance(value, int):
        return int
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a JSON number")
        return float
    if isinstance(value, dict):
        return dict
    if isinstance(value, list):
        return list
    raise TypeError(f"{type(value).__name__} is not a JSON type")


def _kind_name(value: Any) -> str:
    return _KIND_NAMES[_kind(value)]


def _check_key(key: Any) -> None:
    if not isinstance(key, str):
        raise TypeError(f"object key {key!r} is not a string")


def _check_value(value: Any) -> None:
    kind = _kind(value)
    if kind is dict:
        for k, v in value.items():
            _check_key(k)
            _check_value(v)
    elif kind is list:
        for v in value:
            _check_value(v)
