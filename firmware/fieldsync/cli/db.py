"""``fieldsync db``: look at and edit the document store from the shell.

    fieldsync db [--db PATH] put [--collection SCOPE.NAME] [--rev REV] DOC_ID [JSON]
    fieldsync db [--db PATH] get [--collection SCOPE.NAME] [--rev REV] DOC_ID
    fieldsync db [--db PATH] list [--collection SCOPE.NAME] [--since SEQ] [--limit N] [--all]
    fieldsync db [--db PATH] delete [--collection SCOPE.NAME] [--rev REV] DOC_ID
    fieldsync db [--db PATH] info [--json]
    fieldsync db [--db PATH] compact [--tombstone-days N] [--peer-retention-days N] [--json]
    fieldsync db [--db PATH] check [--json]
    fieldsync db [--db PATH] purge [--collection SCOPE.NAME] DOC_ID
    fieldsync db [--db PATH] expire [--collection SCOPE.NAME] DOC_ID WHEN

``compact`` and ``check`` report progress on standard error. ``WHEN`` is an ISO 8601 time
(``2026-12-01T06:00:00+00:00``; no zone = local time), a delay (``+30s``, ``+15m``, ``+12h``,
``+7d``), epoch seconds, or ``never`` to clear the expiration.

``put`` reads the document JSON from standard input when it is not given (or is ``-``).
Errors are one line on standard error and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from fieldsync.cli.common import CommandError
from fieldsync.progress import Progress
from fieldsync.store import (
    Collection,
    Database,
    MaintenancePolicy,
    MaintenanceResult,
    MaintenanceType,
    StoreError,
)
from fieldsync.store.maintenance import DAY, free_bytes
from fieldsync.store.names import DEFAULT_COLLECTION, DEFAULT_SCOPE
from fieldsync.store.paths import default_database_path
from fieldsync.store.versions import HLV

DEFAULT_COLLECTION_NAME = f"{DEFAULT_SCOPE}.{DEFAULT_COLLECTION}"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db_option = argparse.ArgumentParser(add_help=False)
    db_option.add_argument(
        "--db",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help=f"database directory (default: {default_database_path()})",
    )
    collection_option = argparse.ArgumentParser(add_help=False)
    collection_option.add_argument(
        "--collection",
        "-c",
        metavar="SCOPE.NAME",
        default=DEFAULT_COLLECTION_NAME,
        help="collection (default: %(default)s)",
    )

    parser = subparsers.add_parser(
        "db",
        parents=[db_option],
        help="inspect and edit the document store",
        description="Inspect and edit the local document store.",
    )
    parser.set_defaults(func=lambda _args: _usage(parser))
    commands = parser.add_subparsers(dest="db_command", metavar="SUBCOMMAND")

    put = commands.add_parser("put", parents=[db_option, collection_option], help="save a document")
    put.add_argument("doc_id", metavar="DOC_ID")
    put.add_argument(
        "json", metavar="JSON", nargs="?", default="-", help="document body (default: stdin)"
    )
    put.add_argument("--rev", help="fail unless this is the document's current revision")
    put.set_defaults(func=cmd_put)

    get = commands.add_parser(
        "get", parents=[db_option, collection_option], help="print a document"
    )
    get.add_argument("doc_id", metavar="DOC_ID")
    get.add_argument("--rev", help="a specific revision instead of the current one")
    get.set_defaults(func=cmd_get)

    listing = commands.add_parser(
        "list", parents=[db_option, collection_option], help="list documents in sequence order"
    )
    listing.add_argument("--since", type=int, default=0, metavar="SEQ")
    listing.add_argument("--limit", type=int, default=None, metavar="N")
    listing.add_argument("--all", action="store_true", help="include deleted documents")
    listing.set_defaults(func=cmd_list)

    delete = commands.add_parser(
        "delete", parents=[db_option, collection_option], help="delete a document"
    )
    delete.add_argument("doc_id", metavar="DOC_ID")
    delete.add_argument("--rev", help="fail unless this is the document's current revision")
    delete.set_defaults(func=cmd_delete)

    info = commands.add_parser(
        "info", parents=[db_option], help="show collections, counts and size"
    )
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=cmd_info)

    compact = commands.add_parser(
        "compact",
        parents=[db_option],
        help="purge expired documents and old tombstones, remove unused blobs, reclaim space",
    )
    compact.add_argument(
        "--tombstone-days",
        type=float,
        default=None,
        metavar="N",
        help="purge deletions older than this that every phone has pulled (default: 30)",
    )
    compact.add_argument(
        "--peer-retention-days",
        type=float,
        default=None,
        metavar="N",
        help="a phone silent for longer no longer holds tombstones back (default: 90)",
    )
    compact.add_argument("--json", action="store_true", help="machine-readable result")
    compact.set_defaults(func=cmd_compact)

    check = commands.add_parser(
        "check", parents=[db_option], help="verify SQLite, every blob's digest and every rev tree"
    )
    check.add_argument("--json", action="store_true", help="machine-readable result")
    check.set_defaults(func=cmd_check)

    purge = commands.add_parser(
        "purge",
        parents=[db_option, collection_option],
        help="erase a document locally, with no tombstone (not replicated)",
    )
    purge.add_argument("doc_id", metavar="DOC_ID")
    purge.set_defaults(func=cmd_purge)

    expire = commands.add_parser(
        "expire",
        parents=[db_option, collection_option],
        help="purge a document automatically at a time (or 'never')",
    )
    expire.add_argument("doc_id", metavar="DOC_ID")
    expire.add_argument("when", metavar="WHEN", help="ISO time, +30s/+15m/+12h/+7d, or never")
    expire.set_defaults(func=cmd_expire)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _guarded(command: Any) -> Any:
    """Turn store and I/O failures into one line on stderr and exit status 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (CommandError, StoreError, sqlite3.Error, OSError) as exc:
            message = str(exc) or type(exc).__name__
            print(f"fieldsync db: error: {message}", file=sys.stderr)
            return 1

    run.__doc__ = command.__doc__
    return run


