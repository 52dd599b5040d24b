"""fieldsync.store.versions against vectors written and judged by a real LiteCore 4.1.

A version-vector database in LiteCore 4.1 writes its revisions' vectors (``globalRevID``:
cv, then merge versions and ``;``, then previous versions). Our parser must read each one and
write it back byte for byte, and our comparison must agree with LiteCore's own verdicts (which
revision it flags as a conflict, which one a merge supersedes). Needs
``FIELDSYNC_LITECORE41_LIB`` and the 4.1 ``cblpassive``; skips cleanly without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.interop.litecore import CblTools, LiteCore, LiteDatabase

from fieldsync.store import versions as vv
from fieldsync.store.versions import HLV, Order

TIMEOUT = 60.0


def _sync(db: LiteDatabase, url: str, *, push: bool = True, pull: bool = True) -> list[Any]:
    with db.replicator(url, push=push, pull=pull) as repl:
        repl.start()
        status = repl.wait("stopped", timeout=TIMEOUT)
        ended = repl.documents_ended
    assert not status.error, status
    return ended


def _vector(db: LiteDatabase, doc_id: str) -> tuple[str, HLV]:
    doc = db.get(doc_id)
    assert doc is not None, doc_id
    text = doc["globalRevID"]
    hlv = HLV.parse(text, "globalRevID")
    assert str(hlv) == text  # byte-exact round trip of LiteCore's own spelling
    return text, hlv


def test_litecore_vectors_parse_format_and_compare_like_litecore(
    litecore41: LiteCore, phone41_vv: LiteDatabase, cbl41: CblTools, tmp_path: Path
) -> None:
    other = litecore41.open_db(tmp_path / "other", "other", version_vectors=True)
    try:
        phone41_vv.put("c", {"v": 1})
        _, first = _vector(phone41_vv, "c")
        assert not first.mv and not first.pv
        with cbl41.passive(tmp_path / "passive", vv=True) as passive:
            _sync(phone41_vv, passive.url, pull=False)
            _sync(other, passive.url, push=False)
            other.put("c", {"v": "other"})
            _, theirs = _vector(other, "c")
            # an edit on top of a pulled version: that version becomes a pv
            assert theirs.pv == (first.cv,) and theirs.cv.source != first.cv.source
            assert vv.compare_vectors(theirs, first) is Order.NEWER
            _sync(other, passive.url, pull=False)
            phone41_vv.put("c", {"v": "phone"})
            _, mine = _vector(phone41_vv, "c")
            assert mine.cv.source == first.cv.source and not mine.pv
            ended = _sync(phone41_vv, passive.url, push=False)
            # LiteCore flags the pulled revision as a conflict; so do we
            assert [(d.doc_id, d.error.code) for d in ended] == [("c", 8)], ended
            assert vv.compare_vectors(mine, theirs) is Order.CONFLICT
            _mine, their_leaf = phone41_vv.leaf_revisions("c")
            phone41_vv.resolve_conflict("c", their_leaf["revID"], _mine["revID"], {"v": "m"})
            text, merged = _vector(phone41_vv, "c")
            assert merged.mv, text  # "cv, mv1, mv2;" (LiteCore writes a merge this way)
            # our merge() builds the same vector from the same two sides
            assert vv.merge(mine, theirs, merged.cv) == merged
            # the merge supersedes both sides, in our comparison as in LiteCore's
            assert vv.compare_vectors(merged, mine) is Order.NEWER
            assert vv.compare_vectors(merged, theirs) is Order.NEWER
            # the rev + history split a LiteCore pusher would send reads back to the same vector
            history = vv.format_history(merged)
            parsed = vv.parse_rev_history(str(merged.cv), history)
            assert parsed.vector == merged and not parsed.legacy
            _sync(phone41_vv, passive.url, pull=False)
            _sync(other, passive.url, push=False)
        pulled_text, pulled = _vector(other, "c")
        assert pulled == merged and pulled_text == text
        assert other.get("c")["body"] == {"v": "m"}  # type: ignore[index]
    finally:
        other.close()
