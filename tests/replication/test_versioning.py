"""The session's wire format (rev trees vs version vectors), without sockets.

Strings are the captures and examples of VV-NOTES.md (§2.4, §3.3, §8).
"""

from __future__ import annotations

import pytest

from fieldsync.replication.versioning import (
    OutgoingRev,
    ProposedVersion,
    VersionedRevision,
    WireFormat,
    delta_bases,
    outgoing_rev,
    parse_proposed_versions,
    peer_source,
    read_rev,
)
from fieldsync.store.models import IncomingRevision
from fieldsync.store.versions import (
    HLV,
    BadVersion,
    Order,
    SourceID,
    Version,
    VersionWithLegacy,
    compare_with_legacy,
    legacy_version,
    parse_rev_history,
)

VV = WireFormat.VERSION_VECTORS
RT = WireFormat.REV_TREES
PHONE = "+a694GBERHSnRp2GkS1abw"
PASSIVE = "W9ZVmKsqSoiT6TW3OwhxpA"
LEGACY_1 = "1-7a524aadd3db121ecbfc11c0be35a832a7e8fa4d"


def v(text: str) -> Version:
    return Version.parse(text)


# -- negotiation ---------------------------------------------------------------------------------


def test_subprotocol_sets_the_format() -> None:
    assert WireFormat.for_subprotocol("BLIP_3+CBMobile_4") is VV
    assert WireFormat.for_subprotocol("BLIP_3+CBMobile_3") is RT
    assert WireFormat.for_subprotocol("BLIP_3+CBMobile_2") is RT


@pytest.mark.parametrize(
    ("wire", "requested", "ok"),
    [
        (RT, None, True),
        (RT, "rev-trees", True),
        (RT, "version-vectors", False),
        (VV, None, True),  # Sync Gateway ignores the property
        (VV, "version-vectors", True),
        (VV, "rev-trees", False),
        (VV, "banana", False),
    ],
)
def test_subchanges_versioning_must_agree(wire: WireFormat, requested: str | None, ok: bool):
    error = wire.versioning_mismatch(requested)
    assert (error is None) is ok
    if error is not None:
        assert "Incompatible document versioning" in error
        assert repr(requested) in error


def test_reply_properties_have_no_max_history_in_vv() -> None:
    assert VV.reply_properties() == {"blobs": "true", "sendReplacementRevs": "1"}
    assert RT.reply_properties() == {"maxHistory": "50", "blobs": "true"}
    assert VV.rev_reply_properties(200) == {"noop": "true"}
    assert VV.rev_reply_properties(201) == {} and RT.rev_reply_properties(200) == {}


def test_current_name() -> None:
    vector = HLV(v(f"18ecb6b01a350000@{PHONE}"))
    assert VV.current_name("3-abcd", vector) == f"18ecb6b01a350000@{PHONE}"
    # A doc without a vector: its revID as an RTE version (VV-NOTES §3.4).
    assert VV.current_name("3-abcd", None) == "3abcd000000@Revision+Tree+Encoding"
    assert RT.current_name("3-abcd", vector) == "3-abcd"


# -- proposeChanges --------------------------------------------------------------------------------


def test_proposed_rows_from_the_capture() -> None:
    body = [
        ["doc-000000", f"18ecb6b01a350000@{PHONE}", "", 50],
        ["doc-000001", f"18ecb6b039070001@{PHONE}", f"18ecb6b01a370000@{PHONE}"],
        ["doc-000001", "2-245ff343a19016fe6ba09c2d37fb6141c68858c1", LEGACY_1, 36],
    ]
    rows = parse_proposed_versions(body)
    assert rows[0] == ProposedVersion("doc-000000", v(f"18ecb6b01a350000@{PHONE}"), None, None, 50)
    assert rows[1].parent == v(f"18ecb6b01a370000@{PHONE}")
    assert rows[1].proposed is None
    assert rows[2].rev == "2-245ff343a19016fe6ba09c2d37fb6141c68858c1"
    assert rows[2].parent == LEGACY_1


