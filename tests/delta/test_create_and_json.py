"""create_delta details (type awareness, bad input), the JSON-bytes helpers and revision_delta."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tests.delta.delta_helpers import canon

from fieldsync.delta import (
    MAX_DELTA_SIZE_RATIO,
    MIN_BODY_SIZE_FOR_DELTA,
    DeltaError,
    apply_delta,
    apply_delta_json,
    create_delta,
    create_delta_json,
    json_equal,
    revision_delta,
)


@pytest.mark.parametrize(
    ("old", "new", "delta"),
    [
        # numbers and booleans are compared by type as well as value (as Fleece does)
        ({"n": 1}, {"n": 1.0}, {"n": 1.0}),
        ({"n": 1.0}, {"n": 1}, {"n": 1}),
        ({"n": 1}, {"n": True}, {"n": True}),
        ({"n": 0}, {"n": False}, {"n": False}),
        ({"n": 0.0}, {"n": -0.0}, {"n": -0.0}),
        ({"n": None}, {"n": 0}, {"n": 0}),
        ({"n": 1.5}, {"n": 1.5}, {}),
        (1, 1.0, [1.0]),
        (True, 1, [1]),
        # null inside containers is a value, not a deletion
        ({"n": 1}, {"n": None}, {"n": None}),
        ([1], [None], {"0": None}),
        # empty containers
        ({"a": {}}, {"a": []}, {"a": [[]]}),
        ({"a": []}, {"a": {}}, {"a": [{}]}),
        ({"a": []}, {"a": [1]}, {"a": [[1]]}),  # no common prefix: replaced whole
        ({"a": [1]}, {"a": []}, {"a": [[]]}),
        ({"a": {"x": 1}}, {"a": {}}, {"a": {"x": []}}),
        # keys that look like array syntax are ordinary object keys
        ({"0": 1, "1-": 2}, {"0": 2}, {"0": 2, "1-": []}),
    ],
)
def test_create(old: Any, new: Any, delta: Any) -> None:
    got = create_delta(old, new)
    assert canon(got) == canon(delta)
    assert canon(apply_delta(old, got)) == canon(new)


def test_key_order_new_keys_then_deletions() -> None:
    old = {"a": 1, "b": 2, "c": 3, "d": 4}
    new = {"d": 5, "c": 3, "e": 6}
    assert list(create_delta(old, new)) == ["d", "e", "a", "b"]


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        ({"a": 1}, {"a": {1, 2}}, TypeError),
        ({"a": 1}, {"a": (1, 2)}, TypeError),
        ({"a": 1}, {"a": float("nan")}, ValueError),
        ({"a": 1}, {"a": float("inf")}, ValueError),
        ({"a": 1}, {1: 1}, TypeError),
        ({"a": 1}, {"b": [{2: 3}]}, TypeError),
        ({"a": b"x"}, {"a": b"y"}, TypeError),
        ([1], [1, object()], TypeError),
    ],
)
def test_create_rejects_non_json(old: Any, new: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        create_delta(old, new)


def test_json_equal_is_type_aware() -> None:
    assert json_equal({"a": [1, 2.5, None]}, {"a": [1, 2.5, None]})
    assert json_equal({"a": 1, "b": 2}, {"b": 2, "a": 1})
    assert not json_equal(1, 1.0)
    assert not json_equal(1, True)
    assert not json_equal(0.0, -0.0)
    assert not json_equal([1], [1, 2])
    assert not json_equal({"a": 1}, {"b": 1})


# -- JSON bytes ---------------------------------------------------------------------------------


def test_create_delta_json_is_compact_utf8() -> None:
    old = b'{"age": 8, "grade": 3, "name": {"first": "Bobby", "last": "Briggs"}}'
    new = '{"age": 18, "name": {"first": "Rōbert", "last": "Briggs"}}'.encode()
    delta = create_delta_json(old, new)
    assert delta == '{"age":18,"name":{"first":"Rōbert"},"grade":[]}'.encode()
    assert json.loads(apply_delta_json(old, delta)) == json.loads(new)


def test_create_delta_json_no_change() -> None:
    assert create_delta_json(b'{"a": [1, {"b": 2}]}', b'{"a":[1,{"b":2}]}') == b"{}"
    assert apply_delta_json(b'{"a": [1]}', b"{}") == b'{"a":[1]}'


def test_json_helpers_accept_str() -> None:
    assert create_delta_json('{"a": 1}', '{"a": 2}') == b'{"a":2}'
    assert apply_delta_json('{"a": 1}', '{"a": 2}') == b'{"a":2}'


def test_lone_surrogates_fall_back_to_escapes() -> None:
    delta = create_delta_json(b'{"a": "x"}', b'{"a": "\\ud800"}')
    assert delta == b'{"a":"\\ud800"}'
    assert json.loads(apply_delta_json(b'{"a": "x"}', delta)) == {"a": "\ud800"}


@pytest.mark.parametrize(
    "delta", [b"", b"{", b"not json", b'{"a": NaN}', b"[Infinity]", b"\xff\xfe\x00"]
)
def test_apply_delta_json_bad_delta(delta: bytes) -> None:
    with pytest.raises(DeltaError, match="delta is not valid JSON"):
        apply_delta_json(b'{"a": 1}', delta)


def test_apply_delta_json_bad_base_is_not_a_delta_error() -> None:
    with pytest.raises(ValueError, match="base JSON is not valid JSON") as info:
        apply_delta_json(b"{oops", b"{}")
    assert not isinstance(info.value, DeltaError)


def test_create_delta_json_bad_input() -> None:
    with pytest.raises(ValueError, match="new JSON is not valid JSON"):
        create_delta_json(b"{}", b"[1,")
    with pytest.raises(ValueError, match="old JSON is not valid JSON"):
        create_delta_json(b"NaN", b"[1]")


def test_apply_delta_json_reports_delta_errors() -> None:
    with pytest.raises(DeltaError, match="index 5 out of range"):
        apply_delta_json(b'{"a": [1]}', b'{"a": {"5": 2}}')


# -- LiteCore's rule for sending a delta ----------------------------------------------------------


def _body(**props: Any) -> bytes:
    return json.dumps(props, separators=(",", ":")).encode()


def test_constants_match_litecore() -> None:
    assert MIN_BODY_SIZE_FOR_DELTA == 200  # tuning::kMinBodySizeForDelta
    assert MAX_DELTA_SIZE_RATIO == 1.2  # Pusher::createRevisionDelta


def test_revision_delta_for_a_small_change() -> None:
    base = _body(title="Field notes", text="x" * 300, count=1)
    new = _body(title="Field notes", text="x" * 300, count=2)
    delta = revision_delta(base, new)
    assert delta == b'{"count":2}'
    assert apply_delta_json(base, delta) == new


def test_revision_delta_skips_small_bodies() -> None:
    base = _body(text="a" * 150, count=1)
    new = _body(text="a" * 150, count=2)
    assert len(new) < 200
    assert revision_delta(base, new) is None
    assert revision_delta(base, new, min_body_size=len(new)) == b'{"count":2}'


def test_revision_delta_skips_deltas_bigger_than_the_body() -> None:
    base = _body(**{f"key{i:03}": i for i in range(60)})
    new = _body(note="n" * 200)
    delta = create_delta_json(base, new)
    assert len(delta) > 1.2 * len(new)
    assert revision_delta(base, new) is None
    assert revision_delta(base, new, max_size_ratio=100) == delta


def test_revision_delta_no_change_is_empty_object() -> None:
    body = _body(text="z" * 300)
    assert revision_delta(body, body) == b"{}"  # LiteCore sends {} with deltaSrc
