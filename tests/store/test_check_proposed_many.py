"""check_proposed_many (one query per 200 documents) answers exactly as check_proposed."""

from __future__ import annotations

from fieldsync.store import Database


def test_many_answers_as_one_by_one(tmp_path) -> None:
    with Database.open(tmp_path / "db") as db:
        coll = db.default_collection
        revs = {}
        for i in range(450):
            revs[f"d{i}"] = coll.save_document(f"d{i}", {"i": i}).rev_id
        gone = coll.delete_document("d7").rev_id
        proposals: list[tuple[str, str, str | None]] = []
        for i in range(460):  # 10 unknown documents at the end
            doc_id = f"d{i}"
            current = revs.get(doc_id)
            proposals += [
                (doc_id, "2-" + "a" * 40, current),  # child of the current revision
                (doc_id, current or "1-" + "b" * 40, None),  # the current one / a new doc
                (doc_id, "2-" + "c" * 40, "1-" + "d" * 40),  # conflict
            ]
        proposals += [("d7", "3-" + "e" * 40, None), ("d7", gone, "2-x")]
        proposals += proposals[:5]  # duplicates
        expected = [coll.check_proposed(*p) for p in proposals]
        assert coll.check_proposed_many(proposals) == expected
        assert {status for status, _ in expected} == {0, 304, 409}