def test_whole_vector_in_rev_and_parent_columns() -> None:
    rev = f"18ecb6c7f6dc0000@9Ajtjpa1Rxixrt7t9TUfIg; 18ecb6c7745e0000@{PHONE}"
    parent = f"18ecb6b1113c0000@{PASSIVE}; 18ecb6b037090001@{PHONE}"
    (row,) = parse_proposed_versions([["shared", rev, parent, 8]])
    assert row.rev == v("18ecb6c7f6dc0000@9Ajtjpa1Rxixrt7t9TUfIg")
    assert row.proposed == HLV(row.rev, (), (v(f"18ecb6c7745e0000@{PHONE}"),))
    assert row.parent == v(f"18ecb6b1113c0000@{PASSIVE}")


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        (["d", "18ecb6b01a350000@*"], "rev of 'd'"),
        (["d", "18ecb6b01a350000@short"], "rev of 'd'"),
        (["d", "zz@" + PHONE], "rev of 'd'"),
        (["d", f"18ecb6b01a350000@{PHONE}", "1-xyz"], "parent of 'd'"),
        (["d", f"18ecb6b01a350000@{PHONE}", f"1@{PHONE};;"], "parent of 'd'"),
        ([7, f"18ecb6b01a350000@{PHONE}"], "docID"),
        ("nope", "body"),
    ],
)
def test_bad_proposed_rows_name_the_field(entry: object, field: str) -> None:
    with pytest.raises(BadVersion) as caught:
        parse_proposed_versions([entry])
    assert caught.value.field == field and caught.value.status == 400
    assert str(caught.value).startswith(field)


# -- receiving a rev -----------------------------------------------------------------------------


def test_rev_with_pv_and_legacy_tail() -> None:
    properties = {
        "id": "doc-000002",
        "rev": "18ecb6bb03ce0000@CE8ZSklNSrG+nnJHOTadIg",
        "history": f"18ecb6ba82810000@uT96YHLiS4qQMdF0843Sww, {LEGACY_1}",
        "noconflicts": "1",
    }
    got = read_rev(VV, properties)
    assert isinstance(got, VersionedRevision)
    assert got.no_conflicts and not got.deleted
    assert got.version.vector == HLV(
        v("18ecb6bb03ce0000@CE8ZSklNSrG+nnJHOTadIg"),
        (),
        (v("18ecb6ba82810000@uT96YHLiS4qQMdF0843Sww"),),
    )
    assert got.version.legacy == (LEGACY_1,)


def test_rev_merge_in_sync_gateway_spelling() -> None:
    got = read_rev(
        VV,
        {
            "id": "M1",
            "rev": "18ecb6d0d9780000@ZmFrZXNlcnZlcnNvdXJjZQ",
            "history": "18ecb6d0d9770000@WFhYWFhYWFhYWFhYWFhYWA,"
            "18ecb6d0c5e70000@Ti3Z/kflSeKOeYZKu1UXOA;",
            "deleted": "1",
        },
    )
    assert isinstance(got, VersionedRevision) and got.deleted
    assert got.version.vector is not None and len(got.version.vector.mv) == 2


def test_legacy_rev_in_a_vv_session_is_a_rev_tree_insert() -> None:
    got = read_rev(VV, {"id": "doc-000001", "rev": "2-245ff343", "history": LEGACY_1}, b"{}")
    assert isinstance(got, IncomingRevision)
    assert got.rev_id == "2-245ff343" and list(got.history) == [LEGACY_1]
    assert got.from_vv_peer and got.body == b"{}"  # its vector becomes the RTE form


def test_rev_tree_session_reads_a_rev_with_its_body() -> None:
    got = read_rev(RT, {"id": "d", "rev": "2-aa", "history": "1-bb"}, b'{"a":1}')
    assert got == IncomingRevision("d", "2-aa", ["1-bb"], False, b'{"a":1}')
    assert not got.from_vv_peer


