"""Property tests: apply(old, create(old, new)) == new, type-aware, for arbitrary JSON values."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.delta.delta_helpers import (
    canon,
    edited_documents,
    edited_texts,
    json_values,
    related_pairs,
)

from fieldsync.delta import (
    apply_delta,
    apply_delta_json,
    apply_string_ops,
    create_delta,
    create_delta_json,
    create_string_ops,
    json_equal,
)
from fieldsync.delta.textdiff import DELETE, EQUAL, INSERT, diff_texts


def _settings(examples: int) -> Any:
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


# Fleece's test settings (unbounded diff, strings diffed from 1 byte) exercise string deltas most.
_EAGER = {"min_string_diff_length": 1, "text_diff_timeout": None}


def _round_trip(old: Any, new: Any, **options: Any) -> Any:
    before = copy.deepcopy(old)
    delta = create_delta(old, new, **options)
    wire = json.loads(json.dumps(delta))  # what the peer receives
    result = apply_delta(old, wire)
    assert canon(result) == canon(new)
    assert canon(old) == canon(before)  # neither call modifies old
    return delta


@_settings(100)
@given(json_values, json_values)
def test_round_trip_unrelated_values(old: Any, new: Any) -> None:
    _round_trip(old, new)


@_settings(200)
@given(related_pairs())
def test_round_trip_edited_values(pair: tuple[Any, Any]) -> None:
    _round_trip(*pair)


@_settings(200)
@given(related_pairs())
def test_round_trip_edited_values_with_eager_string_diffs(pair: tuple[Any, Any]) -> None:
    _round_trip(*pair, **_EAGER)


@_settings(60)
@given(related_pairs())
def test_round_trip_when_the_diff_runs_out_of_time(pair: tuple[Any, Any]) -> None:
    _round_trip(*pair, min_string_diff_length=1, text_diff_timeout=1e-9)


@_settings(60)
@given(json_values)
def test_equal_values_give_the_empty_delta(value: Any) -> None:
    assert create_delta(value, copy.deepcopy(value)) == {}
    assert canon(apply_delta(value, {})) == canon(value)


@_settings(150)
@given(edited_texts(), st.sampled_from([None, 0.25]))
def test_string_ops_round_trip(pair: tuple[str, str], timeout: float | None) -> None:
    old, new = pair
    ops = create_string_ops(old, new, min_length=1, timeout=timeout)
    if ops is not None:
        assert apply_string_ops(old, ops) == new
        final_copy = f"{len(old.encode())}="  # the longest the uncounted last op can be
        assert len(ops.encode()) + 6 < len(new.encode()) + len(final_copy)


@_settings(100)
@given(edited_documents())
def test_round_trip_edited_documents(pair: tuple[dict, dict]) -> None:
    _round_trip(*pair)
    _round_trip(*pair, **_EAGER)


@_settings(100)
@given(related_pairs())
def test_json_bytes_round_trip(pair: tuple[Any, Any]) -> None:
    old, new = pair
    old_json = json.dumps(old, ensure_ascii=False).encode()
    new_json = json.dumps(new).encode()
    delta = create_delta_json(old_json, new_json, **_EAGER)
    assert canon(json.loads(apply_delta_json(old_json, delta))) == canon(new)


@_settings(60)
@given(json_values, json_values)
def test_json_equal_agrees_with_canonical_form(a: Any, b: Any) -> None:
    assert json_equal(a, b) == (canon(a) == canon(b))
    assert json_equal(a, copy.deepcopy(a))


@_settings(100)
@given(edited_texts(), st.sampled_from([None, 0.25, 1e-9]))
def test_text_diff_reconstructs_both_texts(pair: tuple[str, str], timeout: float | None) -> None:
    old, new = (t.encode() for t in pair)
    diffs = diff_texts(old, new, timeout)
    assert b"".join(t for op, t in diffs if op != INSERT) == old
    assert b"".join(t for op, t in diffs if op != DELETE) == new
    assert all(op in (DELETE, EQUAL, INSERT) for op, _ in diffs)
