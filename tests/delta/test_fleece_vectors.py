"""Vectors from Fleece itself: every example of ``Deltas.md`` and the cases of
``Tests/DeltaTests.cc`` (create *and* apply), plus the JsonDiffPatch suite Fleece ships
(``Tests/DeltaTests.json5``) for the compatibility forms Fleece applies.

Fleece's tests print deltas as JSON5 (unquoted keys); they are written here as strict JSON with the
same content and key order. Test settings follow each Fleece test case: "Delta strings" sets
``gMinStringDiffLength = 36`` and ``gTextDiffTimeout = -1`` (unbounded, which also turns off the
half-match shortcut); "Delta strings UTF-8" sets the minimum to 1 (timeout still -1).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from tests.delta.delta_helpers import canon

from fieldsync.delta import DeltaError, apply_delta, create_delta

_STRINGS = {"min_string_diff_length": 36, "text_diff_timeout": None}
_UTF8 = {"min_string_diff_length": 1, "text_diff_timeout": None}
_UNBOUNDED = {"text_diff_timeout": None}


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def check(old: Any, new: Any, expected: str, **options: Any) -> None:
    """create(old, new) is exactly ``expected``; applying it to old gives new."""
    delta = create_delta(old, new, **options)
    assert compact(delta) == expected
    assert canon(apply_delta(old, json.loads(expected))) == canon(new)


# -- Deltas.md ---------------------------------------------------------------------------------

AUTUMNAL_OLD = (
    "to wound the autumnal city. So howled out for the world to give him a name.  "
    "The in-dark answered with the wind."
)
AUTUMNAL_NEW = (
    "To wound the eternal city. So he howled out for the world to give him its name. "
    "The in-dark answered with wind."
)
AUTUMNAL_OPS = "1-1+T|12=5-4+eter|13=3+he |37=1-3+its|6=1-27=4-5="

DELTAS_MD = [
    pytest.param(
        {"age": 8, "grade": 3, "name": {"first": "Bobby", "last": "Briggs"}},
        {"age": 18, "name": {"first": "Robert", "last": "Briggs"}},
        {"age": 18, "grade": [], "name": {"first": "Robert"}},
        {},
        id="dict-update-and-delete",
    ),
    pytest.param(
        ["fee", "fie", "foe"],
        ["fee", "fi", "foe", "fum"],
        {"1": "fi", "3-": ["fum"]},
        {},
        id="array-item-and-append",
    ),
    pytest.param(
        [{"first": "Mad", "last": "Hatter"}, {"first": "Cheshire", "last": "Puss"}],
        [{"first": "Mad", "last": "Hatter"}, {"first": "Cheshire", "last": "Cat"}],
        {"1": {"last": "Cat"}},
        {},
        id="array-of-dicts",
    ),
    pytest.param(
        AUTUMNAL_OLD,
        AUTUMNAL_NEW,
        [AUTUMNAL_OPS, 0, 2],
        {},  # LiteCore's settings: 60-byte minimum, 0.25 s budget
        id="long-string-default-settings",
    ),
    pytest.param(AUTUMNAL_OLD, AUTUMNAL_NEW, [AUTUMNAL_OPS, 0, 2], _UNBOUNDED, id="long-string"),
    pytest.param(
        "The fog comes in on little cat feet",
        "The dog comes in on little cat feet",
        ["4=1-1+d|30=", 0, 2],  # Deltas.md prints "31=": see the erratum test below
        {"min_string_diff_length": 1},  # 35 bytes: below Fleece's default minimum of 60
        id="short-string-lower-minimum",
    ),
]


@pytest.mark.parametrize(("old", "new", "delta", "options"), DELTAS_MD)
def test_deltas_md_examples(old: Any, new: Any, delta: Any, options: dict) -> None:
    # Deltas.md lists "grade" before "name"; Fleece (and we) write deleted keys last.
    assert canon(create_delta(old, new, **options)) == canon(delta)
    assert canon(apply_delta(old, delta)) == canon(new)


def test_deltas_md_dict_example_with_its_typo() -> None:
    """Deltas.md's 2nd example inserts "title": "Col." but prints the delta with "Maj."."""
    old = {"age": 18, "name": {"first": "Robert", "last": "Briggs"}}
    new = {"age": 38, "name": {"title": "Col.", "first": "Robert", "last": "Briggs"}}
    assert create_delta(old, new) == {"age": 38, "name": {"title": "Col."}}
    printed = {"age": 38, "name": {"title": "Maj."}}
    assert apply_delta(old, printed) == {
        "age": 38,
        "name": {"first": "Robert", "last": "Briggs", "title": "Maj."},
    }


