"""RevID parsing, ordering and generation (fieldsync.store.revid)."""

from __future__ import annotations

import hashlib

import pytest

from fieldsync.store import revid


def test_parse_splits_generation_and_digest():
    parsed = revid.parse("12-" + "0a" * 20)
    assert parsed.generation == 12
    assert parsed.digest == "0a" * 20


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "abc",
        "1",
        "1-",
        "-abcd",
        "0-abcd",
        "01-abcd",
        "x-abcd",
        "1-abc",  # odd length
        "1-ABCD",  # uppercase hex is rejected, as in LiteCore
        "1-zz",
        "+1-ab",
        f"{2**32}-ab",  # generation beyond 32 bits
        "1-" + "ab" * 42,  # longer than LiteCore's binary revID buffer
        None,
        12,
    ],
)
def test_parse_rejects_malformed(bad):
    with pytest.raises(revid.BadRevisionID):
        revid.parse(bad)
    assert not revid.is_valid(bad)


def test_digest_length_limit_depends_on_generation_varint():
    assert revid.is_valid("1-" + "ab" * 41)  # 1-byte varint + 41 bytes = 42
    assert not revid.is_valid("200-" + "ab" * 41)  # 2-byte varint leaves 40 bytes
    assert revid.is_valid("200-" + "ab" * 40)


def test_order_is_generation_then_digest():
    low, high = "2-" + "ff" * 20, "10-" + "00" * 20
    assert revid.compare(low, high) == -1  # numeric, not lexicographic, generations
    assert revid.compare("3-" + "ab" * 20, "3-" + "ac" * 20) == -1
    assert revid.compare("3-ab", "3-ab") == 0
    assert revid.compare("3-abcd", "3-ab") == 1  # longer digest with equal prefix sorts after
    assert sorted(["3-bb", "1-ff", "3-ab", "2-00"], key=revid.sort_key) == [
        "1-ff",
        "2-00",
        "3-ab",
        "3-bb",
    ]


def test_make_is_sha1_of_parent_deleted_flag_and_body():
    body = b'{"a":1}'
    first = revid.make(None, False, body)
    assert first == "1-" + hashlib.sha1(b"\x00" + b"\x00" + body).hexdigest()
    child = revid.make(first, False, body)
    parent = first.encode()
    expected = hashlib.sha1(bytes([len(parent)]) + parent + b"\x00" + body).hexdigest()
    assert child == "2-" + expected
    assert revid.parse(child).generation == 2 and len(revid.parse(child).digest) == 40


def test_make_depends_on_every_input():
    body = b'{"a":1}'
    base = revid.make("1-" + "ab" * 20, False, body)
    assert revid.make("1-" + "ab" * 20, False, body) == base
    assert revid.make("1-" + "ac" * 20, False, body) != base
    assert revid.make("1-" + "ab" * 20, True, body) != base
    assert revid.make("1-" + "ab" * 20, False, b'{"a":2}') != base