@pytest.mark.parametrize(
    ("wire", "properties", "field"),
    [
        (VV, {"id": "d", "rev": f"18ecb6b01a350000@{PHONE}", "history": "1@*"}, "history"),
        (VV, {"id": "d", "rev": "18ecb6b01a350000@*"}, "rev"),
        (VV, {"id": "d", "rev": "0@" + PHONE}, "rev"),
        (VV, {"id": "d", "rev": f"1@{PHONE}", "history": f"1-ab, 2@{PASSIVE}"}, "history"),
        (VV, {"id": "d", "rev": "2-ab", "history": f"1@{PHONE}"}, "history"),
        (VV, {"id": "", "rev": "2-ab"}, "id"),
        (RT, {"id": "d", "rev": f"1@{PHONE}"}, "rev"),
        (RT, {"id": "d", "rev": "banana"}, "rev"),
    ],
)
def test_bad_rev_properties_name_the_field(wire, properties, field) -> None:
    with pytest.raises(BadVersion) as caught:
        read_rev(wire, properties)
    assert caught.value.field == field


def test_peer_source_from_uuid() -> None:
    assert peer_source("f9aebde0-6044-4474-a746-9d86912d5a6f") == SourceID("+a694GBERHSnRp2GkS1abw")
    assert peer_source(None) is None
    with pytest.raises(BadVersion) as caught:
        peer_source("not-a-uuid")
    assert caught.value.field == "uuid"


# -- sending a rev to a 4.x phone: the phone must see NEWER, never a spurious conflict -------------

DEVICE = "ZmFrZXNlcnZlcnNvdXJjZQ"
CHAIN = ["3-cc", "2-bb", "1-aa"]  # the device's rev tree, newest first


def sent(out: OutgoingRev) -> VersionWithLegacy:
    """What the phone reads from the rev + history we send."""
    return parse_rev_history(out.rev, out.history)


def test_phone_holds_a_legacy_revision_of_ours() -> None:
    vector = HLV(v(f"18ecb6bf0000000@{DEVICE}"), (), (v(f"18ecb6b00000000@{PHONE}"),))
    out = outgoing_rev("4-dd", vector, CHAIN, ["2-bb"], None)
    assert out.history == f"18ecb6b00000000@{PHONE}, 4-dd, 3-cc, 2-bb"
    assert out.learned_peer_legacy == "2-bb"
    phone = VersionWithLegacy(None, ("2-bb",))
    assert compare_with_legacy(sent(out), phone) is Order.NEWER


def test_phone_holds_a_legacy_revision_we_do_not_know_is_a_conflict() -> None:
    vector = HLV(v(f"18ecb6bf0000000@{DEVICE}"))
    out = outgoing_rev("4-dd", vector, CHAIN, ["2-ff"], None)
    assert out.learned_peer_legacy is None
    assert compare_with_legacy(sent(out), VersionWithLegacy(None, ("2-ff",))) is Order.CONFLICT


def test_phone_with_a_vector_and_last_legacy_gets_exactly_that_tail() -> None:
    phone_cv = v(f"18ecb6bf8faa0000@{PHONE}")
    vector = HLV(v(f"18ecb6bf9000000@{DEVICE}"), (), (phone_cv,))
    out = outgoing_rev("5-ee", vector, ["4-dd", *CHAIN], [str(phone_cv)], "2-bb")
    assert out.history == f"{phone_cv}, 2-bb"
    phone = VersionWithLegacy(HLV(phone_cv), ("2-bb",))
    assert compare_with_legacy(sent(out), phone) is Order.NEWER
    # Without what we learned (SG behaviour) the same phone would see a conflict (§3.3).
    blind = outgoing_rev("5-ee", vector, ["4-dd", *CHAIN], [str(phone_cv)], None)
    assert compare_with_legacy(sent(blind), phone) is Order.CONFLICT


