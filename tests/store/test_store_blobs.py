"""The content-addressed blob store and blob references in bodies."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest

from fieldsync.store import (
    BlobStore,
    Database,
    DigestMismatch,
    InvalidInput,
    NotFoundError,
    StoreError,
    compute_digest,
    find_blobs,
)


def sha1_digest(data: bytes) -> str:
    return "sha1-" + base64.b64encode(hashlib.sha1(data).digest()).decode()


def leftover_files(store: BlobStore) -> list[str]:
    return sorted(name for name in os.listdir(store.path) if name.startswith(".tmp"))


def test_put_and_read_back(db: Database):
    data = b"hello, field"
    digest = db.blobs.put(data)
    assert digest == sha1_digest(data) == compute_digest(data)
    assert db.blobs.has(digest) and db.blobs.size(digest) == len(data)
    assert db.blobs.read(digest) == data
    with db.blobs.open_read(digest) as file:
        assert file.read(5) == b"hello"
    assert list(db.blobs.digests()) == [digest]
    assert db.blobs.put(data) == digest  # idempotent
    assert len(list(db.blobs.digests())) == 1


def test_digest_with_slash_maps_to_a_file_name(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    for n in range(200):  # some base64 digests contain '/'
        data = f"blob {n}".encode()
        digest = store.put(data)
        assert store.read(digest) == data
    assert sum("/" in d for d in store.digests()) > 0
    assert len(list(store.digests())) == 200


def test_streaming_write_and_read(db: Database):
    chunk = os.urandom(256 * 1024)
    expected = hashlib.sha1()
    with db.blobs.writer() as writer:
        for n in range(8):
            piece = bytes([n]) + chunk
            writer.write(piece)
            expected.update(piece)
    digest = writer.digest
    assert digest == "sha1-" + base64.b64encode(expected.digest()).decode()
    assert writer.length == 8 * (len(chunk) + 1)
    reread = hashlib.sha1()
    with db.blobs.open_read(digest) as file:
        while block := file.read(65536):
            reread.update(block)
    assert reread.digest() == expected.digest()
    assert leftover_files(db.blobs) == []


def test_expected_digest_is_verified(db: Database):
    data = b"the real content"
    writer = db.blobs.writer(expected_digest=sha1_digest(data))
    writer.write(data[:4])
    writer.write(data[4:])
    assert writer.finish() == sha1_digest(data)
    assert db.blobs.read(sha1_digest(data)) == data

    wrong = sha1_digest(b"something else")
    writer = db.blobs.writer(expected_digest=wrong)
    writer.write(data + b"!")
    with pytest.raises(DigestMismatch) as err:
        writer.finish()
    assert isinstance(err.value, StoreError)
    assert not db.blobs.has(wrong) and not db.blobs.has(sha1_digest(data + b"!"))
    assert leftover_files(db.blobs) == []


def test_abort_and_exception_leave_nothing(db: Database):
    writer = db.blobs.writer()
    writer.write(b"partial")
    writer.abort()
    writer.abort()
    with pytest.raises(StoreError):
        writer.write(b"more")
    with pytest.raises(RuntimeError), db.blobs.writer() as writer2:
        writer2.write(b"doomed")
        raise RuntimeError
    assert writer2.digest is None
    assert list(db.blobs.digests()) == [] and leftover_files(db.blobs) == []


def test_missing_and_malformed_digests(db: Database):
    missing = sha1_digest(b"never stored")
    assert not db.blobs.has(missing) and db.blobs.size(missing) is None
    with pytest.raises(NotFoundError):
        db.blobs.open_read(missing)
    with pytest.raises(KeyError):
        db.blobs.read(missing)
    for bad in ["", "md5-abc", "sha1-not base64!", "sha1-" + base64.b64encode(b"short").decode()]:
        assert not db.blobs.has(bad)
        with pytest.raises(InvalidInput):
            db.blobs.open_read(bad)
        with pytest.raises(InvalidInput):
            db.blobs.writer(expected_digest=bad)
    assert db.blobs.delete(missing) is False


def test_blobs_persist_and_can_be_deleted(tmp_path):
    with Database.open(tmp_path / "db") as db:
        digest = db.blobs.put(b"keep me")
    assert (tmp_path / "db" / "blobs").is_dir()
    with Database.open(tmp_path / "db") as db:
        assert db.blobs.read(digest) == b"keep me"
        assert db.blobs.delete(digest) is True
        assert not db.blobs.has(digest)


def test_find_blobs_nested_and_legacy_attachments():
    photo = {"@type": "blob", "digest": sha1_digest(b"p"), "length": 1, "content_type": "image/png"}
    nested = {"@type": "blob", "digest": sha1_digest(b"n"), "length": 1}
    legacy = {"digest": sha1_digest(b"l"), "length": 1, "stub": True, "revpos": 1}
    body = {
        "photo": photo,
        "readings": [{"raw": nested}, 3, "x", None],
        "not_a_blob": {"@type": "blob"},  # no digest
        "other": {"digest": sha1_digest(b"o")},  # no @type outside _attachments
        "_attachments": {"blob_/photo": legacy, "broken": "x", "inner": {"deep": nested}},
    }
    found = find_blobs(body)
    assert [b["digest"] for b in found] == [photo["digest"], nested["digest"], legacy["digest"]]
    assert find_blobs({}) == []


def test_missing_blobs_of_a_body(db: Database):
    have = db.blobs.put(b"have")
    body = {
        "a": {"@type": "blob", "digest": have},
        "b": {"@type": "blob", "digest": sha1_digest(b"not here")},
    }
    assert [b["digest"] for b in db.missing_blobs(body)] == [sha1_digest(b"not here")]
