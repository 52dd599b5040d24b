"""fieldsync.safejson: JSON with a nesting limit (issue 11 row 4), without sockets."""

from __future__ import annotations

import json

import pytest

from fieldsync.safejson import MAX_JSON_DEPTH, JSONTooDeep, check_depth, loads


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_up_to_the_limit_parses() -> None:
    assert loads(deep(MAX_JSON_DEPTH)) == json.loads(deep(MAX_JSON_DEPTH))
    assert loads(b'{"a": [1, {"b": null}]}') == {"a": [1, {"b": None}]}


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 900, 100_000])
def test_deeper_is_json_too_deep_a_value_error(depth: int) -> None:
    with pytest.raises(JSONTooDeep):
        loads(deep(depth).encode())
    with pytest.raises(ValueError):
        loads(deep(depth))


def test_many_brackets_but_shallow_is_fine() -> None:
    wide = "[" + ",".join("[]" for _ in range(10_000)) + "]"
    assert len(loads(wide)) == 10_000
    assert loads('["[[[[[[' + "[" * 1000 + '"]') == ["[[[[[[" + "[" * 1000]


def test_check_depth_is_iterative() -> None:
    value: list = []
    for _ in range(50_000):
        value = [value]
    with pytest.raises(JSONTooDeep):
        check_depth(value, 100)
