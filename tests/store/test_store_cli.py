"""``fieldsync db`` through the real command-line entry point, and the default database path."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from fieldsync.cli.main import main
from fieldsync.store import Database
from fieldsync.store.paths import default_database_path


@pytest.fixture
def dbpath(tmp_path) -> str:
    return str(tmp_path / "clidb")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_put_get_list_delete(capsys, dbpath):
    status, out, _ = run(capsys, "db", "--db", dbpath, "put", "doc1", '{"temp": 21.5}')
    assert status == 0
    put = json.loads(out)
    assert put["id"] == "doc1" and put["rev"].startswith("1-") and put["sequence"] == 1

    status, out, _ = run(capsys, "db", "get", "--db", dbpath, "doc1")
    assert status == 0
    got = json.loads(out)
    with Database.open(dbpath, create=False) as db:
        source = db.source_id.text
    assert got["_version"].endswith("@" + source)  # the version vector beside the revID
    assert got == {"_id": "doc1", "_rev": put["rev"], "_version": got["_version"], "temp": 21.5}

    run(capsys, "db", "--db", dbpath, "put", "doc2", '{"n": 2}')
    status, out, _ = run(capsys, "db", "--db", dbpath, "list")
    assert status == 0
    lines = [line.split("\t") for line in out.splitlines()]
    assert [(seq, doc) for seq, doc, _rev in lines] == [("1", "doc1"), ("2", "doc2")]

    status, out, _ = run(capsys, "db", "--db", dbpath, "delete", "doc1", "--rev", put["rev"])
    assert status == 0 and json.loads(out)["rev"].startswith("2-")
    _, out, _ = run(capsys, "db", "--db", dbpath, "list")
    assert [line.split("\t")[1] for line in out.splitlines()] == ["doc2"]
    _, out, _ = run(capsys, "db", "--db", dbpath, "list", "--all", "--since", "2")
    [entry] = [line.split("\t") for line in out.splitlines()]
    assert entry[0] == "3" and entry[1] == "doc1" and entry[3] == "deleted"

    with Database.open(dbpath, create=False) as db:
        assert db.default_collection.get_document("doc1") is None
        assert db.default_collection.get_document("doc2").body == {"n": 2}


def test_put_reads_stdin_and_named_collection(capsys, dbpath, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO('{"reading": [1, 2, 3], "unit": "°C"}'))
    status, out, _ = run(capsys, "db", "--db", dbpath, "put", "-c", "field.sensors", "s1")
    assert status == 0
    status, out, _ = run(capsys, "db", "--db", dbpath, "get", "--collection", "field.sensors", "s1")
    assert json.loads(out)["unit"] == "°C"
    status, _, err = run(capsys, "db", "--db", dbpath, "get", "s1")  # not in the default one
    assert status == 1 and "no document 's1'" in err


def test_get_specific_revision(capsys, dbpath):
    _, out, _ = run(capsys, "db", "--db", dbpath, "put", "d", '{"v": 1}')
    first = json.loads(out)["rev"]
    run(capsys, "db", "--db", dbpath, "put", "d", '{"v": 2}')
    status, out, _ = run(capsys, "db", "--db", dbpath, "get", "d", "--rev", first)
    got = json.loads(out)
    assert status == 0 and got == {"_id": "d", "_rev": first, "_version": got["_version"], "v": 1}
    _, out, _ = run(capsys, "db", "--db", dbpath, "get", "d")
    assert json.loads(out)["_version"] != got["_version"]
    status, _, err = run(capsys, "db", "--db", dbpath, "get", "d", "--rev", "9-" + "ab" * 20)
    assert status == 1 and "no revision" in err


def test_info_text_and_json(capsys, dbpath):
    run(capsys, "db", "--db", dbpath, "put", "a", "{}")
    run(capsys, "db", "--db", dbpath, "put", "b", "{}")
    run(capsys, "db", "--db", dbpath, "delete", "b")
    run(capsys, "db", "--db", dbpath, "put", "-c", "s.c", "x", "{}")
    status, out, _ = run(capsys, "db", "--db", dbpath, "info")
    assert status == 0
    assert str(Path(dbpath).resolve()) in out and "bytes on disk" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[8:]}
    assert rows == {"_default._default": ["1", "1", "3"], "s.c": ["1", "0", "1"]}
    status, out, _ = run(capsys, "db", "--db", dbpath, "info", "--json")
    info = json.loads(out)
    assert info["name"] == "clidb" and info["size"] > 0
    with Database.open(dbpath, create=False) as db:
        assert info["source_id"] == db.source_id.text
    assert info["collections"][0] == {
        "name": "_default._default",
        "documents": 1,
        "deleted": 1,
        "last_sequence": 3,
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["put", "d", "{not json"], "not valid JSON"),
        (["put", "d", "[1, 2]"], "JSON object"),
        (["put", "_bad", "{}"], "may not start with '_'"),
        (["put", "-c", "bad name", "d", "{}"], "invalid collection name"),
        (["delete", "missing"], "no document 'missing'"),
        (["get", "-c", "no.such", "d"], "no collection no.such"),
        (["put", "d", "{}", "--rev", "1-" + "ab" * 20], "is at revision"),
    ],
)
def test_errors_are_one_line_on_stderr(capsys, dbpath, argv, message):
    run(capsys, "db", "--db", dbpath, "put", "seed", "{}")  # the database exists
    status, out, err = run(capsys, "db", "--db", dbpath, *argv)
    assert status == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("fieldsync db: error:") and message in err


def test_missing_database_is_not_created_by_readers(capsys, tmp_path):
    path = tmp_path / "nothing-here"
    for argv in (["info"], ["list"], ["get", "x"], ["delete", "x"]):
        status, _, err = run(capsys, "db", "--db", str(path), *argv)
        assert status == 1 and "no database at" in err
    assert not path.exists()


def test_default_database_path_follows_xdg(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_database_path() == tmp_path / "xdg" / "fieldsync"
    status, _, _ = run(capsys, "db", "put", "d", "{}")
    assert status == 0 and (tmp_path / "xdg" / "fieldsync" / "db.sqlite3").is_file()
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_database_path() == tmp_path / "home" / ".local" / "share" / "fieldsync"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_database_path() == tmp_path / "home" / ".local" / "share" / "fieldsync"


def test_db_without_subcommand_shows_usage(capsys):
    status, _, err = run(capsys, "db")
    assert status == 2 and "put" in err and "info" in err


def test_get_prints_both_spellings_of_an_upgraded_document(capsys, v1_database):
    """A document untouched since the version-vector upgrade has only its revID."""
    status, out, _ = run(capsys, "db", "--db", str(v1_database), "get", "doc-1")
    got = json.loads(out)
    assert status == 0 and got["_rev"].startswith("1-") and got["_version"] is None
    run(capsys, "db", "--db", str(v1_database), "put", "doc-1", '{"v": 3}')
    _, out, _ = run(capsys, "db", "--db", str(v1_database), "get", "doc-1")
    got = json.loads(out)
    assert got["_rev"].startswith("2-") and "@" in got["_version"]
