"""fastjson gives exactly the standard library's results (orjson only where they agree)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldsync import fastjson

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    # strings that look like numbers, nulls and escapes (the float guard looks past strings)
    | st.text(alphabet='"\\0123456789eE.+-nul ')
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def _canonical(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


@settings(max_examples=1000, deadline=None)
@given(_values)
def test_same_results_as_json(value: Any) -> None:
    try:
        text = json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: not UTF-8 encodable either way
        return
    parsed = fastjson.loads(text)
    assert parsed == json.loads(text)
    assert fastjson.dumps(parsed) == json.dumps(
        parsed, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    assert fastjson.dumps_canonical(parsed) == _canonical(parsed)


@pytest.mark.parametrize(
    "text",
    [
        b'{"big": 123456789012345678901234567890}',
        b'{"neg": -98765432109876543210}',
        b"[1e16, 1e-05, 1.5e300, -0.0, 0.1]",
        b'{"n": NaN, "i": Infinity}',
        b'"\\ud800"',
        b'{"a": 1, "a": 2}',
        b"[" * 900 + b"]" * 900,
    ],
)
def test_corners_match_json(text: bytes) -> None:
    expected = json.loads(text)
    got = fastjson.loads(text)
    assert json.dumps(got) == json.dumps(expected)
    assert type(got) is type(expected)


def test_absurd_nesting_raises_recursion_error_like_json() -> None:
    text = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(RecursionError):
        json.loads(text)
    with pytest.raises(RecursionError):
        fastjson.loads(text)


def test_canonical_refuses_nan_like_json() -> None:
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError):
            fastjson.dumps_canonical({"x": bad})


def test_errors_are_json_errors() -> None:
    for bad in (b"", b"{", b"[1,]", b"\xff"):
        with pytest.raises(ValueError):
            fastjson.loads(bad)


@pytest.mark.parametrize(
    "value", [1e-05, 1e-07, 1e16, 1e21, 1e22, 123456789.123, -0.0, 5e-324, 1.7976931348623157e308]
)
def test_floats_spelled_as_json_spells_them(value: float) -> None:
    assert fastjson.dumps([value]) == json.dumps([value], separators=(",", ":")).encode()
    assert fastjson.dumps_canonical({"f": value}) == _canonical({"f": value})


def test_hex_strings_take_the_fast_path() -> None:
    """A changes list or a body full of revIDs and digests is not mistaken for floats (the
    guard only looks outside strings), so orjson's output is used as it is."""
    entries = [[n, f"doc-{n:06}", f"{n}-3e5{n:037x}", n % 2 == 0, 1024] for n in range(200)]
    out = fastjson.dumps(entries)
    assert out == json.dumps(entries, separators=(",", ":")).encode()
    assert not fastjson._special(out)
    assert fastjson._special(fastjson.dumps([1e16])) and fastjson._special(b'["\\"",null]')