def test_phone_with_a_vector_and_no_legacy_gets_no_tail() -> None:
    phone_cv = v(f"18ecb6bf976a0000@{PHONE}")
    vector = HLV(v(f"18ecb6bf9800000@{DEVICE}"), (), (phone_cv,))
    out = outgoing_rev("2-bb", vector, ["1-aa"], [str(phone_cv)], "")
    assert out == OutgoingRev(str(vector.cv), str(phone_cv), None)
    assert compare_with_legacy(sent(out), VersionWithLegacy(HLV(phone_cv))) is Order.NEWER


def test_merge_vector_history_spelling() -> None:
    vector = HLV(
        v(f"18ecb6d0d9780000@{DEVICE}"),
        (v(f"18ecb6d0d9770000@{PHONE}"), v(f"18ecb6d0c5e70000@{PASSIVE}")),
    )
    out = outgoing_rev("3-cc", vector, ["2-bb"], [], "2-bb")
    assert out.history == f"18ecb6d0d9770000@{PHONE}, 18ecb6d0c5e70000@{PASSIVE}; 2-bb"
    assert sent(out) == VersionWithLegacy(vector, ("2-bb",))


def test_legacy_document_goes_as_its_rte_version() -> None:
    """A doc without a vector is spelled RTE(revID): a fresh LiteCore 4.1 phone that pulls a
    bare legacy revID cannot take a later update of it (found in interop)."""
    rte = legacy_version("3-cc")
    fresh = outgoing_rev("3-cc", None, ["2-bb", "1-aa"], [], None)
    assert fresh == OutgoingRev(str(rte), None, None)
    # An upgraded phone holding the legacy revision 2-bb: the rev-tree chain down to it.
    upgraded = outgoing_rev("3-cc", None, ["2-bb", "1-aa"], ["2-bb"], None)
    assert upgraded.history == "3-cc, 2-bb" and upgraded.learned_peer_legacy == "2-bb"
    assert compare_with_legacy(sent(upgraded), VersionWithLegacy(None, ("2-bb",))) is Order.NEWER
    # A phone holding it already (its legacy revID, or the RTE version) has the same revision.
    assert compare_with_legacy(sent(fresh), VersionWithLegacy(None, ("3-cc",))) is Order.SAME
    # A phone holding the parent as RTE: newer.
    older = VersionWithLegacy(HLV(legacy_version("2-bb")))
    got = outgoing_rev("3-cc", None, ["2-bb", "1-aa"], [str(legacy_version("2-bb"))], None)
    assert compare_with_legacy(sent(got), older) is Order.NEWER


def test_phone_holding_an_rte_ancestor_sees_our_vector_as_newer() -> None:
    """The device changed a doc the phone got as RTE(3-cc): our vector does not list that
    version, so it goes into the pv sent (as LiteCore's generateVersionVector does)."""
    rte = legacy_version("3-cc")
    vector = HLV(v(f"18ecb6bf9000000@{DEVICE}"))
    out = outgoing_rev("4-dd", vector, CHAIN, [str(rte)], None)
    assert out.history == str(rte)
    assert compare_with_legacy(sent(out), VersionWithLegacy(HLV(rte))) is Order.NEWER
    # An RTE version of a revision that is not ours is not added: a real conflict.
    stranger = legacy_version("3-ee")
    out = outgoing_rev("4-dd", vector, CHAIN, [str(stranger)], None)
    assert out.history is None
    assert compare_with_legacy(sent(out), VersionWithLegacy(HLV(stranger))) is Order.CONFLICT


def test_first_version_goes_without_history() -> None:
    vector = HLV(v(f"18ecb6b077a40000@{PASSIVE}"))
    assert outgoing_rev("1-aa", vector, [], [], None) == OutgoingRev(str(vector.cv), None)


def test_delta_bases_keep_the_phones_order() -> None:
    known = [f"18ecb6b16eab0001@{PHONE}", "2-ab", "garbage", f"1@{PASSIVE}"]
    assert delta_bases(known) == [v(known[0]), "2-ab", v(known[3])]
