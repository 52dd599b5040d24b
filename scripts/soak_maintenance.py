"""Soak: months of unattended use, compressed into N rounds against a live listener (issue 14).

The device is a separate process (``--role device``): a real ``URLEndpointListener`` on loopback
with a ``Housekeeper`` purging expired documents, and COMPACT run on command after each round,
with a simulated calendar (one round = one day) for tombstone ages. Its ``/proc/self/io``
``write_bytes`` is sampled around every sync and every compaction.

Each round a phone (our ``Replicator``, push and pull) creates, updates and deletes notes,
replaces 1 MB photos, and creates documents the device lets expire. A second phone (LiteCore's
``cblpeer`` when built, else our ``Replicator``) pulls only every ``--lag`` rounds, so it always
comes back 10 rounds late: it must still receive every deletion, which only holds if COMPACT
keeps the tombstones it has not seen. At the end a fresh phone pulls everything, and the device
passes INTEGRITY_CHECK.

Checks (exit status 1 if any fails): database + blob directory <= 1.3 x live data after
maintenance; live data intact and syncable; the lagging phone receives every deletion.
Numbers go to ``bench/results/soak_maintenance.json``.

    .venv/bin/python scripts/soak_maintenance.py [--rounds 50] [--lag 10] \
        [--lagging-client litecore|replicator] [--workdir /var/tmp]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fieldsync.store import Database, compute_digest

DAY = 86400.0
SIM_START = 1_800_000_000.0
CBLPEER = Path("/work/ref/lc32/bin/cblpeer")
PHOTO_BYTES = 1024 * 1024


# -- the device process ----------------------------------------------------------------------------


def _io() -> dict[str, int]:
    counters: dict[str, int] = {}
    with open("/proc/self/io") as file:
        for line in file:
            key, _, value = line.partition(":")
            counters[key.strip()] = int(value)
    return {"write_bytes": counters.get("write_bytes", 0), "wchar": counters.get("wchar", 0)}


def _live_data(db: Database) -> dict[str, Any]:
    """Live documents, their body bytes and the bytes of the blobs they reference."""
    from fieldsync.store import find_blobs

    coll = db.default_collection
    docs: dict[str, Any] = {}
    body_bytes = 0
    digests: set[str] = set()
    for change in coll.changes_since(0, active_only=True):
        doc = coll.get_document(change.doc_id)
        if doc is None:
            continue
        docs[doc.doc_id] = doc.body
        body_bytes += change.body_size
        digests.update(b["digest"] for b in find_blobs(doc.body))
    blob_bytes = sum(db.blobs.size(d) or 0 for d in digests)
    return {"docs": docs, "body_bytes": body_bytes, "blob_bytes": blob_bytes, "digests": digests}


async def _device(path: Path) -> None:
    from fieldsync.listener import URLEndpointListener, URLEndpointListenerConfiguration
    from fieldsync.store import MaintenancePolicy, MaintenanceType
    from fieldsync.store.housekeeper import Housekeeper
    from fieldsync.store.maintenance import sqlite_bytes

    db = Database.open(path)
    keeper = Housekeeper(db, poll_interval=0.2)
    await keeper.start()
    config = URLEndpointListenerConfiguration(database=db, port=0, disable_tls=True)
    listener = URLEndpointListener(config)
    await listener.start()
    print(json.dumps({"port": listener.port, "name": db.name}), flush=True)
    try:
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                break
            command = json.loads(line)
            kind = command["cmd"]
            reply: dict[str, Any] = {}
            if kind == "io":
                reply = _io()
            elif kind == "expire":
                coll = db.default_collection
                when = time.time() + command["seconds"]
                for change in coll.changes_since(0, active_only=True):
                    if change.doc_id.startswith(command["prefix"]):
                        coll.set_document_expiration(change.doc_id, when)
                        reply[change.doc_id] = when
            elif kind == "compact":
                policy = MaintenancePolicy(
                    tombstone_purge_interval=command["tombstone_interval"],
                    blob_grace=command["blob_grace"],
                    clock=lambda now=command["now"]: now,
                )
                before = _io()
                result = await asyncio.to_thread(
                    db.perform_maintenance, MaintenanceType.COMPACT, policy=policy
                )
                after = _io()
                reply = {
                    "result": json.loads(result.to_json()),
                    "write_bytes": after["write_bytes"] - before["write_bytes"],
                }
            elif kind == "check":
                result = await asyncio.to_thread(
                    db.perform_maintenance, MaintenanceType.INTEGRITY_CHECK
                )
                reply = {"ok": result.ok, "problems": result.problems}
            elif kind == "stats":
                live = await asyncio.to_thread(_live_data, db)
                coll = db.default_collection
                reply = {
                    "sqlite_bytes": sqlite_bytes(db.path),
                    "blob_dir_bytes": db.blobs.total_size(),
                    "blob_files": len(list(db.blobs.digests())),
                    "live_docs": len(live["docs"]),
                    "live_body_bytes": live["body_bytes"],
                    "live_blob_bytes": live["blob_bytes"],
                    "tombstones": coll.count(include_deleted=True) - coll.count(),
                    "purged_expired": keeper.purged,
                }
                if command.get("docs"):
                    reply["docs"] = live["docs"]
                    reply["deleted"] = sorted(c.doc_id for c in coll.changes_since(0) if c.deleted)
            elif kind == "quit":
                break
            print(json.dumps(reply), flush=True)
    finally:
        await listener.stop()
        await keeper.stop()
        db.close()


# -- the driver ------------------------------------------------------------------------------------


class Device:
    def __init__(self, path: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--role", "device", "--db", str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        hello = json.loads(self._readline())
        self.url = f"ws://127.0.0.1:{hello['port']}/{hello['name']}"

    def _readline(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit("the device process died")
        return line

    def ask(self, **command: Any) -> Any:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return json.loads(self._readline())

    def close(self) -> None:
        with contextlib.suppress(SystemExit, BrokenPipeError, ValueError):
            self.ask(cmd="quit")
        self.process.wait(timeout=30)


async def _sync(db: Database, url: str, kind: str) -> tuple[int, int]:
    from fieldsync.replicator import Replicator, ReplicatorConfiguration, ReplicatorType

    replicator_type = {
        "pushpull": ReplicatorType.PUSH_AND_PULL,
        "pull": ReplicatorType.PULL,
    }[kind]
    result = await Replicator(
        ReplicatorConfiguration(database=db, url=url, replicator_type=replicator_type)
    ).run()
    if result.errors:
        raise SystemExit(f"replication failed: {result.last_error}")
    return result.docs_pushed, result.docs_pulled


class LaggingPhone:
    """The phone that syncs only every ``lag`` rounds (pull only)."""

    def __init__(self, workdir: Path, kind: str) -> None:
        self.kind = kind
        self.dir = workdir / "lagging-phone"
        self.db = Database.open(self.dir) if kind == "replicator" else None

    def pull(self, url: str) -> None:
        if self.db is not None:
            asyncio.run(_sync(self.db, url, "pull"))
            return
        out = subprocess.run(
            [str(CBLPEER), "--db", str(self.dir), "--url", url, "pull"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        status = json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else {}
        if out.returncode != 0 or status.get("status") != "ok":
            raise SystemExit(f"cblpeer pull failed: {out.stdout} {out.stderr[-2000:]}")

    def live_and_deleted(self) -> tuple[dict[str, Any], set[str], int]:
        """Live docs (id -> body), deleted doc IDs, and blobs referenced but missing."""
        if self.db is not None:
            coll = self.db.default_collection
            live = {}
            deleted = set()
            for change in coll.changes_since(0):
                if change.deleted:
                    deleted.add(change.doc_id)
                else:
                    doc = coll.get_document(change.doc_id)
                    assert doc is not None
                    live[doc.doc_id] = doc.body
            missing = sum(
                len(self.db.missing_blobs(body)) for body in live.values() if isinstance(body, dict)
            )
            return live, deleted, missing
        out = subprocess.run(
            [str(CBLPEER), "--db", str(self.dir), "dump", "--include-deleted"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        live: dict[str, Any] = {}
        deleted: set[str] = set()
        for line in out.stdout.splitlines():
            row = json.loads(line)
            if row.get("deleted"):
                deleted.add(row["id"])
            else:
                live[row["id"]] = row.get("body")
        # LiteCore keeps blobs as Attachments/<base64 digest, '/' as '_'>.blob: check each
        # live blob is there and hashes to its digest.
        attachments = self.dir / "cblpeer.cblite2" / "Attachments"
        missing = 0
        for body in live.values():
            for digest in _blob_digests(body):
                file = attachments / (digest.removeprefix("sha1-").replace("/", "_") + ".blob")
                if not file.is_file() or compute_digest(file.read_bytes()) != digest:
                    missing += 1
        return live, deleted, missing

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


def _random_photo(rng: random.Random) -> bytes:
    return rng.randbytes(PHOTO_BYTES)


def _photo_body(db: Database, rng: random.Random, name: str, version: int) -> dict[str, Any]:
    digest = db.blobs.put(_random_photo(rng))
    return {
        "type": "photo",
        "name": name,
        "version": version,
        "image": {
            "@type": "blob",
            "digest": digest,
            "length": PHOTO_BYTES,
            "content_type": "image/jpeg",
        },
    }


def _strip(docs: dict[str, Any], prefix: str = "temp-") -> dict[str, Any]:
    return {k: v for k, v in docs.items() if not k.startswith(prefix)}


def _blob_digests(body: Any) -> set[str]:
    from fieldsync.store import find_blobs

    return {b["digest"] for b in find_blobs(body)} if isinstance(body, dict) else set()


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="fieldsync-soak-", dir=args.workdir))
    device = Device(workdir / "device")
    phone = Database.open(workdir / "phone")
    lagging = LaggingPhone(workdir, args.lagging_client)
    coll = phone.default_collection
    failures: list[str] = []
    rounds: list[dict[str, Any]] = []
    sync_write_bytes = 0
    synced_docs = 0
    notes: list[str] = []
    photos = [f"photo-{k}" for k in range(args.photos)]
    try:
        for name in photos:
            coll.save_document(name, _photo_body(phone, rng, name, 0))
        asyncio.run(_sync(phone, device.url, "pushpull"))
        lagging.pull(device.url)
        last_lagging_sync = 0
        for round_no in range(1, args.rounds + 1):
            # -- the phone's day of work
            for i in range(4):
                doc_id = f"note-{round_no}-{i}"
                coll.save_document(doc_id, {"type": "note", "text": f"reading {round_no}.{i}"})
                notes.append(doc_id)
            for doc_id in rng.sample(notes, min(4, len(notes))):
                coll.save_document(doc_id, {"type": "note", "text": f"edited in {round_no}"})
            for doc_id in rng.sample(notes, min(2, len(notes))):
                coll.delete_document(doc_id)
                notes.remove(doc_id)
            for name in rng.sample(photos, min(args.replace, len(photos))):
                current = coll.get_document(name)
                assert current is not None
                version = int(current.body["version"]) + 1
                coll.save_document(name, _photo_body(phone, rng, name, version))
            for i in range(2):
                coll.save_document(f"temp-{round_no}-{i}", {"type": "temp", "round": round_no})
            # -- sync, measuring what the device writes
            before = device.ask(cmd="io")["write_bytes"]
            pushed, pulled = asyncio.run(_sync(phone, device.url, "pushpull"))
            sync_bytes = device.ask(cmd="io")["write_bytes"] - before
            sync_write_bytes += sync_bytes
            synced_docs += pushed + pulled
            # -- the device lets today's temporary documents expire
            device.ask(cmd="expire", prefix=f"temp-{round_no}-", seconds=0.3)
            deadline = time.monotonic() + 10
            while True:
                stats = device.ask(cmd="stats", docs=True)
                if not any(d.startswith(f"temp-{round_no}-") for d in stats["docs"]):
                    break
                if time.monotonic() > deadline:
                    failures.append(f"round {round_no}: expired documents not purged in 10 s")
                    break
                time.sleep(0.1)
            # -- the lagging phone comes back every `lag` rounds
            lag_check: dict[str, Any] | None = None
            if round_no % args.lag == 0:
                lag_before, _, _ = lagging.live_and_deleted()
                lagging.pull(device.url)
                live, _deleted, missing = lagging.live_and_deleted()
                device_docs = _strip(stats["docs"])
                should_be_gone = set(_strip(lag_before)) - set(device_docs)
                not_deleted = sorted(d for d in should_be_gone if d in _strip(live))
                wrong = sorted(d for d, body in device_docs.items() if _strip(live).get(d) != body)
                lag_check = {
                    "rounds_since_last_sync": round_no - last_lagging_sync,
                    "deletions_expected": len(should_be_gone),
                    "deletions_missed": len(not_deleted),
                    "live_docs_differing": len(wrong),
                    "blobs_missing": missing,
                }
                if not_deleted:
                    failures.append(
                        f"round {round_no}: lagging phone kept {len(not_deleted)} deleted docs "
                        f"(e.g. {not_deleted[:3]})"
                    )
                if wrong or missing:
                    failures.append(
                        f"round {round_no}: lagging phone differs on {len(wrong)} docs, "
                        f"{missing} blobs missing"
                    )
                last_lagging_sync = round_no
            # -- nightly maintenance
            time.sleep(args.blob_grace + 0.05)
            compacted = device.ask(
                cmd="compact",
                now=SIM_START + round_no * DAY,
                tombstone_interval=args.tombstone_days * DAY,
                blob_grace=args.blob_grace,
            )
            stats = device.ask(cmd="stats")
            on_disk = stats["sqlite_bytes"] + stats["blob_dir_bytes"]
            live_bytes = stats["live_body_bytes"] + stats["live_blob_bytes"]
            ratio = on_disk / live_bytes
            entry = {
                "round": round_no,
                "docs_synced": pushed + pulled,
                "sync_write_bytes": sync_bytes,
                "sync_write_bytes_beyond_blobs": sync_bytes - args.replace * PHOTO_BYTES,
                "maintenance_write_bytes": compacted["write_bytes"],
                "sqlite_bytes": stats["sqlite_bytes"],
                "blob_dir_bytes": stats["blob_dir_bytes"],
                "live_bytes": live_bytes,
                "ratio": round(ratio, 4),
                "live_docs": stats["live_docs"],
                "tombstones": stats["tombstones"],
                "tombstones_purged": compacted["result"]["tombstones_purged"],
                "tombstones_held": compacted["result"]["tombstones_held"],
                "blobs_removed": compacted["result"]["blobs_removed"],
                "bodies_dropped": compacted["result"]["bodies_dropped"],
                "vacuum": compacted["result"]["vacuum"],
                "lagging_phone": lag_check,
            }
            rounds.append(entry)
            if ratio > 1.3:
                failures.append(f"round {round_no}: on disk {on_disk} > 1.3 x live {live_bytes}")
            print(
                f"round {round_no:2}: {stats['live_docs']} live docs, {stats['tombstones']} "
                f"tombstones, disk/live {ratio:.3f}, sync wrote {sync_bytes} B for "
                f"{pushed + pulled} docs" + (f", lagging phone {lag_check}" if lag_check else ""),
                flush=True,
            )
        # -- the end: intact, checkable, syncable
        check = device.ask(cmd="check")
        if not check["ok"]:
            failures.append(f"integrity check failed: {check['problems'][:5]}")
        final = device.ask(cmd="stats", docs=True)
        fresh = Database.open(workdir / "fresh-phone")
        asyncio.run(_sync(fresh, device.url, "pull"))
        fresh_docs = {
            c.doc_id: fresh.default_collection.get_document(c.doc_id).body  # type: ignore[union-attr]
            for c in fresh.default_collection.changes_since(0, active_only=True)
        }
        if fresh_docs != final["docs"]:
            failures.append("a fresh phone's pull differs from the device's live documents")
        expected = _strip(
            {
                c.doc_id: coll.get_document(c.doc_id).body  # type: ignore[union-attr]
                for c in coll.changes_since(0, active_only=True)
            }
        )
        if _strip(final["docs"]) != expected:
            failures.append("the device's live documents differ from the writing phone's")
        blobs_ok = all(
            fresh.blobs.has(d) for body in fresh_docs.values() for d in _blob_digests(body)
        )
        if not blobs_ok:
            failures.append("a live blob did not reach the fresh phone")
        fresh.close()
        summary = {
            "rounds": args.rounds,
            "lag_rounds": args.lag,
            "lagging_client": args.lagging_client,
            "photos": args.photos,
            "photo_bytes": PHOTO_BYTES,
            "photos_replaced_per_round": args.replace,
            "tombstone_purge_days": args.tombstone_days,
            "blob_grace_seconds": args.blob_grace,
            "final": rounds[-1] if rounds else None,
            "max_ratio_after_maintenance": max((r["ratio"] for r in rounds), default=None),
            "docs_synced": synced_docs,
            "device_write_bytes_during_sync": sync_write_bytes,
            "device_write_bytes_per_synced_doc": round(sync_write_bytes / max(synced_docs, 1)),
            "device_write_bytes_per_synced_doc_beyond_blob_bytes": round(
                (sync_write_bytes - args.rounds * args.replace * PHOTO_BYTES) / max(synced_docs, 1)
            ),
            "integrity_ok": check["ok"],
            "fresh_phone_docs": len(fresh_docs),
            "failures": failures,
            "rounds_detail": rounds,
        }
    finally:
        lagging.close()
        phone.close()
        device.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return summary


def _notes_write_volume(args: argparse.Namespace) -> dict[str, Any]:
    """Write volume per synced small document (no blobs), pushed in one batch."""
    workdir = Path(tempfile.mkdtemp(prefix="fieldsync-wv-", dir=args.workdir))
    device = Device(workdir / "device")
    phone = Database.open(workdir / "phone")
    try:
        for i in range(args.wv_docs):
            phone.default_collection.save_document(
                f"reading-{i:05}", {"sensor": "t1", "value": i * 0.1, "pad": "x" * 200}
            )
        before = device.ask(cmd="io")["write_bytes"]
        pushed, _ = asyncio.run(_sync(phone, device.url, "pushpull"))
        written = device.ask(cmd="io")["write_bytes"] - before
    finally:
        phone.close()
        device.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "docs": pushed,
        "body_bytes_approx": 260,
        "device_write_bytes": written,
        "device_write_bytes_per_doc": round(written / max(pushed, 1)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=("driver", "device"), default="driver")
    parser.add_argument("--db", type=Path)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--lag", type=int, default=10, help="the lagging phone syncs this often")
    parser.add_argument("--photos", type=int, default=6)
    parser.add_argument("--replace", type=int, default=3, help="photos replaced per round")
    parser.add_argument("--tombstone-days", type=float, default=3.0)
    parser.add_argument("--blob-grace", type=float, default=1.0)
    parser.add_argument("--wv-docs", type=int, default=500)
    parser.add_argument(
        "--lagging-client",
        choices=("litecore", "replicator"),
        default="litecore" if CBLPEER.exists() else "replicator",
    )
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--workdir", default=None, help="where databases go (a real disk)")
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    parser.add_argument("--out", type=Path, default=Path("bench/results/soak_maintenance.json"))
    args = parser.parse_args()
    if args.role == "device":
        asyncio.run(_device(args.db))
        return 0
    started = time.monotonic()
    summary = run_soak(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")  # kept if what follows fails
    summary["write_volume_small_docs"] = _notes_write_volume(args)
    summary["seconds"] = round(time.monotonic() - started, 1)
    summary["cpu_count"] = os.cpu_count()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    short = {k: v for k, v in summary.items() if k != "rounds_detail"}
    print(json.dumps(short, indent=2))
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
