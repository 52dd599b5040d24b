"""Version vectors in the store: every write path updates the rev tree AND the vector, the
device clock, 4.x inserts and conflicts, the per-peer lastLegacyRevID (VV-NOTES §6/§7)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fieldsync.store import Collection, Database, IncomingRevision, revid
from fieldsync.store import versions as vv
from fieldsync.store.doc_versions import device_versions
from fieldsync.store.models import IncomingVersioned
from fieldsync.store.versions import HLV, Order, SourceID, Version

PHONE = SourceID("+a694GBERHSnRp2GkS1abw")
OTHER_PHONE = SourceID("CE8ZSklNSrG+nnJHOTadIg")
NOW = 0x18ECB6B01A350000  # 2026-11-30


def pushed(
    doc_id: str,
    rev: str,
    history: str | None = None,
    body: dict[str, object] | None = None,
    *,
    deleted: bool = False,
    peer: str | None = "phone-a",
) -> IncomingVersioned:
    data = json.dumps(body if body is not None else {"by": rev}).encode()
    return IncomingVersioned(
        doc_id, vv.parse_rev_history(rev, history), deleted, b"{}" if deleted else data, peer
    )


def ver(source: SourceID, offset_ms: int) -> str:
    return f"{NOW + offset_ms * 1_000_000:x}@{source}"


# -- identity and clock ------------------------------------------------------------------------


def test_source_id_is_persistent_and_distinct(tmp_path: Path) -> None:
    with Database.open(tmp_path / "a") as a, Database.open(tmp_path / "b") as b:
        source = a.source_id
        assert len(source.text) == 22 and source != b.source_id
    with Database.open(tmp_path / "a") as again:
        assert again.source_id == source


def test_local_writes_update_tree_and_vector(coll: Collection, db: Database) -> None:
    me = db.source_id
    first = coll.save_document("d", {"v": 1})
    assert first.version is not None and first.version.cv.source == me
    assert revid.generation(first.rev_id) == 1
    second = coll.save_document("d", {"v": 2})
    assert second.version is not None and second.version.cv.time > first.version.cv.time
    assert not second.version.pv  # same author: one entry
    deleted = coll.delete_document("d")
    assert deleted.version is not None and deleted.version.cv.time > second.version.cv.time
    current = coll.get_versions("d")
    assert current is not None and current.deleted and current.hlv == deleted.version
    assert current.rev_id == deleted.rev_id
    # every revision keeps the vector it had
    rev1 = coll.get_revision("d", first.rev_id)
    assert rev1 is not None and rev1.version == first.version
    by_version = coll.get_revision_by_version("d", second.version.cv)
    assert by_version is not None and by_version.rev_id == second.rev_id
    assert by_version.body is not None and json.loads(by_version.body) == {"v": 2}
    assert coll.has_version("d", first.version.cv) and coll.has_version("d", first.rev_id)
    assert not coll.has_version("d", Version(NOW, PHONE))


def test_clock_strictly_increasing_across_two_processes_on_one_file(tmp_path: Path) -> None:
    with Database.open(tmp_path / "db") as one, Database.open(tmp_path / "db") as two:
        stamps = []
        for i in range(20):
            db = one if i % 2 else two
            doc = db.default_collection.save_document(f"d{i % 3}", {"i": i})
            assert doc.version is not None
            stamps.append(doc.version.cv.time)
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


def test_clock_clamped_to_phone_clock_when_device_runs_ahead(
    coll: Collection, db: Database
) -> None:
    device = device_versions(db.engine)
    device.wall = lambda: NOW + 3600 * 10**9  # device clock one hour ahead
    result = coll.insert_versioned([pushed("d", ver(PHONE, 0))])
    assert result[0].status == 201
    saved = coll.save_document("d", {"edited": "on the device"})
    assert saved.version is not None
    assert NOW < saved.version.cv.time <= NOW + vv.STAMP_MARGIN_NS
    assert saved.version.cv.time - NOW < vv.PEER_MAX_SKEW_NS
    assert saved.version.pv == (Version(NOW, PHONE),)


def test_clock_advances_from_received_versions_without_rtc(coll: Collection, db: Database) -> None:
    device = device_versions(db.engine)
    device.wall = lambda: 10**9  # booted at the epoch, no RTC, no NTP
    early = coll.save_document("early", {})
    assert early.version is not None and early.version.cv.time >= vv.MIN_VALID_TIME
    coll.insert_versioned([pushed("d", ver(PHONE, 5000), None)])
    saved = coll.save_document("d", {"after": "phone"})
    assert saved.version is not None and saved.version.cv.time > NOW + 5000 * 10**6
    state = device.clock_state()
    assert state.last == saved.version.cv.time


# -- 3.x writes -------------------------------------------------------------------------------


def test_rev_tree_insert_gets_a_device_version(coll: Collection, db: Database) -> None:
    body = b'{"from":"3.x"}'
    rev1 = revid.make(None, False, body)
    [result] = coll.insert_revisions([IncomingRevision("d", rev1, [], False, body, True)])
    assert result.status == 201
    current = coll.get_versions("d")
    assert current is not None and current.hlv is not None
    assert current.hlv.cv.source == db.source_id and current.base_legacy is None
    # a 4.x phone that pulled that version edits on top of it
    rev = ver(PHONE, 10**6)
    [result] = coll.insert_versioned([pushed("d", rev, str(current.hlv.cv))])
    assert result.status == 201
    after = coll.get_versions("d")
    assert after is not None and after.hlv is not None and str(after.hlv.cv) == rev
    assert revid.generation(after.rev_id) == 2
    assert coll.rev_history("d", after.rev_id)[1] == rev1  # a 3.x phone sees a child of rev1
    # the 3.x phone edits again: new device version, the phone's version moves to pv
    body3 = b'{"from":"3.x again"}'
    rev3 = revid.make(after.rev_id, False, body3)
    [result] = coll.insert_revisions(
        [IncomingRevision("d", rev3, [after.rev_id, rev1], False, body3, True)]
    )
    assert result.status == 201
    final = coll.get_versions("d")
    assert final is not None and final.hlv is not None
    assert final.hlv.cv.source == db.source_id and final.hlv.time_of(PHONE) == NOW + 10**12


def test_legacy_rev_from_4x_peer_gets_rte_version(coll: Collection) -> None:
    body = b'{"legacy":1}'
    rev1 = "2-" + "ab" * 20
    [result] = coll.insert_revisions(
        [IncomingRevision("d", rev1, ["1-" + "cd" * 20], False, body, True, from_vv_peer=True)]
    )
    assert result.status == 201
    current = coll.get_versions("d")
    assert current is not None and current.hlv is not None
    assert current.hlv.cv == vv.legacy_version(rev1)
    assert coll.has_version("d", vv.legacy_version(rev1)) and coll.has_version("d", rev1)


# -- 4.x writes --------------------------------------------------------------------------------


def test_versioned_insert_new_update_same_older_conflict(coll: Collection, db: Database) -> None:
    v1, v2 = ver(PHONE, 0), ver(PHONE, 1000)
    [r] = coll.insert_versioned([pushed("d", v1, body={"n": 1})])
    assert (r.status, r.current_rev) == (201, v1)
    doc = coll.get_document("d")
    assert doc is not None and doc.body == {"n": 1} and doc.version == HLV.parse(v1)
    assert revid.generation(doc.rev_id) == 1
    [r] = coll.insert_versioned([pushed("d", v1, body={"n": 1})])
    assert (r.status, r.current_rev) == (200, v1)  # same: nothing stored
    [r] = coll.insert_versioned([pushed("d", v2, body={"n": 2})])  # same author: no history
    assert r.status == 201
    [r] = coll.insert_versioned([pushed("d", v1)])
    assert (r.status, r.current_rev) == (200, v2)  # older
    # a device edit, then a phone edit that did not see it: conflict, nothing stored
    saved = coll.save_document("d", {"n": "device"})
    assert saved.version is not None
    before = coll.get_versions("d")
    [r] = coll.insert_versioned([pushed("d", ver(OTHER_PHONE, 2000), v2)])
    assert r.status == 409 and r.current_rev == str(saved.version.cv)
    assert coll.get_versions("d") == before
    # the same phone after pulling the device edit: newer
    history = f"{saved.version.cv}, {v2}"
    [r] = coll.insert_versioned([pushed("d", ver(OTHER_PHONE, 3000), history)])
    assert r.status == 201
    assert coll.get_document("d").version == HLV.parse(f"{ver(OTHER_PHONE, 3000)}; {history}")
    # check_proposed_version answers from the same state
    assert coll.check_proposed_version("d", Version.parse(ver(OTHER_PHONE, 3000)), None) == (
        304,
        None,
    )
    assert coll.check_proposed_version("d", Version.parse(ver(PHONE, 9000)), Version.parse(v2)) == (
        409,
        ver(OTHER_PHONE, 3000),
    )


def test_same_content_same_revid_in_two_databases(tmp_path: Path) -> None:
    rev_ids = []
    for name in ("a", "b"):
        with Database.open(tmp_path / name) as db:
            coll = db.default_collection
            coll.insert_versioned([pushed("d", ver(PHONE, 0), body={"x": 1})])
            coll.insert_versioned([pushed("d", ver(PHONE, 5), body={"x": 2})])
            doc = coll.get_document("d")
            assert doc is not None
            rev_ids.append(doc.rev_id)
    assert rev_ids[0] == rev_ids[1] and revid.generation(rev_ids[0]) == 2


def test_versioned_tombstone_and_recreate(coll: Collection) -> None:
    coll.insert_versioned([pushed("d", ver(PHONE, 0))])
    [r] = coll.insert_versioned([pushed("d", ver(PHONE, 10), deleted=True)])
    assert r.status == 201
    assert coll.get_document("d") is None
    changes = coll.changes_since(0)
    assert changes[-1].deleted and changes[-1].version == HLV.parse(ver(PHONE, 10))
    # another phone creates the document anew (no parent) over the tombstone
    [r] = coll.insert_versioned([pushed("d", ver(OTHER_PHONE, 20), body={"again": True})])
    assert r.status == 201
    doc = coll.get_document("d")
    assert doc is not None and doc.body == {"again": True}


def test_bad_versioned_revision_is_400_and_isolated(coll: Collection) -> None:
    good = pushed("good", ver(PHONE, 0))
    bad_body = IncomingVersioned("bad", vv.parse_rev_history(ver(PHONE, 1), None), False, b"[1]")
    bad_id = pushed("", ver(PHONE, 2))
    legacy_only = IncomingVersioned("x", vv.VersionWithLegacy(None, ("1-ab",)), False, b"{}")
    results = coll.insert_versioned([bad_body, good, bad_id, legacy_only])
    assert [r.status for r in results] == [400, 201, 400, 400]
    assert "rev" in results[3].message
    assert coll.get_versions("bad") is None and coll.get_versions("good") is not None


def test_peer_legacy_recorded_and_settable(coll: Collection) -> None:
    assert coll.get_peer_legacy("d", "phone-a") is None
    coll.insert_versioned([pushed("d", ver(PHONE, 0), peer="phone-a")])
    assert coll.get_peer_legacy("d", "phone-a") == ""
    coll.set_peer_legacy("d", "phone-b", "3-abcd")
    assert coll.get_peer_legacy("d", "phone-b") == "3-abcd"
    for bad in ("nonsense", ver(PHONE, 1)):
        with pytest.raises(vv.BadVersion) as info:
            coll.set_peer_legacy("d", "phone-b", bad)
        assert info.value.field == "legacy_rev"
    assert coll.get_peer_legacy("d", "phone-b") == "3-abcd"


# -- conflicts on the rev tree side ---------------------------------------------------------------


def test_rev_tree_conflict_and_resolution_cover_both_vectors(
    coll: Collection, db: Database
) -> None:
    coll.insert_versioned([pushed("d", ver(PHONE, 0))])
    base = coll.get_versions("d")
    assert base is not None
    # two 3.x branches (no_conflicts off, e.g. pulled from Sync Gateway): a rev-tree conflict
    branches = ["2-" + "aa" * 20, "2-" + "ff" * 20]
    for branch in branches:
        body = json.dumps({"branch": branch}).encode()
        [r] = coll.insert_revisions([IncomingRevision("d", branch, [base.rev_id], False, body)])
        assert r.status == 201
    assert coll.is_conflicted("d") and coll.leaf_revisions("d") == branches[::-1]
    winner = coll.get_versions("d")
    assert winner is not None and winner.hlv is not None and winner.rev_id == branches[1]
    winner_rev = coll.get_revision("d", branches[1])
    loser_rev = coll.get_revision("d", branches[0])
    assert winner_rev is not None and loser_rev is not None
    assert winner.hlv == winner_rev.version  # the document's vector is its winner's
    loser_hlv = loser_rev.version
    assert loser_hlv is not None and loser_hlv.cv.source == db.source_id
    # the branch beside the then-current revision is named by its RTE version
    assert winner.hlv.cv == vv.legacy_version(branches[1])
    assert vv.compare_vectors(winner.hlv, loser_hlv) is Order.CONFLICT
    # a 4.x phone that holds the losing branch gets 409, not a silent overwrite
    history = f"{loser_hlv.cv}, {ver(PHONE, 0)}"
    [r] = coll.insert_versioned([pushed("d", ver(OTHER_PHONE, 50), history)])
    assert r.status == 409 and r.current_rev == str(winner.hlv.cv)
    resolved = coll.resolve_conflict(
        "d", winning_rev=winner.rev_id, losing_rev=branches[0], body={"m": 1}
    )
    assert resolved.version is not None and resolved.version.mv
    assert vv.compare_vectors(resolved.version, winner.hlv) is Order.NEWER
    assert vv.compare_vectors(resolved.version, loser_hlv) is Order.NEWER
    assert not coll.is_conflicted("d")
    # now the phone that held the loser pulls the merge and edits on top: accepted
    edited = resolved.version.with_new_cv(Version.parse(ver(OTHER_PHONE, 60)))
    [r] = coll.insert_versioned([pushed("d", str(edited.cv), vv.format_history(edited))])
    assert r.status == 201


def test_resolution_without_body_covers_the_loser(coll: Collection) -> None:
    coll.insert_versioned([pushed("d", ver(PHONE, 0))])
    base = coll.get_versions("d")
    assert base is not None
    for branch in ("2-" + "aa" * 20, "2-" + "ff" * 20):
        coll.insert_revisions([IncomingRevision("d", branch, [base.rev_id], False, b"{}")])
    loser = coll.get_revision("d", "2-" + "aa" * 20)
    assert loser is not None and loser.version is not None
    doc = coll.resolve_conflict("d", winning_rev="2-" + "ff" * 20, losing_rev="2-" + "aa" * 20)
    assert doc.version is not None and doc.version.contains(loser.version.cv)


# -- upgrade of an existing database ----------------------------------------------------------


def test_upgraded_database_keeps_legacy_revids_until_written(v1_database: Path) -> None:
    with Database.open(v1_database) as db:
        coll = db.default_collection
        changes = coll.changes_since(0)
        assert changes and all(c.version is None for c in changes)
        legacy = coll.get_versions("doc-1")
        assert legacy is not None and legacy.hlv is None
        assert legacy.current_text == legacy.rev_id
        doc = coll.get_document("doc-1")
        assert doc is not None and doc.version is None
        # a 4.x phone that had the legacy revision saves over it: lastLegacyRevID as tail
        [r] = coll.insert_versioned(
            [pushed("doc-1", ver(PHONE, 0), legacy.rev_id, peer=PHONE.text)]
        )
        assert r.status == 201
        after = coll.get_versions("doc-1")
        assert after is not None and after.base_legacy == legacy.rev_id
        assert coll.rev_history("doc-1", after.rev_id)[1] == legacy.rev_id
        assert coll.get_peer_legacy("doc-1", PHONE.text) == legacy.rev_id
        # again, with the lastLegacyRevID: newer
        [r] = coll.insert_versioned(
            [pushed("doc-1", ver(PHONE, 5), legacy.rev_id, peer=PHONE.text)]
        )
        assert r.status == 201
        # a phone without that legacy revision: conflict
        [r] = coll.insert_versioned([pushed("doc-1", ver(OTHER_PHONE, 9), None)])
        assert r.status == 409
        # device save on a legacy doc
        saved = coll.save_document("doc-3", {"device": True})
        assert saved.version is not None
        state = coll.get_versions("doc-3")
        assert state is not None and state.base_legacy == coll.rev_history("doc-3", saved.rev_id)[1]


def test_phone_with_newer_legacy_revisions_grafts_them(v1_database: Path) -> None:
    with Database.open(v1_database) as db:
        coll = db.default_collection
        legacy = coll.get_versions("doc-1")
        assert legacy is not None
        gen = revid.generation(legacy.rev_id)
        newer = f"{gen + 1}-" + "ee" * 20
        [r] = coll.insert_versioned(
            [pushed("doc-1", ver(PHONE, 0), f"{newer}, {legacy.rev_id}", peer="p")]
        )
        assert r.status == 201
        after = coll.get_versions("doc-1")
        assert after is not None and after.base_legacy == newer
        assert coll.rev_history("doc-1", after.rev_id)[:3] == [after.rev_id, newer, legacy.rev_id]
        assert revid.generation(after.rev_id) == gen + 2


# -- the mixed-fleet walkthrough of VV-NOTES §7, at the store -----------------------------------


def _start_shared_doc(coll: Collection) -> tuple[str, HLV]:
    """A document at rev-tree R / vector c0 on the device and on both phones."""
    body = b'{"start":true}'
    rev_r = revid.make(None, False, body)
    coll.insert_revisions([IncomingRevision("doc", rev_r, [], False, body, True)])
    state = coll.get_versions("doc")
    assert state is not None and state.hlv is not None
    return rev_r, state.hlv


def test_mixed_fleet_3x_phone_first(coll: Collection) -> None:
    rev_r, c0 = _start_shared_doc(coll)
    # 3.x phone A edits R -> A1 and syncs first
    body_a1 = b'{"by":"A"}'
    a1 = revid.make(rev_r, False, body_a1)
    assert coll.check_proposed("doc", a1, rev_r) == (0, None)
    [r] = coll.insert_revisions([IncomingRevision("doc", a1, [rev_r], False, body_a1, True)])
    assert r.status == 201
    device = coll.get_versions("doc")
    assert device is not None and device.hlv is not None
    # 4.x phone B edited c0 -> b1@B; its proposal is refused with the device's cv
    b1 = Version.parse(ver(PHONE, 10))
    assert coll.check_proposed_version("doc", b1, c0.cv) == (409, str(device.hlv.cv))
    # B pulls the device's version: a real conflict on B (neither contains the other's cv)
    phone_b = c0.with_new_cv(b1)
    assert vv.compare_vectors(device.hlv, phone_b) is Order.CONFLICT
    # B resolves with a merged body; the merge is newer than the device's revision
    merged = vv.merge(phone_b, device.hlv, Version.parse(ver(PHONE, 20)))
    assert coll.check_proposed_version("doc", merged.cv, b1, merged) == (0, None)
    [r] = coll.insert_versioned(
        [pushed("doc", str(merged.cv), vv.format_history(merged), {"merged": True})]
    )
    assert r.status == 201
    # A pulls it as an ordinary update: a child of A1 in the rev tree
    final = coll.get_versions("doc")
    assert final is not None and final.hlv is not None
    assert coll.rev_history("doc", final.rev_id)[:2] == [final.rev_id, a1]
    assert not coll.is_conflicted("doc")


def test_mixed_fleet_4x_phone_first(coll: Collection, db: Database) -> None:
    rev_r, c0 = _start_shared_doc(coll)
    b1 = ver(PHONE, 10)
    assert coll.check_proposed_version("doc", Version.parse(b1), c0.cv) == (0, None)
    [r] = coll.insert_versioned([pushed("doc", b1, str(c0.cv), {"by": "B"})])
    assert r.status == 201
    r2 = coll.get_versions("doc")
    assert r2 is not None and coll.rev_history("doc", r2.rev_id)[1] == rev_r
    # 3.x phone A edited R -> A1: refused (rev-tree rules); it pulls R2 and, like CBL 3.x,
    # resolves with a child of the remote branch
    a1 = revid.make(rev_r, False, b'{"by":"A"}')
    assert coll.check_proposed("doc", a1, rev_r) == (409, r2.rev_id)
    body_r3 = b'{"resolved":"A"}'
    r3 = revid.make(r2.rev_id, False, body_r3)
    [r] = coll.insert_revisions(
        [IncomingRevision("doc", r3, [r2.rev_id, rev_r], False, body_r3, True)]
    )
    assert r.status == 201
    device = coll.get_versions("doc")
    assert device is not None and device.hlv is not None
    assert device.hlv.cv.source == db.source_id
    # B pulls it as newer (it contains B's cv): an ordinary update
    assert vv.compare_vectors(device.hlv, HLV.parse(f"{b1}; {c0.cv}")) is Order.NEWER


def test_4x_phone_saving_over_a_legacy_revision_it_pushed(coll: Collection) -> None:
    """A 4.x phone whose doc was still legacy pushes R2 (rev-tree form, CBMobile_4), then saves
    a version over it with lastLegacyRevID R2: an update, not a conflict."""
    body = b'{"n":1}'
    rev_r = revid.make(None, False, body)
    coll.insert_revisions([IncomingRevision("d", rev_r, [], False, body, True)])
    base = coll.get_versions("d")
    assert base is not None and base.hlv is not None
    body2 = b'{"n":2}'
    rev_r2 = revid.make(rev_r, False, body2)
    [r] = coll.insert_revisions(
        [IncomingRevision("d", rev_r2, [rev_r], False, body2, True, from_vv_peer=True)]
    )
    assert r.status == 201
    state = coll.get_versions("d")
    assert state is not None and state.hlv is not None
    assert state.hlv.cv == vv.legacy_version(rev_r2) and state.hlv.pv == (base.hlv.cv,)
    assert coll.check_proposed_version("d", Version.parse(ver(PHONE, 1)), rev_r2) == (0, None)
    [r] = coll.insert_versioned([pushed("d", ver(PHONE, 1), rev_r2)])
    assert r.status == 201


def test_phone_upgraded_after_syncing_over_cbmobile3_is_not_a_conflict(coll: Collection) -> None:
    """A 3.x-era phone pulled R (which has a device version here), upgraded to 4.x and saved
    its first version over R: lastLegacyRevID R = our current revID, so it is an update
    (found by vv-wire with a real LiteCore 4.1 phone)."""
    body = b'{"n":1}'
    rev_r = revid.make(None, False, body)
    coll.insert_revisions([IncomingRevision("u1", rev_r, [], False, body, True)])
    before = coll.get_versions("u1")
    assert before is not None and before.hlv is not None
    assert coll.check_proposed_version("u1", Version.parse(ver(PHONE, 1)), rev_r) == (0, None)
    [r] = coll.insert_versioned([pushed("u1", ver(PHONE, 1), rev_r, {"n": 2}, peer="p")])
    assert r.status == 201
    after = coll.get_versions("u1")
    assert after is not None and after.hlv is not None
    assert coll.rev_history("u1", after.rev_id)[1] == rev_r
    assert after.hlv.contains(before.hlv.cv)  # the device's version is kept as a pv
    # its next save carries the same lastLegacyRevID: still an update
    [r] = coll.insert_versioned([pushed("u1", ver(PHONE, 2), rev_r, {"n": 3}, peer="p")])
    assert r.status == 201
    # a phone that held R but whose edit is older than what we have now: conflict
    [r] = coll.insert_versioned([pushed("u1", ver(OTHER_PHONE, 3), rev_r, peer="q")])
    assert r.status == 409


def test_phone_editing_a_legacy_doc_it_got_as_rte_version(v1_database: Path) -> None:
    """A legacy document sent to a 4.x phone as its RTE version: the phone's edit names that
    RTE version as parent (and carries it as pv). It is an update, not a conflict."""
    with Database.open(v1_database) as db:
        coll = db.default_collection
        legacy = coll.get_versions("doc-1")
        assert legacy is not None and legacy.hlv is None
        rte = vv.legacy_version(legacy.rev_id)
        edit = Version.parse(ver(PHONE, 1))
        assert coll.check_proposed_version("doc-1", edit, rte) == (0, None)
        [r] = coll.insert_versioned([pushed("doc-1", str(edit), str(rte), {"by": "phone"})])
        assert r.status == 201
        after = coll.get_versions("doc-1")
        assert after is not None and after.hlv is not None and after.hlv.cv == edit
        assert coll.rev_history("doc-1", after.rev_id)[1] == legacy.rev_id
        # an RTE version that is not this revision's: conflict
        other = coll.get_versions("doc-3")
        assert other is not None and other.hlv is None
        wrong = vv.legacy_version("9-" + "ab" * 20)
        assert coll.check_proposed_version("doc-3", edit, wrong)[0] == 409
        [r] = coll.insert_versioned([pushed("doc-3", str(edit), str(wrong))])
        assert r.status == 409


def test_integrity_check_covers_vectors(coll: Collection, db: Database) -> None:
    from fieldsync.store.integrity import check_integrity

    coll.save_document("a", {"n": 1})
    coll.insert_versioned([pushed("b", ver(PHONE, 0))])
    assert check_integrity(db)[0] == []
    with db.engine.write() as conn:
        conn.execute("UPDATE docs SET hlv = ? WHERE doc_id = 'a'", (ver(PHONE, 5),))
        conn.execute(
            "UPDATE revs SET cv = 'nonsense' WHERE hlv IS NOT NULL AND cv LIKE ?", (f"%@{PHONE}",)
        )
        conn.execute("UPDATE peer_info SET value = '1 0 0' WHERE key = 'hlc'")
    problems = check_integrity(db)[0]
    assert any("'a'" in p and "is not its revision" in p for p in problems), problems
    assert any("cv column" in p for p in problems), problems
    assert any(p.startswith("clock:") for p in problems), problems


def test_conflicting_versioned_revision_kept_as_branch_when_allowed(coll: Collection) -> None:
    """With no_conflicts off, a vector conflict becomes a rev-tree branch: 3.x phones see two
    leaves; the document's vector is the winner's; the branch keeps its own vector."""
    coll.insert_versioned([pushed("d", ver(PHONE, 0))])
    base = coll.get_versions("d")
    assert base is not None and base.hlv is not None
    device = coll.save_document("d", {"by": "device"})
    assert device.version is not None
    theirs = base.hlv.with_new_cv(Version.parse(ver(OTHER_PHONE, 5)))
    rev = IncomingVersioned(
        "d",
        vv.VersionWithLegacy(theirs),
        False,
        b'{"by":"other phone"}',
        "q",
        no_conflicts=False,
    )
    [r] = coll.insert_versioned([rev])
    assert r.status == 201 and "branch" in r.message
    leaves = coll.leaf_revisions("d")
    assert len(leaves) == 2 and coll.is_conflicted("d")
    branch = next(leaf for leaf in leaves if leaf != device.rev_id)
    assert coll.rev_history("d", branch)[1] == base.rev_id  # a sibling of the device's edit
    branch_rev = coll.get_revision("d", branch)
    assert branch_rev is not None and branch_rev.version == theirs
    winner = coll.get_versions("d")
    assert winner is not None and winner.hlv == coll.get_revision("d", winner.rev_id).version
    assert vv.compare_vectors(winner.hlv, theirs) in (Order.CONFLICT, Order.SAME)
    # the same revision again: already present
    [r] = coll.insert_versioned([rev])
    assert r.status == 200
