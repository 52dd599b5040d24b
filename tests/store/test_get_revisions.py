"""get_revisions (one query per 200 revisions) answers exactly as get_revision."""

from __future__ import annotations

from pathlib import Path

from fieldsync.store import Database


def test_many_answer_as_one_by_one(tmp_path: Path) -> None:
    with Database.open(tmp_path / "db") as db:
        coll = db.default_collection
        wanted: list[tuple[str, str]] = []
        for i in range(230):  # more than one chunk
            first = coll.save_document(f"d{i}", {"i": i}).rev_id
            wanted.append((f"d{i}", first))
            if i % 3 == 0:
                second = coll.save_document(f"d{i}", {"i": i, "again": True}).rev_id
                wanted.append((f"d{i}", second))  # the first is now an ancestor
        deleted = coll.delete_document("d5").rev_id
        wanted += [("d5", deleted), ("d1", "9-" + "a" * 40), ("nobody", "1-" + "b" * 40)]
        wanted += wanted[:3]  # asked twice
        found = coll.get_revisions(wanted)
        assert list(found) == list(dict.fromkeys(wanted))
        for doc_id, rev_id in wanted:
            assert found[(doc_id, rev_id)] == coll.get_revision(doc_id, rev_id)
        assert found[("d1", "9-" + "a" * 40)] is None and found[("nobody", "1-" + "b" * 40)] is None
        current = found[wanted[1]]
        assert current is not None and current.body is not None and b"again" in current.body
        assert coll.get_revisions([]) == {}