def _database_path(args: argparse.Namespace) -> Path:
    path = getattr(args, "db", None)
    return Path(path) if path else default_database_path()


def _open(args: argparse.Namespace, *, create: bool = False) -> Database:
    return Database.open(_database_path(args), create=create)


def _collection(db: Database, args: argparse.Namespace, *, create: bool = False) -> Collection:
    collection = db.collection(args.collection, create=create)
    if collection is None:
        raise CommandError(f"no collection {args.collection} in {db.path}")
    return collection


def _read_json(text: str) -> Any:
    if text == "-":
        text = sys.stdin.read()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CommandError(f"document is not valid JSON: {exc}") from None


def _print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


@_guarded
def cmd_put(args: argparse.Namespace) -> int:
    body = _read_json(args.json)
    if not isinstance(body, dict):
        raise CommandError("document must be a JSON object")
    with _open(args, create=True) as db:
        doc = _collection(db, args, create=True).save_document(
            args.doc_id, body, expected_rev=args.rev
        )
    _print_json({"id": doc.doc_id, "rev": doc.rev_id, "sequence": doc.sequence})
    return 0


@_guarded
def cmd_get(args: argparse.Namespace) -> int:
    with _open(args) as db:
        collection = _collection(db, args)
        if args.rev is None:
            doc = collection.get_document(args.doc_id)
            if doc is None:
                raise CommandError(f"no document {args.doc_id!r} in {collection.full_name}")
            _print_json({"_id": doc.doc_id, **_spellings(doc.rev_id, doc.version), **doc.body})
            return 0
        rev = collection.get_revision(args.doc_id, args.rev)
        if rev is None:
            raise CommandError(f"no revision {args.rev} of {args.doc_id!r}")
        if rev.body is None:
            raise CommandError(f"the body of revision {args.rev} is no longer stored")
        out: dict[str, Any] = {"_id": rev.doc_id, **_spellings(rev.rev_id, rev.version)}
        if rev.deleted:
            out["_deleted"] = True
        out.update(json.loads(rev.body))
        _print_json(out)
    return 0


def _spellings(rev_id: str, version: HLV | None) -> dict[str, str | None]:
    """Both names of a revision: ``_rev`` the rev-tree revID (what 3.x phones see),
    ``_version`` the version vector (what 4.x phones see; null until the document is first
    written after the version-vector upgrade)."""
    return {"_rev": rev_id, "_version": str(version) if version is not None else None}


@_guarded
def cmd_list(args: argparse.Namespace) -> int:
    with _open(args) as db:
        changes = _collection(db, args).changes_since(
            args.since, limit=args.limit, active_only=not args.all
        )
    for change in changes:
        suffix = "\tdeleted" if change.deleted else ""
        print(f"{change.sequence}\t{change.doc_id}\t{change.rev_id}{suffix}")
    return 0


@_guarded
def cmd_delete(args: argparse.Namespace) -> int:
    with _open(args) as db:
        doc = _collection(db, args).delete_document(args.doc_id, expected_rev=args.rev)
    _print_json({"id": doc.doc_id, "rev": doc.rev_id, "sequence": doc.sequence})
    return 0


