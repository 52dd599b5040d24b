"""Peer checkpoints (MVCC revisions, 409 on mismatch) and local values."""

from __future__ import annotations

import pytest

from fieldsync.store import CheckpointConflict, Database, InvalidInput, StoreError


def test_checkpoint_lifecycle(db: Database):
    assert db.get_checkpoint("cp-abc") is None
    body = b'{ "time": 1700000000,  "local": 42 }'  # stored byte for byte, not re-encoded
    assert db.set_checkpoint("cp-abc", body, None) == "1-cc"
    assert db.get_checkpoint("cp-abc") == (body, "1-cc")
    assert db.set_checkpoint("cp-abc", b'{"local":43}', "1-cc") == "2-cc"
    assert db.get_checkpoint("cp-abc") == (b'{"local":43}', "2-cc")
    assert db.set_checkpoint("cp-other", b"{}", "") == "1-cc"


@pytest.mark.parametrize("stale", [None, "", "1-cc", "3-cc", "garbage"])
def test_wrong_revision_is_a_409_conflict(db: Database, stale):
    db.set_checkpoint("cp", b"{}", None)
    db.set_checkpoint("cp", b'{"n":2}', "1-cc")
    with pytest.raises(CheckpointConflict) as err:
        db.set_checkpoint("cp", b'{"n":3}', stale)
    assert err.value.status == 409 and err.value.current_rev == "2-cc"
    assert isinstance(err.value, StoreError)
    assert db.get_checkpoint("cp") == (b'{"n":2}', "2-cc")


def test_revision_given_for_a_missing_checkpoint_conflicts(db: Database):
    with pytest.raises(CheckpointConflict) as err:
        db.set_checkpoint("cp", b"{}", "1-cc")
    assert err.value.current_rev is None
    assert db.get_checkpoint("cp") is None


def test_checkpoint_input_validation(db: Database):
    with pytest.raises(InvalidInput):
        db.set_checkpoint("", b"{}", None)
    with pytest.raises(InvalidInput):
        db.set_checkpoint("cp", "text, not bytes", None)  # type: ignore[arg-type]


def test_checkpoints_and_local_values_survive_reopen(tmp_path):
    with Database.open(tmp_path / "db") as db:
        db.set_checkpoint("cp", b"\x00binary\xff", None)
        db.set_local("replicator/peer-1", b'{"remote":7}')
    with Database.open(tmp_path / "db") as db:
        assert db.get_checkpoint("cp") == (b"\x00binary\xff", "1-cc")
        assert db.get_local("replicator/peer-1") == b'{"remote":7}'


def test_local_values(db: Database):
    assert db.get_local("k") is None
    db.set_local("k", b"one")
    db.set_local("k", b"two")
    assert db.get_local("k") == b"two"
    db.set_local("k", None)
    assert db.get_local("k") is None
    db.set_local("k", None)  # deleting a missing key is fine
    with pytest.raises(InvalidInput):
        db.set_local("", b"x")