def test_deltas_md_array_example_with_swapped_labels() -> None:
    """Deltas.md's 3rd example prints "new" above "old"; its delta turns the first into the 2nd."""
    first = ["fee", "fie", "foe", "fum"]
    second = ["fee", "fi", "foe", "fum"]
    assert create_delta(first, second) == {"1": "fi"}
    assert apply_delta(first, {"1": "fi"}) == second


def test_deltas_md_string_example_with_its_miscount() -> None:
    """Deltas.md prints ``4=1-1+d|31=``, which covers 36 bytes of a 35-byte string."""
    old = "The fog comes in on little cat feet"
    assert len(old.encode()) == 4 + 1 + 30
    with pytest.raises(
        DeltaError, match="copies 31 bytes at 5, past the end of the 35-byte string"
    ):
        apply_delta(old, ["4=1-1+d|31=", 0, 2])


def test_short_string_example_is_sent_whole_with_fleece_defaults() -> None:
    # Fleece's own test "Too short for delta" (minimum 36) and LiteCore's default of 60.
    for options in ({}, _STRINGS):
        check(
            "The fog comes in on little cat feet",
            "The dog comes in on little cat feet",
            '["The dog comes in on little cat feet"]',
            **options,
        )


# -- DeltaTests.cc -----------------------------------------------------------------------------

SCALARS = [
    (None, None, "{}"),
    ("", "", "{}"),
    (5, 5, "{}"),
    (5, 6, "[6]"),  # top-level scalars are wrapped in an array
    (False, [], "[[]]"),
    ("hi", "Hi", '["Hi"]'),
]

LOREM_1 = (
    "Lorem ipsum dolor sit amet, assueverit sadipscing usu ea, mei efficiantur intellegebat in, "
    "iudico ullamcorper ei ius. Ius quaeque eripuit instructior ea, et ipsum doctus quo, pri "
    "decore ornatus et. Te wisi omittantur interpretaris quo, in audire prompta nominati vim. "
    "Dicat epicuri delectus sit eu."
)
LOREM_2 = (
    "Ex quo prima efficiantur, an pro modus pertinax. Magna tractatos qualisque vim id. Eum at "
    "omnis inani, labore possim nec id. Exerci audire eam eu, summo liberavisse mel ei. Homero "
    "ponderum ea his, cum id impedit fuisset."
)
STRINGS = [
    ("hi", "", '[""]'),
    ("there", "there", "{}"),
    ("hi", "there", '["there"]'),
    ("Hello World.", "Goodbye World.", '["Goodbye World."]'),
    (
        "The fog comes in on little cat feet",
        "The dog comes in on little cat feet",
        '["The dog comes in on little cat feet"]',
    ),
    (AUTUMNAL_OLD, AUTUMNAL_NEW, f'["{AUTUMNAL_OPS}",0,2]'),
    (
        "to wound the autumnal city. The in-dark answered with the wind.",
        "to wound the autumnal city. So howled out for the world to give him a name. "
        "The in-dark answered with the wind.",
        '["27=48+ So howled out for the world to give him a name.|36=",0,2]',
    ),
    (LOREM_1, LOREM_2, json.dumps([LOREM_2])),  # inefficient delta: sent whole
    (
        "ABC+DEF-HIJ=KLM|NOP *******************************",
        "AbC-def+HIJKLM|NOP= *******************************",
        '["1=7-7+bC-def+|3=1-7=1+=|32=",0,2]',
    ),
]