@_guarded
def cmd_info(args: argparse.Namespace) -> int:
    with _open(args) as db:
        collections: list[dict[str, Any]] = [
            {
                "name": c.full_name,
                "documents": c.count(),
                "deleted": c.count(include_deleted=True) - c.count(),
                "last_sequence": c.last_sequence,
            }
            for c in db.collections()
        ]
        digests = list(db.blobs.digests())
        info: dict[str, Any] = {
            "path": str(db.path),
            "name": db.name,
            "source_id": db.source_id.text,
            "size": db.disk_size(),
            "blobs": len(digests),
            "blob_bytes": db.blobs.total_size(),
            "free_bytes": free_bytes(db.path),
            "collections": collections,
        }
        last = db.last_maintenance()
        info["last_maintenance"] = None if last is None else last.summary()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"database    {info['path']}")
    print(f"name        {info['name']}")
    print(f"source ID   {info['source_id']} (version vectors)")
    print(f"size        {info['size']} bytes on disk")
    print(f"blobs       {info['blobs']} ({info['blob_bytes']} bytes)")
    print(f"free space  {info['free_bytes']} bytes")
    print(f"maintenance {info['last_maintenance'] or 'never run'}")
    width = max(len("collection"), *(len(c["name"]) for c in collections))
    print(f"{'collection':<{width}}  {'documents':>9}  {'deleted':>7}  {'last sequence':>13}")
    for c in collections:
        print(
            f"{c['name']:<{width}}  {c['documents']:>9}  {c['deleted']:>7}  "
            f"{c['last_sequence']:>13}"
        )
    return 0


# -- maintenance ---------------------------------------------------------------------------------


class ProgressPrinter:
    """Maintenance progress on stderr, one ``fieldsync.progress.Progress`` line per phase
    (``compact blobs: 120/400 blobs (30%) …``): rewritten in place on a terminal, a line every
    few seconds into a log."""

    def __init__(self, prefix: str, stream: TextIO | None = None) -> None:
        self._prefix = prefix
        self._stream = stream
        self._phase = ""
        self._progress: Progress | None = None

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase != self._phase or self._progress is None:
            self.finish()
            self._phase = phase
            self._progress = Progress(
                f"{self._prefix} {phase}", unit=phase, total=total or None, out=self._stream
            )
        self._progress.total = total or None
        self._progress.update(done)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.finish()
            self._progress = None


_DELAY = re.compile(r"\+(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY}


def parse_when(text: str, now: float | None = None) -> float | None:
    """An expiration given on the command line: epoch seconds, or ``None`` for never."""
    now = time.time() if now is None else now
    text = text.strip()
    if text.lower() in ("never", "none", "clear"):
        return None
    delay = _DELAY.fullmatch(text)
    if delay:
        return now + float(delay.group(1)) * _UNITS[delay.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(
            f"cannot read {text!r} as a time: use ISO 8601 (2026-12-01T06:00:00+00:00), "
            "+30s/+15m/+12h/+7d, epoch seconds, or never"
        ) from None
    return when.timestamp()  # a naive time is local time


def _print_result(result: MaintenanceResult, as_json: bool) -> None:
    if as_json:
        print(result.to_json().decode())
        return
    print(result.summary())
    for problem in result.problems:
        print(f"  {problem}")


@_guarded
def cmd_compact(args: argparse.Namespace) -> int:
    policy = MaintenancePolicy()
    if args.tombstone_days is not None:
        policy.tombstone_purge_interval = args.tombstone_days * DAY
    if args.peer_retention_days is not None:
        policy.peer_retention = args.peer_retention_days * DAY
    progress = ProgressPrinter("compact")
    with _open(args) as db:
        try:
            result = db.perform_maintenance(
                MaintenanceType.COMPACT, policy=policy, progress=progress
            )
        finally:
            progress.finish()
    _print_result(result, args.json)
    return 0 if result.ok else 1


@_guarded
def cmd_check(args: argparse.Namespace) -> int:
    progress = ProgressPrinter("check")
    with _open(args) as db:
        try:
            result = db.perform_maintenance(MaintenanceType.INTEGRITY_CHECK, progress=progress)
        finally:
            progress.finish()
    _print_result(result, args.json)
    return 0 if result.ok else 1


@_guarded
def cmd_purge(args: argparse.Namespace) -> int:
    with _open(args) as db:
        collection = _collection(db, args)
        if not collection.purge(args.doc_id):
            raise CommandError(f"no document {args.doc_id!r} in {collection.full_name}")
    _print_json({"id": args.doc_id, "purged": True})
    return 0


@_guarded
def cmd_expire(args: argparse.Namespace) -> int:
    when = parse_when(args.when)
    with _open(args) as db:
        _collection(db, args).set_document_expiration(args.doc_id, when)
    expires = None if when is None else datetime.fromtimestamp(when).astimezone().isoformat()
    _print_json({"id": args.doc_id, "expires": expires})
    return 0
