"""Differential tests against the real Fleece inside LiteCore 3.2.4 (``FIELDSYNC_LITECORE_LIB``).

* Fleece applies every delta we create, and we apply every (correct) delta Fleece creates.
* We create the same deltas as ``FLCreateJSONDelta`` (LiteCore's defaults: 60-byte string
  minimum, 0.25 s diff budget), except where Fleece's own delta does not reproduce the new value.
* Corrupt deltas fail in both, Fleece with kFLInvalidData (which LiteCore reports as
  LiteCore/CorruptDelta, sent as HTTP 422).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from tests.delta.delta_helpers import canon, edited_documents, related_pairs
from tests.delta.fleece_lib import Fleece, FleeceError, library_path

from fieldsync.delta import DeltaError, apply_delta, create_delta

pytestmark = pytest.mark.litecore

_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
_INVALID_DATA = 3  # kFLInvalidData
_STREAM_FAILURE = 8  # Fleece's internal InternalError code, passed through as an FLError


@pytest.fixture(scope="module")
def fleece() -> Fleece:
    path = library_path()
    if path is None:
        pytest.skip("FIELDSYNC_LITECORE_LIB not set: point it at a LiteCore 3.2.4 libLiteCore.so")
    if not path.is_file():
        pytest.skip(f"FIELDSYNC_LITECORE_LIB={path} is not a file")
    try:
        return Fleece(path)
    except OSError as exc:  # e.g. half-written during a rebuild
        pytest.skip(f"cannot load {path}: {exc}")


JAPANESE_OLD = "モバイルデータベースは将来のものです。 ある日、私たちのデータが端に集まります。"
JAPANESE_NEW = "モバイルデータベースがここにあります。 あなたのデータはすべて端にあります。"


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _compare(fleece: Fleece, old: Any, new: Any) -> None:
    ours = create_delta(old, new)
    # Fleece applies our delta
    assert canon(fleece.apply_delta(old, _compact(ours))) == canon(new)

    theirs_json = fleece.create_delta(old, new)
    assert theirs_json is not None
    theirs = json.loads(theirs_json)
    if canon(fleece.apply_delta(old, theirs_json)) != canon(new):
        # Fleece's diff-match-patch patch-walk bug: its delta does not reproduce `new`.
        assert canon(ours) != canon(theirs)
        return
    assert canon(ours) == canon(theirs)
    assert canon(apply_delta(old, theirs)) == canon(new)


@_SETTINGS
@given(related_pairs())
def test_same_deltas_as_fleece(fleece: Fleece, pair: tuple[Any, Any]) -> None:
    _compare(fleece, *pair)


@_SETTINGS
@given(edited_documents())
def test_same_text_deltas_as_fleece(fleece: Fleece, pair: tuple[dict, dict]) -> None:
    _compare(fleece, *pair)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({"age": 8, "grade": 3, "name": {"first": "Bobby"}}, {"age": 18, "name": {"first": "R"}}),
        ([1, 2, 3, 5, 6, 7], [1, 2, 3, 4, 5]),
        ({"n": 1}, {"n": 1.0}),
        ({"n": 1}, {"n": True}),
        ({"a": []}, {"a": [1]}),
        (5, 6),
        ("x" * 70, "x" * 35 + "y" + "x" * 35),
        ({"s": JAPANESE_OLD}, {"s": JAPANESE_NEW}),
    ],
)
def test_same_deltas_as_fleece_examples(fleece: Fleece, old: Any, new: Any) -> None:
    _compare(fleece, old, new)


def test_fleece_string_delta_bug(fleece: Fleece) -> None:
    """LiteCore can send a string delta that silently yields a different string."""
    old = {"s": "bbaaabaaaaaabbbabaaaaabababbbabaababababbaababbbab"}
    new = {"s": "bbaaabaaaaaabbbabaaaaabababbbabaabababababbababbbbbbabaaabbbbaabaaaab"}
    theirs = fleece.create_delta(old, new)
    assert theirs == b'{"s":["40=2+ab|2=1+b|1-3=17+bbbbabaaabbbbaaba|4=",0,2]}'
    wrong = fleece.apply_delta(old, theirs)
    assert wrong != new and len(wrong["s"]) == len(new["s"])  # well-formed, just wrong
    assert apply_delta(old, json.loads(theirs)) == wrong  # we apply it exactly as Fleece does
    ours = create_delta(old, new)
    assert ours == new  # we send the string whole instead
    assert fleece.apply_delta(old, _compact(ours)) == new


@pytest.mark.parametrize(
    ("old", "delta", "code"),
    [
        ("ab", ["3=", 0, 2], _INVALID_DATA),
        ("ab", ["1+xy2=", 0, 2], _INVALID_DATA),
        ("ab", ["2?", 0, 2], _INVALID_DATA),
        ("ab", ["5-", 0, 2], _INVALID_DATA),
        ("ab", ["", 0, 2], _INVALID_DATA),
        (5, ["2=", 0, 2], _INVALID_DATA),
        ({"a": 1}, {"a": {"x": 1}}, _INVALID_DATA),
        ({}, {"x": []}, _INVALID_DATA),
        ({}, {"x": {"y": 1}}, _INVALID_DATA),
        ({"a": 1}, [1, 2, 3, 4], _INVALID_DATA),
        ({"a": 1}, ["x", 0, 7], _INVALID_DATA),
        ({"a": [1]}, {"a": {"0-": 5}}, _INVALID_DATA),
        # text-op parse failures surface as a C++ stream exception: Fleece's internal
        # InternalError (8), which LiteCore reports as a Fleece error, not CorruptDelta
        ("ab", ["2=1+x", 0, 2], _STREAM_FAILURE),
        ("ab", ["=2", 0, 2], _STREAM_FAILURE),
    ],
)
def test_corrupt_deltas_fail_in_both(fleece: Fleece, old: Any, delta: Any, code: int) -> None:
    with pytest.raises(DeltaError):
        apply_delta(old, delta)
    with pytest.raises(FleeceError) as info:
        fleece.apply_delta(old, _compact(delta))
    assert info.value.code == code


@pytest.mark.parametrize(
    ("old", "delta"),
    [
        ({"a": [1, 2, 3]}, {"a": {"5": 1}}),
        ({"a": [1, 2, 3]}, {"a": {"x": 1}}),
        ({"a": [1, 2, 3]}, {"a": {"01": 1}}),
        ({"a": [1, 2, 3]}, {"a": {"9-": [4]}}),
    ],
)
def test_deltas_fleece_silently_ignores_are_rejected(fleece: Fleece, old: Any, delta: Any) -> None:
    assert fleece.apply_delta(old, _compact(delta)) == old  # Fleece: no effect, no error
    with pytest.raises(DeltaError):
        apply_delta(old, delta)