TAMIL_OLD = (
    "யாமறிந்த மொழிகளிலே தமிழ்மொழி போல் இனிதாவது எங்கும் காணோம், பாமரராய் விலங்குகளாய், "
    "உலகனைத்தும் இகழ்ச்சிசொலப் பான்மை கெட்டு, நாமமது தமிழரெனக் கொண்டு இங்கு வாழ்ந்திடுதல் நன்றோ? "
    "சொல்லீர்! தேமதுரத் இகழ்ச்சிசொலப் உலகமெலாம் பரவும்வகை செய்தல் வேண்டும்."
)
TAMIL_NEW = (
    "யாமறிந்த மொழிகளிலே தமிழ்மொழி போல் இனிதாவது எங்கும் காணோம், பாமரராய் விலங்குகளாய், "
    "உலகனைத்தும் இகழ்ச்சிசொலப் பான்மை கெட்டு, நாமமது தமிழரெனக் கொண்டு இங்கு வாழ்ந்திடுதல் நன்றோ? "
    "கொண்டு! தேமதுரத் தமிழோசை உலகமெலாம் பரவும்வகை செய்தல் வேண்டும்."
)
STRINGS_UTF8 = [
    (
        "モバイルデータベースは将来のものです。 ある日、私たちのデータが端に集まります。",
        "モバイルデータベースがここにあります。 あなたのデータはすべて端にあります。",
        '["30=49-37+がここにあります。 あなた|12=3-12+はすべて|6=3-3-3+あ|12=",0,2]',
    ),
    # the changed characters share their last byte: the diff must not split them
    ("<aaaaaaaaXXX\u01c8zzzzzzzz>", "<aaaaaaaaYYY\u0188zzzzzzzz>", '["9=5-5+YYY\u0188|9=",0,2]'),
    (
        TAMIL_OLD,
        TAMIL_NEW,
        '["476=3-3+க|3=3-3+ண|3=12-6+டு|27=21-6+தம|3=15-12+ழோசை|104=",0,2]',
    ),
]

SIMPLE_DICTS = [
    ({}, {}, "{}"),
    ({"foo": 1}, {"foo": 1}, "{}"),
    ({"foo": 1, "bar": 2, "baz": 3}, {"baz": 3, "foo": 1, "bar": 2}, "{}"),
    ({}, {"bar": 2}, '{"bar":2}'),
    ({"foo": 1}, {}, '{"foo":[]}'),
    ({"foo": 1}, {"bar": 2}, '{"bar":2,"foo":[]}'),
    ({"foo": 1}, {"foo": 2}, '{"foo":2}'),
    ({"foo": 1}, {"foo": 1, "bar": 2}, '{"bar":2}'),
    ({"foo": 1, "bar": 2, "baz": 3}, {"foo": 1, "bar": 17, "baz": 3}, '{"bar":17}'),
    ({"foo": 1}, [2], "[[2]]"),
    ([2], {"foo": 1}, '[{"foo":1}]'),
    ({"top": {"foo": 1}}, {"top": [2]}, '{"top":[[2]]}'),
    ({"top": [2]}, {"top": {"foo": 1}}, '{"top":[{"foo":1}]}'),
]

PARA = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut "
    "labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco "
    "laboris nisi ut aliquip ex ea commodo consequat. Duis aute irure dolor in reprehenderit in "
    "voluptate velit esse cillum dolore eu fugiat nulla pariatur. Excepteur sint occaecat "
    "cupidatat non proident, sunt in culpa qui officia deserunt mollit anim id est laborum."
)


