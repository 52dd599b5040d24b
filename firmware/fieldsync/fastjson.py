"""The one JSON codec of the hot paths: orjson where it gives exactly the standard library's
result, ``json`` otherwise.

Why orjson (issue 13): parsing and re-encoding every document body and every protocol message
with ``json`` was ~10 % of the server's CPU in a 10,000-document push; orjson (Rust, wheels for
aarch64/armv7 and x86-64) does both several times faster. It differs from ``json`` in a few
corners, and each is sent to ``json`` so that results never change:

- integers beyond 64 bits are parsed by orjson as floats (precision lost): input with a run of
  19+ digits is parsed by ``json``;
- orjson refuses what ``json`` accepts (NaN/Infinity, lone surrogates, nesting past 1,024):
  anything orjson refuses is parsed again by ``json``, which accepts it or raises its own error;
- orjson writes NaN/Infinity as ``null`` and spells some floats differently (``0.00001``,
  ``1e16``; ``json``: ``1e-05``, ``1e+16``): output with ``null`` or anything that looks like a
  float (a digit followed by ``.`` or ``e``) is encoded again by ``json``.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["dumps", "dumps_canonical", "loads"]

# Guards, at C speed (a regex scan cost more than json.loads itself): the input or output with
# every digit mapped to "0", "e"/"E" to "e", "." kept, and every other byte to " ".
_SHAPE = bytearray(b" " * 256)
for _digit in b"0123456789":
    _SHAPE[_digit] = ord("0")
_SHAPE[ord("e")] = _SHAPE[ord("E")] = ord("e")
_SHAPE[ord(".")] = ord(".")
_SHAPES = bytes(_SHAPE)
_LONG_INTEGER = b"0" * 19
_EXPONENT = b"0e"
_FRACTION = b"0."
# Types orjson would encode and ``json`` refuses (datetime, dataclasses, subclasses) go to
# ``json``, which raises TypeError as before.
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_OPTIONS |= orjson.OPT_PASSTHROUGH_SUBCLASS


def loads(data: bytes | str) -> Any:
    """``json.loads(data)``, faster. Raises what ``json.loads`` raises (``ValueError``,
    ``RecursionError`` for absurd nesting)."""
    if not isinstance(data, str) and _LONG_INTEGER not in data.translate(_SHAPES):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON, as ``json.dumps(value, separators=(",", ":"), ensure_ascii=False)``
    encoded: the protocol's message bodies."""
    try:
        out = orjson.dumps(value, option=_OPTIONS)
    except TypeError:
        out = None
    if out is None or _special(out):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return out


def dumps_canonical(value: Any) -> bytes:
    """Sorted keys, compact, UTF-8, NaN refused (``ValueError``): the store's canonical form.
    For values made of JSON types (what :func:`loads` returns)."""
    try:
        out = orjson.dumps(value, option=_OPTIONS | orjson.OPT_SORT_KEYS)
    except TypeError:
        out = None
    if out is None or _special(out):
        return json.dumps(
            value,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        ).encode("utf-8")
    return out


def _special(out: bytes) -> bool:
    """Whether orjson's output may differ from json's: ``null`` (maybe a NaN) or a float,
    outside strings (revIDs and digests are hex: "3e5" in one is not a float). Without an
    escaped quote, the bytes between every other ``"`` are exactly the strings' contents."""
    outside = out if b'\\"' in out else b"".join(out.split(b'"')[::2])
    if b"null" in outside:
        return True
    shape = outside.translate(_SHAPES)
    return _FRACTION in shape or _EXPONENT in shape
