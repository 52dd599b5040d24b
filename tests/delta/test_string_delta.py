"""String deltas (``[ops, 0, 2]``): exact agreement with Fleece's own code, and error handling.

``data/fleece_string_vectors.json`` was produced by running Fleece's ``createStringDelta`` (the
code of LiteCore 3.2.4's Fleece pin, ``adec5e36``, over its bundled ``diff_match_patch.hh``) on
random text pairs: words, multi-line texts (line mode), Japanese/Tamil/emoji mixes (UTF-8
snapping), two-letter alphabets and repetitive strings. ``timeout`` is ``"none"`` for Fleece's
``gTextDiffTimeout = -1`` and ``"halfmatch"`` for a budget too large to run out (100 s), which
enables diff-match-patch's half-match shortcut as LiteCore's 0.25 s default does.

``good`` vectors: Fleece's ops (or null: no string delta) reproduce the new string.
``fleece_wrong`` vectors: Fleece emitted ops that do *not* reproduce the new string (an upstream
bug: a short equality that equals the diff's last one is left out of its patch, shifting the
positions after it; or a UTF-8 widening that runs past the string). We must not emit those.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fieldsync.delta import (
    DeltaError,
    apply_string_ops,
    create_delta,
    create_string_ops,
)

_VECTORS = json.loads(
    (Path(__file__).parent / "data" / "fleece_string_vectors.json").read_text(encoding="utf-8")
)
_TIMEOUTS = {"none": None, "halfmatch": 100.0}


def _vector_id(v: dict) -> str:
    return f"{v['kind'].strip()}-{v['timeout']}-min{v['min_length']}-{len(v['old'])}"


@pytest.mark.parametrize("v", _VECTORS["good"], ids=_vector_id)
def test_matches_fleece(v: dict[str, Any]) -> None:
    ops = create_string_ops(
        v["old"], v["new"], min_length=v["min_length"], timeout=_TIMEOUTS[v["timeout"]]
    )
    assert ops == v["ops"]
    if ops is not None:
        assert apply_string_ops(v["old"], ops) == v["new"]


@pytest.mark.parametrize("v", _VECTORS["fleece_wrong"], ids=_vector_id)
def test_never_emits_fleeces_wrong_ops(v: dict[str, Any]) -> None:
    old, new = v["old"], v["new"]
    try:
        fleece_result: str | None = apply_string_ops(old, v["fleece_ops"])
    except DeltaError:
        fleece_result = None
    assert fleece_result != new  # the upstream bug
    timeout = _TIMEOUTS[v["timeout"]]
    assert create_string_ops(old, new, min_length=v["min_length"], timeout=timeout) is None
    # ... so the value is sent whole instead, and the delta still works
    delta = create_delta(
        {"s": old}, {"s": new}, min_string_diff_length=v["min_length"], text_diff_timeout=timeout
    )
    assert delta == {"s": new}


def test_vector_file_covers_the_interesting_cases() -> None:
    good = _VECTORS["good"]
    assert len(good) >= 150 and len(_VECTORS["fleece_wrong"]) >= 10
    assert {v["kind"] for v in good} >= {"words", "lines", "uni", "ab", "repeat"}
    assert any(v["ops"] is None for v in good) and any(v["ops"] for v in good)
    assert {v["timeout"] for v in good} == {"none", "halfmatch"}


def test_minimum_length_counts_utf8_bytes_of_the_new_string() -> None:
    old = "é" * 30  # 30 characters, 60 bytes
    assert create_string_ops(old, "é" * 29 + "e", timeout=None) is None  # 59 bytes
    assert create_string_ops(old, "é" * 29 + "ê", timeout=None) == "58=2-2+ê|"
    assert create_string_ops(old, "é" * 29 + "ê", min_length=61, timeout=None) is None


def test_gives_up_when_ops_are_not_clearly_smaller() -> None:
    # Fleece stops once len(ops so far) + 6 >= len(new); the ops here are 47 bytes + "14=".
    old, new = "a" * 40 + "b" * 14, "c" * 40 + "b" * 14
    assert create_string_ops(old, new, min_length=1, timeout=None) == f"40-40+{'c' * 40}|14="
    old, new = "a" * 40 + "b" * 13, "c" * 40 + "b" * 13  # 47 + 6 >= 53
    assert create_string_ops(old, new, min_length=1, timeout=None) is None
    assert create_delta([old], [new], min_string_diff_length=1) == {"0": new}


def test_equal_strings_have_no_ops() -> None:
    text = "x" * 100
    assert create_string_ops(text, text, min_length=1) is None


def test_tiny_time_budget_still_gives_correct_or_no_ops() -> None:
    old = " ".join(f"word{i}" for i in range(300))
    new = old.replace("word1", "w1").replace("word7", "seven")
    ops = create_string_ops(old, new, timeout=1e-9)
    assert ops is None or apply_string_ops(old, ops) == new


def test_long_multi_line_text_uses_line_mode_and_round_trips() -> None:
    old = "\n".join(f"line {i}: the quick brown fox" for i in range(200))
    new = old.replace("line 17: the quick", "line 17: a slow").replace("line 150", "LINE 150")
    ops = create_string_ops(old, new, timeout=None)
    assert ops is not None and len(ops) < 60
    assert apply_string_ops(old, ops) == new


@pytest.mark.parametrize(
    ("old", "ops", "new"),
    [
        ("abc", "3=", "abc"),
        ("abc", "1=1-1=", "ac"),
        ("abc", "0+|3=", "abc"),
        ("abc", "3=2+de|", "abcde"),
        ("", "2+hi|", "hi"),
        ("abc", "3-", ""),
        ("abc", "001=2=", "abc"),
        ("a|b", "1=3+|+||2=", "a|+||b"),  # inserted bytes may contain the marks
        ("日本", "3=3-3+語|", "日語"),
        ("x", "1=4+😀|", "x😀"),
    ],
)
def test_apply_ops(old: str, ops: str, new: str) -> None:
    assert apply_string_ops(old, ops) == new


@pytest.mark.parametrize(
    ("old", "ops", "message"),
    [
        ("ab", "", "empty text delta"),
        ("ab", "3=", "copies 3 bytes at 0, past the end of the 2-byte string"),
        ("ab", "1=", "covers 1 of the string's 2 bytes"),
        ("ab", "5-", "deletes 5 bytes at 0, past the end"),
        ("ab", "2=1-", "deletes 1 bytes at 2, past the end"),
        ("ab", "2=3+x|", "insertion of 3 bytes runs past its end"),
        ("ab", "1+xy2=", "insertion not terminated by '|'"),
        ("ab", "2=1+x", "insertion not terminated by '|'"),
        ("ab", "=2", "expected a byte count at offset 0"),
        ("ab", "2", "has no operation"),
        ("ab", "2?", "unknown operation '?'"),
        ("ab", "-2=", "expected a byte count"),
        ("ab", " 2=", "expected a byte count"),
        ("é", "1=1-", "invalid UTF-8"),  # cuts a 2-byte character in half
        ("ab", "2=1+\u00e9|", "insertion not terminated"),  # counts are bytes: é is 2
    ],
)
def test_apply_ops_errors(old: str, ops: str, message: str) -> None:
    with pytest.raises(DeltaError, match=message.replace("|", r"\|").replace("?", r"\?")):
        apply_string_ops(old, ops)