def glossary(para: str) -> dict:
    entry = {
        "ID": "SGML",
        "SortAs": "SGML",
        "GlossTerm": "Standard Generalized Markup Language",
        "Acronym": "SGML",
        "Abbrev": "ISO 8879:1986",
    }
    return {
        "glossary": {
            "title": "example glossary",
            "GlossDiv": {
                "title": "S",
                "GlossList": {
                    "GlossEntry": [
                        {**entry, "GlossDef": {"para": para, "GlossSeeAlso": ["GML", "XML"]}},
                        {
                            **entry,
                            "GlossDef": {
                                "para": "A meta-markup language, used to create markup "
                                "languages such as DocBook.",
                                "GlossSeeAlso": ["GML", "XML"],
                            },
                        },
                    ],
                    "GlossSee": "markup",
                },
            },
        }
    }


NESTED_DICTS = [
    ({}, {"bar": {"baz": 9}}, '{"bar":[{"baz":9}]}'),
    (
        {"foo": {"bar": [1], "baz": {"goo": [3]}, "wow": 0}},
        {"foo": {"bar": [1], "baz": {"goo": [3]}, "wow": 0}},
        "{}",
    ),
    ({"foo": {"bar": [1]}, "goo": 2}, {"foo": {"bar": [1]}, "goo": 3}, '{"goo":3}'),
    ({"foo": {"bar": [1]}, "goo": 2}, {"foo": {"bar": [2]}, "goo": 2}, '{"foo":{"bar":{"0":2}}}'),
    (
        {"quuz": True, "foo": {"bar": {"buzz": "qux"}}},
        {"quuz": True, "foo": {"bar": {"buzz": "quux"}}},
        '{"foo":{"bar":{"buzz":"quux"}}}',
    ),
    (
        {"foo": 1, "bar": 2, "baz": ["A", "B", "C"]},
        {"foo": 1, "bar": 2, "baz": {"A": 1, "B": 2, "C": 3}},
        '{"baz":[{"A":1,"B":2,"C":3}]}',
    ),
    (
        {"foo": {"bar": [1]}, "goo": [2]},
        {"foo": {"bar": [2]}, "goo": [3]},
        '{"foo":{"bar":{"0":2}},"goo":{"0":3}}',
    ),
    (
        glossary(PARA),
        glossary(PARA.replace("velit esse", "velit sint")),
        '{"glossary":{"GlossDiv":{"GlossList":{"GlossEntry":{"0":{"GlossDef":{"para":'
        '["290=4-4+sint|151=",0,2]}}}}}}}',
    ),
]

LOREM_3 = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut "
    "labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco "
    "laboris nisi ut aliquip ex ea commodo consequat."
)
SIMPLE_ARRAYS = [
    ([], [], "{}"),
    ([1, 2, 3], [1, 2, 3], "{}"),
    ([], [1, 2, 3], "[[1,2,3]]"),
    ([1, 2, 3], [], "[[]]"),
    ([1, 2, 3, 5, 6, 7], [1, 2, 3, 4, 5], '{"3":4,"4":5,"5-":[]}'),
    ([1, 2, 3], [1, 2, 3, 4, 5], '{"3-":[4,5]}'),
    ([1, 2, 3, 4, 5], [1, 2, 3], '{"3-":[]}'),
    ([1, 2, 3], [1, 9, 3], '{"1":9}'),
    ([1, 2, 3], [4, 5, 6], '{"0":4,"1":5,"2":6}'),
    ([LOREM_3], [LOREM_3.replace("quis", "sed")], '{"0":["149=4-3+sed|78=",0,2]}'),
]

NESTED_ARRAYS = [
    ([[[]]], [[[]]], "{}"),
    ([1, [2, [3]]], [1, [2, [3]]], "{}"),
    ([1, [21, 22], 3], [1, [21, 222], 3], '{"1":{"1":222}}'),
    ([1, [21, 22], 3], [1, [21, 22, 23], 3], '{"1":{"2-":[23]}}'),
    ([1, {"hi": "there"}, 3], [1, {"hi": "ho"}, 3], '{"1":{"hi":"ho"}}'),
]


