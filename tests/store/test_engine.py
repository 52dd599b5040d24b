"""The engine that owns a database's connection: savepoints isolate one item of a batch."""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldsync.store import Database, StoreError


def test_savepoint_undoes_only_its_own_writes_and_sequences(tmp_path: Path) -> None:
    with Database.open(tmp_path / "db") as db:
        coll = db.default_collection
        seen: list[int] = []
        db.add_change_listener(lambda _c, seq: seen.append(seq))
        with db.transaction():
            coll.save_document("a", {"n": 1})
            with pytest.raises(RuntimeError), db.engine.savepoint():
                coll.save_document("b", {"n": 2})
                assert coll.last_sequence == 2
                raise RuntimeError("bad revision")
            assert coll.last_sequence == 1
            coll.save_document("c", {"n": 3})
        assert coll.get_document("b") is None
        assert coll.get_document("c") is not None
        assert [c.doc_id for c in coll.changes_since(0)] == ["a", "c"]
        assert coll.last_sequence == 2
        assert seen == [2]  # one notification, after the outer commit


def test_savepoint_needs_an_enclosing_transaction(tmp_path: Path) -> None:
    with Database.open(tmp_path / "db") as db, pytest.raises(StoreError), db.engine.savepoint():
        pass


def test_rolled_back_collection_is_forgotten(tmp_path: Path) -> None:
    with Database.open(tmp_path / "db") as db:
        with pytest.raises(RuntimeError), db.transaction():
            db.create_collection("temp", "scope")
            raise RuntimeError
        assert db.get_collection("temp", "scope") is None
        assert [c.full_name for c in db.collections()] == ["_default._default"]
