"""fieldsync.store.versions against the examples and tables of VV-NOTES.md (byte-exact)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldsync.store import versions as vv
from fieldsync.store.errors import InvalidInput
from fieldsync.store.versions import (
    HLV,
    BadVersion,
    DocVersions,
    HybridLogicalClock,
    Order,
    SourceID,
    Version,
    VersionWithLegacy,
)

PHONE = "+a694GBERHSnRp2GkS1abw"  # test A client
PASSIVE = "W9ZVmKsqSoiT6TW3OwhxpA"  # test A passive
FAKE = "ZmFrZXNlcnZlcnNvdXJjZQ"  # test B/F fake passive
CLIENT_B = "0hWqmbTSRlul4FCfYosjng"
R1 = "1-6fe86833" + "ab" * 16  # test B's legacy revID (digest shortened in the notes)
OTHER = "2-abcdef0123"


def v(text: str) -> Version:
    return Version.parse(text)


# -- §2.1 source IDs ------------------------------------------------------------------------


def test_source_id_from_getcollections_uuid() -> None:
    # VV-NOTES §8 handshake: uuid f9aebde0-… is the client's source +a694GBERHSnRp2GkS1abw.
    assert str(SourceID.from_uuid("f9aebde0-6044-4474-a746-9d86912d5a6f")) == PHONE


def test_rte_source_bytes() -> None:
    assert vv.RTE_SOURCE.raw.hex(" ") == "45 eb e2 b2 2a 27 f9 3a de 7b e1 27 72 87 62 9e"
    assert SourceID.from_bytes(vv.RTE_SOURCE.raw) == vv.RTE_SOURCE


@pytest.mark.parametrize(
    "text",
    [
        "*",
        "",
        PHONE[:-1],
        PHONE + "A",
        "+a694GBERHSnRp2GkS1abB",  # last char leaves non-zero unused bits
        "+a694GBERHSnRp2GkS1a=w",
        "A" * 22,  # all-zero = "me"
    ],
)
def test_bad_source_ids(text: str) -> None:
    with pytest.raises(BadVersion) as info:
        SourceID.parse(text, "source")
    assert info.value.field == "source"
    assert isinstance(info.value, InvalidInput) and info.value.status == 400


def test_generated_source_ids_are_valid_and_distinct() -> None:
    ids = {SourceID.generate() for _ in range(50)}
    assert len(ids) == 50
    for sid in ids:
        assert SourceID.parse(sid.text) == sid and sid.text[-1] in "AQgw"


@given(st.binary(min_size=16, max_size=16).filter(any))
def test_source_id_round_trip(raw: bytes) -> None:
    sid = SourceID.from_bytes(raw)
    assert len(sid.text) == 22 and sid.raw == raw
    assert SourceID.parse(sid.text) == sid


# -- §2.2 versions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "18b1c2d3e4f50000@ZmFrZXNlcnZlcnNvdXJjZQ",
        "18ecb6b01a370001@+a694GBERHSnRp2GkS1abw",
        "127a203467a@Revision+Tree+Encoding",
    ],
)
def test_version_round_trip_byte_exact(text: str) -> None:
    assert str(v(text)) == text


def test_version_parse_accepts_upper_case_and_writes_lower() -> None:
    assert str(v("18ECB6B01A370001@" + PHONE)) == "18ecb6b01a370001@" + PHONE
    assert v("18ecb6b01a370001@" + PHONE).time == 0x18ECB6B01A370001


@pytest.mark.parametrize(
    "text",
    [
        "0@" + PHONE,  # time 0
        "18ecb6b01a370001@*",  # local shorthand
        "18ecb6b01a370001",  # no source
        "@" + PHONE,
        "0x18ecb6@" + PHONE,
        "18ecb6b01a37000g@" + PHONE,
        "18ecb6b01a370001@" + PHONE + " ",
        "8000000000000000@" + PHONE,  # beyond 2**63-1
        "1" * 17 + "@" + PHONE,
        "18ecb6b01a370001@@" + PHONE,
    ],
)
def test_bad_versions_name_the_field(text: str) -> None:
    with pytest.raises(BadVersion) as info:
        Version.parse(text, "rev")
    assert info.value.field == "rev"


def test_non_string_version() -> None:
    with pytest.raises(BadVersion):
        Version.parse(42, "rev")


def test_parse_revision_tells_the_spellings_apart() -> None:
    assert vv.parse_revision("3-abcdef") == "3-abcdef"
    assert vv.parse_revision("1850a1b2c3d40000@" + PHONE) == v("1850a1b2c3d40000@" + PHONE)
    with pytest.raises(BadVersion):
        vv.parse_revision("3-xyz", "rev")


# -- §2.3 vectors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "18ecb6b037090001@" + PHONE,
        f"18ecb6b1113c0000@{PASSIVE}; 18ecb6b037090001@{PHONE}",  # 409 rev, test A
        "18ecb6c7f6dc0000@9Ajtjpa1Rxixrt7t9TUfIg; 18ecb6c7745e0000@oaC0o5yUT7SBuolB0aCZZQ",
        f"1852aaaa00000000@{PHONE}, 1851aaaa00000000@{PASSIVE}, 1850aaaa00000000@{FAKE};",
        f"1852aaaa00000000@{PHONE}, 1851aaaa00000000@{PASSIVE}; 184faaaa00000000@{FAKE}",
    ],
)
def test_vector_round_trip_byte_exact(text: str) -> None:
    assert str(HLV.parse(text)) == text


@pytest.mark.parametrize("text", [f"18ecb6b1113c0000@{PASSIVE}", "1@" + PHONE])
def test_single_version_vector_is_the_vector_of_that_version(text: str) -> None:
    version = v(text)
    assert vv.single_version_vector(version) == str(HLV(version)) == str(HLV(version).cv)
    legacy = vv.legacy_version(R1)  # a legacy revID pushed by a 4.x phone
    assert vv.single_version_vector(legacy) == str(HLV(legacy))


def test_vector_without_semicolon_is_all_current() -> None:
    hlv = HLV.parse(f"18ecb6d0d9780000@{FAKE},18ecb6d0d9770000@WFhYWFhYWFhYWFhYWFhYWA")
    assert len(hlv.mv) == 1 and not hlv.pv


def test_vector_sg_spelling_read() -> None:
    hlv = HLV.parse(f"18ecb6b1113c0000@{PASSIVE};18ecb6b037090001@{PHONE}")
    assert str(hlv) == f"18ecb6b1113c0000@{PASSIVE}; 18ecb6b037090001@{PHONE}"


def test_cv_source_may_repeat_once_in_merge_with_older_time() -> None:
    HLV.parse(f"2000000000000@{PHONE}, 1000000000000@{PHONE}, 1500000000000@{FAKE};")
    with pytest.raises(BadVersion):
        HLV.parse(f"2000000000000@{PHONE}, 3000000000000@{PHONE};")
    with pytest.raises(BadVersion):  # in pv: duplicate
        HLV.parse(f"2000000000000@{PHONE}; 1000000000000@{PHONE}")
    with pytest.raises(BadVersion):
        HLV.parse(f"2000000000000@{PHONE}; 1000000000000@{FAKE}, 1100000000000@{FAKE}")


@pytest.mark.parametrize(
    "text",
    [
        "",
        ";",
        f"1@{PHONE};;",
        f"1@{PHONE}, ,2@{FAKE}",
        f"1@{PHONE}; 2@{FAKE}; 3@{PASSIVE}",
        "3-abc",
    ],
)
def test_bad_vectors(text: str) -> None:
    with pytest.raises(BadVersion) as info:
        HLV.parse(text, "rev")
    assert info.value.field == "rev"


def test_extract_current_takes_text_before_first_delimiter() -> None:
    row = "18ecb6c7f6dc0000@9Ajtjpa1Rxixrt7t9TUfIg; 18ecb6c7745e0000@oaC0o5yUT7SBuolB0aCZZQ"
    assert str(vv.extract_current(row)) == "18ecb6c7f6dc0000@9Ajtjpa1Rxixrt7t9TUfIg"
    assert vv.extract_current("3-9f2c") == "3-9f2c"
    with pytest.raises(BadVersion) as info:
        vv.extract_current("18ecb6c7f6dc0000@*; x", "parent")
    assert info.value.field == "parent"


# -- §2.4 rev + history ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rev", "history", "vector", "legacy"),
    [
        # test A: first version, no history
        (f"18ecb6b01a350000@{PHONE}", None, f"18ecb6b01a350000@{PHONE}", ()),
        # test A: pull of a server-side edit, client version as pv
        (
            f"18ecb6b075630000@{PASSIVE}",
            f"18ecb6b01a370001@{PHONE}",
            f"18ecb6b075630000@{PASSIVE}; 18ecb6b01a370001@{PHONE}",
            (),
        ),
        # test C: first save after the upgrade: only the lastLegacyRevID as tail
        (
            "18ecb6bae2b60000@CE8ZSklNSrG+nnJHOTadIg",
            "1-b27e7248b7062d8f624c00a84f7df7826e6c424f",
            "18ecb6bae2b60000@CE8ZSklNSrG+nnJHOTadIg",
            ("1-b27e7248b7062d8f624c00a84f7df7826e6c424f",),
        ),
        # test C: pv and legacy tail
        (
            "18ecb6bb03ce0000@CE8ZSklNSrG+nnJHOTadIg",
            "18ecb6ba82810000@uT96YHLiS4qQMdF0843Sww, 1-7a524aadd3db121ecbfc11c0be35a832a7e8fa4d",
            "18ecb6bb03ce0000@CE8ZSklNSrG+nnJHOTadIg; 18ecb6ba82810000@uT96YHLiS4qQMdF0843Sww",
            ("1-7a524aadd3db121ecbfc11c0be35a832a7e8fa4d",),
        ),
        # test D
        (
            "18ecb6c7f6dc0000@9Ajtjpa1Rxixrt7t9TUfIg",
            "18ecb6c7745e0000@oaC0o5yUT7SBuolB0aCZZQ",
            "18ecb6c7f6dc0000@9Ajtjpa1Rxixrt7t9TUfIg; 18ecb6c7745e0000@oaC0o5yUT7SBuolB0aCZZQ",
            (),
        ),
        # merge with pvs (§2.4 example shape)
        (
            f"1852aaaa00000000@{PHONE}",
            f"1851aaaa00000000@{PASSIVE}, 1850aaaa00000000@{FAKE}; 184faaaa00000000@{CLIENT_B}",
            f"1852aaaa00000000@{PHONE}, 1851aaaa00000000@{PASSIVE}, 1850aaaa00000000@{FAKE}; "
            f"184faaaa00000000@{CLIENT_B}",
            (),
        ),
        # merge without pvs
        (
            f"1852aaaa00000000@{PHONE}",
            f"1851aaaa00000000@{PASSIVE}, 1850aaaa00000000@{FAKE};",
            f"1852aaaa00000000@{PHONE}, 1851aaaa00000000@{PASSIVE}, 1850aaaa00000000@{FAKE};",
            (),
        ),
        # merge without pvs, legacy tail
        (
            f"1852aaaa00000000@{PHONE}",
            f"1851aaaa00000000@{PASSIVE}; 3-abcd, 2-ef01",
            f"1852aaaa00000000@{PHONE}, 1851aaaa00000000@{PASSIVE};",
            ("3-abcd", "2-ef01"),
        ),
    ],
)
def test_rev_history_byte_exact(
    rev: str, history: str | None, vector: str, legacy: tuple[str, ...]
) -> None:
    parsed = vv.parse_rev_history(rev, history)
    assert parsed.vector is not None
    assert str(parsed.vector) == vector
    assert parsed.legacy == legacy
    assert str(parsed.vector.cv) == rev
    assert vv.format_history(parsed.vector, parsed.legacy) == history


def test_history_sg_spelling_test_f() -> None:
    # M1: SG format, no spaces, trailing ';' -> two mvs
    m1 = vv.parse_rev_history(
        f"18ecb6d0d9780000@{FAKE}",
        "18ecb6d0d9770000@WFhYWFhYWFhYWFhYWFhYWA,18ecb6d0c5e70000@Ti3Z/kflSeKOeYZKu1UXOA;",
    )
    assert m1.vector is not None and len(m1.vector.mv) == 2 and not m1.vector.pv
    # P1: no ';' -> all pv
    p1 = vv.parse_rev_history(
        f"18ecb6d0d9790000@{FAKE}",
        "18ecb6d0c7ad0000@Ti3Z/kflSeKOeYZKu1UXOA,18ecb6cfd9760000@WFhYWFhYWFhYWFhYWFhYWA",
    )
    assert p1.vector is not None and not p1.vector.mv and len(p1.vector.pv) == 2


@pytest.mark.parametrize(
    ("rev", "history", "field"),
    [
        ("18ecb6d0d9780000@*", None, "rev"),
        ("3-abc", None, "rev"),
        (f"18ecb6d0d9780000@{FAKE}", f"1-ab, 18ecb6d0d9770000@{PHONE}", "history"),
        (f"18ecb6d0d9780000@{FAKE}", "18ecb6d0d9770000@*", "history"),
        (f"18ecb6d0d9780000@{FAKE}", f"; 18ecb6d0d9770000@{PHONE}", "history"),
        (f"18ecb6d0d9780000@{FAKE}", f"1@{PHONE}; 2@{PASSIVE}; 3@{CLIENT_B}", "history"),
        (f"18ecb6d0d9780000@{FAKE}", "garbage", "history"),
        (f"18ecb6d0d9780000@{FAKE}", f"18ecb6d0d9770000@{FAKE}", "history"),  # dup source
        (f"18ecb6d0d9780000@{FAKE}", 7, "history"),
    ],
)
def test_bad_rev_history(rev: object, history: object, field: str) -> None:
    with pytest.raises(BadVersion) as info:
        vv.parse_rev_history(rev, history)
    assert info.value.field == field


def test_parse_full_whole_vector_strings() -> None:
    full = vv.parse_full(f"18ecb6b1113c0000@{PASSIVE}; 18ecb6b037090001@{PHONE}")
    assert full.vector is not None and str(full.vector.pv[0]) == f"18ecb6b037090001@{PHONE}"
    tail = vv.parse_full(f"1@{PHONE}; 2@{FAKE}, 3-abcd, 2-ef01")
    assert tail.legacy == ("3-abcd", "2-ef01")
    assert str(tail) == f"1@{PHONE}; 2@{FAKE}, 3-abcd, 2-ef01"
    assert vv.parse_full("3-abcd").legacy == ("3-abcd",)
    with pytest.raises(BadVersion):
        vv.parse_full(f"3-abcd, 1@{PHONE}")


_sources = st.binary(min_size=16, max_size=16).filter(any).map(SourceID.from_bytes)
_times = st.integers(min_value=1, max_value=vv.MAX_VALID_TIME)


@st.composite
def _vectors(draw: st.DrawFn) -> HLV:
    sources = draw(st.lists(_sources, min_size=1, max_size=8, unique=True))
    entries = [Version(draw(_times), s) for s in sources]
    n_mv = draw(st.integers(0, len(entries) - 1))
    return HLV(entries[0], tuple(entries[1 : 1 + n_mv]), tuple(entries[1 + n_mv :]))


_legacy = st.lists(
    st.tuples(st.integers(1, 1000), st.binary(min_size=1, max_size=20)), max_size=4
).map(lambda items: tuple(f"{g}-{d.hex()}" for g, d in items))


@given(_vectors(), _legacy)
def test_vector_and_history_round_trip(hlv: HLV, legacy: tuple[str, ...]) -> None:
    assert HLV.parse(str(hlv)) == hlv
    history = vv.format_history(hlv, legacy)
    parsed = vv.parse_rev_history(str(hlv.cv), history)
    assert parsed == VersionWithLegacy(hlv, legacy)
    assert vv.parse_full(str(parsed)) == parsed
    # SG spelling (no spaces) reads the same
    if history is not None:
        assert vv.parse_rev_history(str(hlv.cv), history.replace(" ", "")) == parsed


# -- §3.1 vector comparison, row by row -----------------------------------------------------

A, B, C = PHONE, PASSIVE, FAKE


@pytest.mark.parametrize(
    ("vector", "version", "expected"),
    [
        (f"2000000000000@{A}", f"1000000000000@{B}", Order.OLDER),  # no entry for the source
        (f"2000000000000@{A}; 1000000000000@{B}", f"1500000000000@{B}", Order.OLDER),  # older time
        (f"2000000000000@{A}; 1000000000000@{B}", f"2000000000000@{A}", Order.SAME),  # cv
        (f"2000000000000@{A}; 1000000000000@{B}", f"1000000000000@{B}", Order.NEWER),  # not the cv
        (f"2000000000000@{A}; 1000000000000@{B}", f"0f00000000000@{B}", Order.NEWER),  # later
        (f"2000000000000@{A}", f"1000000000000@{A}", Order.NEWER),
    ],
)
def test_compare_vector_to_version(vector: str, version: str, expected: Order) -> None:
    assert vv.compare_to_version(HLV.parse(vector), v(version)) is expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (
            f"2000000000000@{A}; 1000000000000@{B}",
            f"2000000000000@{A}; 1000000000000@{B}",
            Order.SAME,
        ),
        (f"2000000000000@{A}", f"2000000000000@{A}; 1000000000000@{C}", Order.SAME),  # cv only
        (f"2000000000000@{A}; 1000000000000@{B}", f"1000000000000@{B}", Order.NEWER),
        (f"1000000000000@{B}", f"2000000000000@{A}; 1000000000000@{B}", Order.OLDER),
        (f"2000000000000@{A}; 1000000000000@{B}", f"1100000000000@{B}", Order.CONFLICT),
        (f"2000000000000@{A}", f"1000000000000@{B}", Order.CONFLICT),
        # trivial merge compares SAME to the winner
        (f"2000000000000@{A}; 1100000000000@{B}", f"2000000000000@{A}", Order.SAME),
        # a merge contains both cvs
        (
            f"3000000000000@{C}, 2000000000000@{A}, 1100000000000@{B};",
            f"1100000000000@{B}",
            Order.NEWER,
        ),
    ],
)
def test_compare_vectors(a: str, b: str, expected: Order) -> None:
    assert vv.compare_vectors(HLV.parse(a), HLV.parse(b)) is expected
    assert vv.compare_vectors(HLV.parse(b), HLV.parse(a)) is expected.reverse()


def test_merges() -> None:
    winner = HLV.parse(f"2000000000000@{A}; 1000000000000@{C}")
    loser = HLV.parse(f"1100000000000@{B}; 1200000000000@{C}")
    merged = vv.merge(winner, loser, v(f"3000000000000@{CLIENT_B}"))
    assert str(merged) == (
        f"3000000000000@{CLIENT_B}, 2000000000000@{A}, 1100000000000@{B}; 1200000000000@{C}"
    )
    assert vv.compare_vectors(merged, winner) is Order.NEWER
    assert vv.compare_vectors(merged, loser) is Order.NEWER
    trivial = vv.trivial_merge(winner, loser)
    assert str(trivial) == f"2000000000000@{A}; 1200000000000@{C}, 1100000000000@{B}"
    assert vv.compare_vectors(trivial, winner) is Order.SAME
    assert vv.compare_vectors(trivial, loser) is Order.NEWER
    # LiteCore 4.1 merging its edit with a pulled one (seen in test_versions_litecore41)
    mine = HLV.parse("18ecbc6a5db30000@JDK2OqUDQIu4CdyvyZHf3A")
    theirs = HLV.parse("18ecbc6a4fad0000@PrJDjYcRQWOX0b4/RZMgeg")
    assert str(vv.merge(mine, theirs, v("18ecbc6a6b7d0000@JDK2OqUDQIu4CdyvyZHf3A"))) == (
        "18ecbc6a6b7d0000@JDK2OqUDQIu4CdyvyZHf3A, 18ecbc6a5db30000@JDK2OqUDQIu4CdyvyZHf3A, "
        "18ecbc6a4fad0000@PrJDjYcRQWOX0b4/RZMgeg;"
    )
    # both sides by the merging source: only the newer one stays a merge version
    both = vv.merge(
        HLV(v(f"2000000000000@{A}")), HLV(v(f"1000000000000@{A}")), v(f"3000000000000@{A}")
    )
    assert str(both) == f"3000000000000@{A}, 2000000000000@{A};"
    # updating a merge: mvs become pvs
    updated = merged.with_new_cv(v(f"4000000000000@{A}"))
    assert not updated.mv and updated.time_of(SourceID(B)) == 0x1100000000000


# -- §3.3 vectors with legacy revIDs, row by row ----------------------------------------------

_VEC_X = HLV.parse(f"2000000000000@{A}")
_VEC_NEWER = HLV.parse(f"3000000000000@{B}; 2000000000000@{A}")
#: (a.vector, b.vector) per row: both empty, a empty, b empty, same, a older, a newer
_VECTOR_ROWS = [
    (None, None),
    (None, _VEC_X),
    (_VEC_X, None),
    (_VEC_X, _VEC_X),
    (_VEC_X, _VEC_NEWER),
    (_VEC_NEWER, _VEC_X),
]
#: (a.legacy, b.legacy) per column, same order
_LEGACY_COLUMNS: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
    ((), ()),
    ((), ("2-bb",)),
    (("2-bb",), ()),
    (("2-bb", "1-aa"), ("2-bb", "1-aa")),
    (("1-aa",), ("2-bb", "1-aa")),
    (("2-bb", "1-aa"), ("1-aa",)),
]
SA, OL, NE, XX = Order.SAME, Order.OLDER, Order.NEWER, Order.CONFLICT
_TABLE = [
    [SA, OL, NE, SA, OL, NE],
    [OL, OL, XX, OL, OL, XX],
    [NE, XX, NE, NE, XX, NE],
    [SA, XX, XX, SA, XX, XX],
    [OL, XX, XX, OL, XX, XX],
    [NE, XX, XX, NE, XX, XX],
]


@pytest.mark.parametrize("row", range(6))
@pytest.mark.parametrize("column", range(6))
def test_compare_with_legacy_table(row: int, column: int) -> None:
    va, vb = _VECTOR_ROWS[row]
    la, lb = _LEGACY_COLUMNS[column]
    a, b = VersionWithLegacy(va, la), VersionWithLegacy(vb, lb)
    assert vv.compare_with_legacy(a, b) is _TABLE[row][column]
    assert vv.compare_with_legacy(b, a) is _TABLE[row][column].reverse()


def test_legacy_lists_without_common_entry_conflict() -> None:
    a = VersionWithLegacy(None, ("2-cc", "1-aa"))
    b = VersionWithLegacy(None, ("2-bb", "1-dd"))
    assert vv.compare_with_legacy(a, b) is Order.CONFLICT
    # found later in both -> conflict
    a = VersionWithLegacy(None, ("2-cc", "1-aa"))
    b = VersionWithLegacy(None, ("2-bb", "1-aa"))
    assert vv.compare_with_legacy(a, b) is Order.CONFLICT


def test_legacy_only_equals_its_rte_version() -> None:
    rev_id = "1-27a203467afb3ae150a0efb4a12969eb582f45e5"
    legacy = VersionWithLegacy(None, (rev_id,))
    rte = VersionWithLegacy(HLV(vv.legacy_version(rev_id)))
    assert vv.compare_with_legacy(legacy, rte) is Order.SAME
    assert vv.compare_with_legacy(rte, legacy) is Order.SAME


# Test B of §8: a = what the device sends (cv @FAKE + history), b = the phone's copy.
_T = f"18ecb6c000000000@{FAKE}"


@pytest.mark.parametrize(
    ("phone_copy", "history", "expected"),
    [
        (VersionWithLegacy(None, (R1,)), None, Order.CONFLICT),  # L1
        (VersionWithLegacy(None, (R1,)), R1, Order.NEWER),  # L2
        (VersionWithLegacy(None, (R1,)), f"{OTHER}, {R1}", Order.NEWER),  # L3
        (
            VersionWithLegacy(HLV.parse(f"18ecb6bf8faa0000@{CLIENT_B}"), (R1,)),
            f"18ecb6bf8faa0000@{CLIENT_B}",
            Order.CONFLICT,
        ),  # V1
        (
            VersionWithLegacy(HLV.parse(f"18ecb6bf93650000@{CLIENT_B}"), (R1,)),
            f"18ecb6bf93650000@{CLIENT_B}, {R1}",
            Order.NEWER,
        ),  # V2
        (
            VersionWithLegacy(HLV.parse(f"18ecb6bf95bf0000@{CLIENT_B}"), (R1,)),
            f"18ecb6bf95bf0000@{CLIENT_B}, {OTHER}, {R1}",
            Order.CONFLICT,
        ),  # V3
        (
            VersionWithLegacy(HLV.parse(f"18ecb6bf976a0000@{CLIENT_B}")),
            f"18ecb6bf976a0000@{CLIENT_B}",
            Order.NEWER,
        ),  # N1
        (
            VersionWithLegacy(HLV.parse(f"18ecb6bf99510000@{CLIENT_B}")),
            f"18ecb6bf99510000@{CLIENT_B}, 1-abcdef0123",
            Order.CONFLICT,
        ),  # N2
    ],
)
def test_observed_test_b(
    phone_copy: VersionWithLegacy, history: str | None, expected: Order
) -> None:
    sent = vv.parse_rev_history(_T, history)
    assert vv.compare_with_legacy(sent, phone_copy) is expected


# -- §3.4 RTE ---------------------------------------------------------------------------------


def test_legacy_version_examples() -> None:
    assert str(vv.legacy_version("1-27a203467afb3ae150a0efb4a12969eb582f45e5")) == (
        "127a203467a@Revision+Tree+Encoding"
    )
    assert str(vv.legacy_version("3-abcdef0123456789abcdef")) == (
        "3abcdef0123@Revision+Tree+Encoding"
    )
    # short digests are padded with zeros (SG)
    assert str(vv.legacy_version("2-abcd")) == "2abcd000000@Revision+Tree+Encoding"
    assert vv.legacy_matches("3-abcdef0123456789", v("3abcdef0123@Revision+Tree+Encoding"))
    assert not vv.legacy_matches("3-abcdef0124456789", v("3abcdef0123@Revision+Tree+Encoding"))


# -- §3.5 proposeChanges decisions --------------------------------------------------------------

DEV = "ZGV2aWNlZGV2aWNlZGV2aQ"


def _doc(hlv: str | None, rev_id: str = "2-bb", deleted: bool = False) -> DocVersions:
    return DocVersions("d", rev_id, deleted, 5, HLV.parse(hlv) if hlv else None, "1-aa")


@pytest.mark.parametrize(
    ("current", "rev", "parent", "proposed", "expected"),
    [
        (None, f"1850000000000@{A}", None, None, (0, None)),
        (_doc(None), f"1850000000000@{A}", "2-bb", None, (0, None)),  # parent = my revtree ID
        (_doc(None), f"1850000000000@{A}", "1-aa", None, (409, "2-bb")),  # no HLV, old parent
        (_doc(None), f"1850000000000@{A}", None, None, (409, "2-bb")),
        (_doc(None, deleted=True), f"1850000000000@{A}", None, None, (0, None)),
        (
            _doc(f"1800000000000@{DEV}"),
            f"1850000000000@{A}",
            f"1800000000000@{DEV}",
            None,
            (0, None),
        ),
        (
            _doc(f"1800000000000@{DEV}; 1700000000000@{A}"),
            f"1700000000000@{A}",
            None,
            None,
            (304, None),
        ),
        (_doc(f"1800000000000@{A}"), f"1900000000000@{A}", f"1850000000000@{A}", None, (0, None)),
        (
            _doc(f"1800000000000@{DEV}"),
            f"1900000000000@{A}",
            f"1850000000000@{A}",
            HLV.parse(f"1900000000000@{A}; 1800000000000@{DEV}"),
            (0, None),
        ),
        (
            _doc(f"1800000000000@{DEV}"),
            f"1900000000000@{A}",
            f"1850000000000@{A}",
            None,
            (409, f"1800000000000@{DEV}"),
        ),
        (_doc(f"1800000000000@{DEV}"), "3-cc", "2-bb", None, (0, None)),  # legacy rev, my parent
        (_doc(f"1800000000000@{DEV}"), "2-bb", "1-aa", None, (304, None)),
        (_doc(f"1800000000000@{DEV}"), "3-cc", "1-aa", None, (409, f"1800000000000@{DEV}")),
    ],
)
def test_decide_proposed(
    current: DocVersions | None,
    rev: str,
    parent: str | None,
    proposed: HLV | None,
    expected: tuple[int, str | None],
) -> None:
    rev_parsed = vv.parse_revision(rev)
    parent_parsed = vv.extract_current(parent) if parent else None
    assert vv.decide_proposed(current, rev_parsed, parent_parsed, proposed) == expected


def test_decide_incoming() -> None:
    legacy_doc = _doc(None)
    child = vv.parse_rev_history(f"1850000000000@{A}", "2-bb")
    assert vv.decide_incoming(legacy_doc, child) is Order.NEWER
    assert vv.decide_incoming(legacy_doc, vv.parse_rev_history(f"1850000000000@{A}", "1-aa")) is (
        Order.CONFLICT
    )
    dev = _doc(f"1800000000000@{DEV}")
    assert vv.decide_incoming(dev, vv.parse_rev_history(f"1850000000000@{A}", "1-aa")) is (
        Order.CONFLICT
    )
    on_top = vv.parse_rev_history(f"1850000000000@{A}", f"1800000000000@{DEV}, 1-aa")
    assert vv.decide_incoming(dev, on_top) is Order.NEWER
    assert vv.decide_incoming(dev, vv.parse_rev_history(f"1800000000000@{DEV}", "1-aa")) is (
        Order.SAME
    )
    tomb = _doc(f"1800000000000@{DEV}", deleted=True)
    assert vv.decide_incoming(tomb, vv.parse_rev_history(f"1850000000000@{A}", None)) is Order.NEWER
    assert vv.decide_incoming(None, child) is Order.NEWER


# -- HLC ----------------------------------------------------------------------------------------

NOW = 0x18ECB6B01A350000  # 2026-11-30


class FakeWall:
    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def test_hlc_strictly_increasing_with_counter() -> None:
    wall = FakeWall(NOW + 12345)
    clock = HybridLogicalClock(wall=wall)
    stamps = [clock.now() for _ in range(5)]
    assert stamps[0] == NOW  # low 16 bits zeroed
    assert stamps == [NOW + i for i in range(5)]
    wall.t = NOW - 10**9  # wall clock steps back
    assert clock.now() == NOW + 5
    assert clock.now(after=NOW + 100) == NOW + 101


def test_hlc_advances_from_received_versions_when_behind() -> None:
    wall = FakeWall(10**9)  # a Pi booted at the epoch, no RTC
    clock = HybridLogicalClock(wall=wall)
    first = clock.now()
    assert first >= vv.MIN_VALID_TIME
    clock.see(v(f"{NOW:x}@{A}"))
    assert clock.now() == NOW + 1


def test_hlc_never_stamps_more_than_margin_ahead_of_phones() -> None:
    hour = 3600 * 10**9
    wall = FakeWall(NOW + hour)  # device clock an hour ahead of the phone's
    clock = HybridLogicalClock(wall=wall)
    clock.see(v(f"{NOW:x}@{A}"))
    stamp = clock.now()
    assert NOW < stamp <= NOW + vv.STAMP_MARGIN_NS
    wall.t += 10 * 10**9  # ten seconds later
    later = clock.now()
    assert stamp < later <= NOW + 10 * 10**9 + vv.STAMP_MARGIN_NS
    assert later - NOW < vv.PEER_MAX_SKEW_NS


def test_hlc_ignores_own_and_rte_versions() -> None:
    clock = HybridLogicalClock(wall=FakeWall(NOW))
    me = SourceID(DEV)
    clock.see(Version(NOW + 10**12, me), mine=me)
    clock.see(vv.legacy_version("900-abcdef0123"))
    assert clock.now() == NOW


@given(st.lists(st.one_of(st.integers(0, 2**62), st.none()), max_size=40))
def test_hlc_monotonic_property(events: list[int | None]) -> None:
    wall = FakeWall(NOW)
    clock = HybridLogicalClock(wall=wall)
    last = 0
    for index, event in enumerate(events):
        wall.t = NOW + (index * 7919 % 13) * 10**6 - 5 * 10**6
        if event is None or event < vv.MIN_VALID_TIME:
            stamp = clock.now()
            assert stamp > last
            last = stamp
        else:
            clock.see(Version(event, SourceID(A)))
            last = max(last, event)


@pytest.mark.parametrize(
    "text", ["f9aebde0-6044-4474-a746", "f9aebde06044-4474-a746-9d86912d5a6f0", "z" * 36, 7, ""]
)
def test_bad_uuid(text: object) -> None:
    with pytest.raises(BadVersion) as info:
        SourceID.from_uuid(text)  # type: ignore[arg-type]
    assert info.value.field == "uuid"


def test_all_zero_uuid_is_not_a_source() -> None:
    with pytest.raises(BadVersion) as info:
        SourceID.from_uuid("00000000-0000-0000-0000-000000000000")
    assert info.value.field == "uuid" and "me" in info.value.detail