@pytest.mark.parametrize(("old", "new", "expected"), SCALARS)
def test_delta_scalars(old: Any, new: Any, expected: str) -> None:
    check(old, new, expected)


@pytest.mark.parametrize(("old", "new", "expected"), STRINGS)
def test_delta_strings(old: Any, new: Any, expected: str) -> None:
    check(old, new, expected, **_STRINGS)


@pytest.mark.parametrize(("old", "new", "expected"), STRINGS_UTF8)
def test_delta_strings_utf8(old: Any, new: Any, expected: str) -> None:
    check(old, new, expected, **_UTF8)


@pytest.mark.parametrize("options", [{}, _UNBOUNDED], ids=["default", "unbounded"])
@pytest.mark.parametrize(
    ("old", "new", "expected"), SIMPLE_DICTS + NESTED_DICTS + SIMPLE_ARRAYS + NESTED_ARRAYS
)
def test_delta_structures(old: Any, new: Any, expected: str, options: dict) -> None:
    check(old, new, expected, **options)


# -- JsonDiffPatch suite (DeltaTests.json5): forms Fleece applies but never creates ------------

AB = {"a": 1, "b": 2}
ATOMIC = [None, False, True, 42, "some text", AB, [1, 2, 3]]


def _jdp_atomic_pairs() -> list:
    """Every (left, right) pair of distinct atomic values, as the suite lists them."""
    return [
        (left, right, [left, right], [right, left])
        for i, left in enumerate(ATOMIC)
        for right in ATOMIC[i + 1 :]
    ]


def _deep(leaf: dict) -> dict:
    return {"a": {"j": {"k": {"l": {"m": {"n": leaf}}}}}}


JDP_OBJECTS = [
    pytest.param({"a": 1, "b": 2}, {"a": 42, "b": 2}, {"a": [1, 42]}, {"a": [42, 1]}, id="first"),
    pytest.param(
        {**_deep({"o": 3}), "b": 2},
        {**_deep({"o": True}), "b": 2},
        _deep({"o": [3, True]}),
        _deep({"o": [True, 3]}),
        id="deep",
    ),
    pytest.param(
        {**_deep({"o": 3}), "b": 2, "c": 5},
        {**_deep({"o": 5, "w": 12}), "b": 2},
        {**_deep({"o": [3, 5], "w": [12]}), "c": [5, 0, 0]},
        {**_deep({"o": [5, 3], "w": [12, 0, 0]}), "c": [5]},
        id="multiple-changes",
    ),
    pytest.param({"a": 1, "b": 2}, {"a": 1}, {"b": [2, 0, 0]}, {"b": [2]}, id="key-removed"),
]


@pytest.mark.parametrize(("left", "right", "delta", "reverse"), _jdp_atomic_pairs() + JDP_OBJECTS)
def test_jsondiffpatch_forms_apply(left: Any, right: Any, delta: Any, reverse: Any) -> None:
    assert canon(apply_delta(left, delta)) == canon(right)
    assert canon(apply_delta(right, reverse)) == canon(left)
    # and our own (Fleece-native) deltas for the same pairs round-trip
    assert canon(apply_delta(left, create_delta(left, right))) == canon(right)


@pytest.mark.parametrize("value", [*ATOMIC, {"hasOwnProperty": True}])
def test_jsondiffpatch_unchanged_values(value: Any) -> None:
    assert create_delta(value, value) == {}
    assert canon(apply_delta(value, {})) == canon(value)


def test_jsondiffpatch_insertions_apply_inside_objects() -> None:
    # The suite's "left: undefined" cases, applied where an absent value exists: a missing key.
    for right in ATOMIC:
        assert canon(apply_delta({}, {"k": [right]})) == canon({"k": right})
