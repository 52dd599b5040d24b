"""apply_delta on deltas that are malformed or do not fit the value: a clear DeltaError.

Where real Fleece silently ignores nonsense (array keys out of range, non-index keys, a mode it
reads as 0, a deletion inside an array, which makes it write an undefined item), we refuse: no
delta made by Fleece or by us looks like that.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from fieldsync.delta import DeltaError, apply_delta


@pytest.mark.parametrize(
    ("old", "delta", "message"),
    [
        # whole-value forms
        ({"a": 1}, [], "$: the delta deletes the whole value"),
        ({"a": 1}, [1, 0, 0], "deletes the whole value"),
        ({"a": 1}, [1, 2, 3, 4], "array delta with 4 items"),
        (5, {"a": 1}, "object delta applied to a number"),
        ("s", {"a": 1}, "object delta applied to a string"),
        (None, {"a": 1}, "object delta applied to null"),
        (True, {"0": 1}, "object delta applied to a boolean"),
        ({"a": 1}, {1, 2}, "delta holds a set"),
        ({"a": 1}, [float("nan")], "nan is not a JSON value"),
        ({"a": 1}, [{1: 2}], "object key 1 is not a string"),
        # keys that do not exist
        ({}, {"x": []}, r"\$\.x: deletes a value that does not exist"),
        ({}, {"x": [1, 0, 0]}, r"\$\.x: deletes a value that does not exist"),
        ({}, {"x": {}}, r"\$\.x: object delta for a value that does not exist"),
        ({}, {"x": {"y": 1}}, "object delta for a value that does not exist"),
        ({}, {"x": [1, 2]}, r"\$\.x: replaces a value that does not exist"),
        ({}, {"x": ["1=", 0, 2]}, "text delta applied to a value that does not exist"),
        # 3-item forms
        ("ab", ["2=", 0, 7], "unknown delta mode 7"),
        ("ab", ["2=", 0, 3], "unknown delta mode 3"),  # JsonDiffPatch array move
        ("ab", ["2=", 0, "2"], "delta mode '2' is not a number"),
        ("ab", ["2=", 0, True], "delta mode True is not a number"),
        ("ab", ["2=", 0, None], "is not a number"),
        (5, ["2=", 0, 2], "text delta applied to a number"),
        ([1], ["2=", 0, 2], "text delta applied to an array"),
        ("ab", ["", 0, 2], "text delta has no operations"),
        ("ab", [5, 0, 2], "text delta has no operations"),
        ("ab", ["3=", 0, 2], r"\$: text delta copies 3 bytes"),
        ({"s": "ab"}, {"s": ["2=1+x", 0, 2]}, r"\$\.s: text delta: insertion not terminated"),
        # arrays
        ([1, 2, 3], {"3": 9}, "index 3 out of range for 3 items"),
        ([], {"0": 9}, "index 0 out of range for 0 items"),
        ([1, 2, 3], {"4-": [9]}, "'4-' starts past the end of a 3-item array"),
        ([1, 2, 3], {"1-": 9}, "value of '1-' is not an array"),
        ([1, 2, 3], {"1-": {"0": 1}}, "value of '1-' is not an array"),
        ([1, 2, 3], {"x": 9}, "'x' is not an array index"),
        ([1, 2, 3], {"01": 9}, "'01' is not an array index"),
        ([1, 2, 3], {"-1": 9}, "'-1' is not an array index"),
        ([1, 2, 3], {"1--": 9}, "'1--' is not an array index"),
        ([1, 2, 3], {" 1": 9}, "' 1' is not an array index"),
        ([1, 2, 3], {"\u0661": 9}, "is not an array index"),  # Arabic-Indic digit one
        ([1, 2, 3], {"1-": [], "2-": []}, "more than one 'n-' key"),
        ([1, 2, 3], {"2": 5, "1-": []}, "index 2 is inside the replaced tail 1-"),
        ([1, 2, 3], {"1": 5, "1-": []}, "index 1 is inside the replaced tail 1-"),
        ([1, 2, 3], {"0": []}, r"\$\[0\]: array items cannot be deleted"),
        ([1, 2, 3], {"2": [3, 0, 0]}, r"\$\[2\]: array items cannot be deleted"),
        ([[1]], {"0": {"5": 1}}, r"\$\[0\]: index 5 out of range"),
        # nesting shows the path
        ({"a": {"b": 1}}, {"a": {"b": [1, 2, 3, 4]}}, r"\$\.a\.b: array delta with 4 items"),
    ],
)
def test_delta_error(old: Any, delta: Any, message: str) -> None:
    before = copy.deepcopy(old)
    with pytest.raises(DeltaError, match=message if "\\" in message else re.escape(message)):
        apply_delta(old, delta)
    assert old == before  # nothing lost on failure


def test_delta_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        apply_delta(1, [1, 2, 3, 4])


@pytest.mark.parametrize(
    ("old", "delta", "new"),
    [
        (5, {}, 5),  # "no change" applies to anything
        (None, {}, None),
        ("ab", {}, "ab"),
        ([1], {}, [1]),
        ({"a": 1}, {}, {"a": 1}),
        ("ab", ["2=", 99, 2], "ab"),  # Fleece ignores the middle item
        ("ab", ["2=", 0, 2.0], "ab"),  # a mode written as a float
        ({"a": 1, "b": 2}, {"a": ["anything", 0, 0]}, {"b": 2}),  # [x, 0, 0]: deletion
        ({"a": 1}, {"a": [1, 2]}, {"a": 2}),  # [old, new]: replacement
        ({"a": 1}, {"a": None}, {"a": None}),  # null is a value, not a deletion
        ({"a": 1}, {"a": [None]}, {"a": None}),
        ([1, 2, 3], {"3-": []}, [1, 2, 3]),  # empty tail at the end
        ([1, 2, 3], {"0-": []}, []),
        ([1, 2, 3], {"0-": [7]}, [7]),
        ([1, 2, 3], {"0": 5, "1-": [7, 8]}, [5, 7, 8]),
    ],
)
def test_lenient_like_fleece(old: Any, delta: Any, new: Any) -> None:
    assert apply_delta(old, delta) == new


def test_result_shares_nothing_with_old_or_delta() -> None:
    old = {"keep": {"deep": [1, {"x": 1}]}, "list": [[1], [2]], "change": 1}
    delta = {"change": [{"inserted": [1]}], "list": {"2-": [[3]]}}
    new = apply_delta(old, delta)
    assert new == {
        "keep": {"deep": [1, {"x": 1}]},
        "list": [[1], [2], [3]],
        "change": {"inserted": [1]},
    }
    new["keep"]["deep"][1]["x"] = 99
    new["list"][0].append(9)
    new["list"][2].append(9)
    new["change"]["inserted"].append(9)
    assert old == {"keep": {"deep": [1, {"x": 1}]}, "list": [[1], [2]], "change": 1}
    assert delta == {"change": [{"inserted": [1]}], "list": {"2-": [[3]]}}


def test_patched_object_keeps_old_key_order_and_appends_new_keys() -> None:
    old = {"b": 1, "a": 2, "c": 3}
    new = apply_delta(old, {"z": 0, "a": 5, "b": []})
    assert list(new) == ["a", "c", "z"]
