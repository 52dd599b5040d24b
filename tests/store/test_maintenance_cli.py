"""``fieldsync db compact | check | purge | expire`` through the real command-line entry point."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pytest

from fieldsync.cli import db as db_cli
from fieldsync.cli.db import parse_when
from fieldsync.store import Database


def main(argv: list[str]) -> int:
    """``fieldsync db …`` through the same parser the CLI builds (only the db commands)."""
    parser = argparse.ArgumentParser(prog="fieldsync")
    db_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def dbpath(tmp_path: Path) -> str:
    path = tmp_path / "clidb"
    with Database.open(path) as db:
        coll = db.default_collection
        for i in range(3):
            coll.save_document(f"d{i}", {"i": i})
        orphan = db.blobs.put(b"nobody uses me")
        old = time.time() - 86400
        import os

        os.utime(db.blobs.path_for(orphan), (old, old))
    return str(path)


def test_compact_reports_and_records(capsys: pytest.CaptureFixture[str], dbpath: str) -> None:
    status, out, err = run(capsys, "db", "--db", dbpath, "compact", "--json")
    assert status == 0
    result = json.loads(out)
    assert result["kind"] == "compact" and result["blobs_removed"] == 1
    assert "compact blobs: 1/1 blobs" in err  # progress on stderr
    status, out, _ = run(capsys, "db", "--db", dbpath, "info", "--json")
    assert json.loads(out)["last_maintenance"].startswith("compact at ")


def test_check_fails_on_a_corrupt_blob(capsys: pytest.CaptureFixture[str], dbpath: str) -> None:
    status, out, _ = run(capsys, "db", "--db", dbpath, "check")
    assert status == 0 and ": ok," in out
    with Database.open(dbpath) as db:
        digest = db.blobs.put(b"good bytes")
        db.default_collection.save_document("p", {"b": {"@type": "blob", "digest": digest}})
        db.blobs.path_for(digest).write_bytes(b"bad bytes!")
    status, out, _ = run(capsys, "db", "--db", dbpath, "check")
    assert status == 1 and "corrupt" in out and digest in out


def test_purge_and_expire(capsys: pytest.CaptureFixture[str], dbpath: str) -> None:
    status, out, _ = run(capsys, "db", "--db", dbpath, "purge", "d0")
    assert status == 0 and json.loads(out) == {"id": "d0", "purged": True}
    status, _, err = run(capsys, "db", "--db", dbpath, "purge", "d0")
    assert status == 1 and "no document 'd0'" in err
    status, out, _ = run(capsys, "db", "--db", dbpath, "expire", "d1", "+2h")
    assert status == 0 and json.loads(out)["expires"]
    with Database.open(dbpath) as db:
        expires = db.default_collection.get_document_expiration("d1")
        assert expires is not None and abs(expires - (time.time() + 7200)) < 60
    run(capsys, "db", "--db", dbpath, "expire", "d1", "never")
    run(capsys, "db", "--db", dbpath, "expire", "d2", "1")  # long past: due now
    status, out, _ = run(capsys, "db", "--db", dbpath, "compact", "--json")
    assert json.loads(out)["expired_purged"] == 1
    with Database.open(dbpath) as db:
        assert db.default_collection.get_document("d1") is not None
        assert db.default_collection.get_document("d2") is None
    status, _, err = run(capsys, "db", "--db", dbpath, "expire", "d1", "tomorrowish")
    assert status == 1 and "cannot read 'tomorrowish'" in err


def test_parse_when() -> None:
    assert parse_when("+90s", now=1000.0) == 1090.0
    assert parse_when("+1.5h", now=0.0) == 5400.0
    assert parse_when("+7d", now=0.0) == 7 * 86400.0
    assert parse_when("never") is None
    assert parse_when("2026-12-01T06:00:00+00:00") == 1796104800.0
    assert parse_when("1796104800") == 1796104800.0
