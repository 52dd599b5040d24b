#!/usr/bin/env python3
"""Many clients editing the same documents through one device, until they agree.

A device (listener + database) and CLIENTS client databases, each running fieldsync's active
replicator (push and pull, one-shot) as ``fieldsync sync both`` does. The device creates
DOCS documents, every client pulls them, then for ROUNDS rounds every client edits (and now
and then deletes) a random half of them and all clients sync at once. Then clients sync one
by one until nothing moves. Reports how many documents any client disagrees with the device
on, how many open conflicts remain, how many each client resolved, and the time taken.

    .venv/bin/python scripts/converge_clients.py --clients 20 --docs 200 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fieldsync.listener import URLEndpointListener, URLEndpointListenerConfiguration
from fieldsync.replicator import Replicator, ReplicatorConfiguration, ReplicatorType
from fieldsync.store import Database


def winners(db: Database) -> dict[str, Any]:
    coll = db.default_collection
    result: dict[str, Any] = {}
    for change in coll.changes_since(0):
        doc = coll.get_document(change.doc_id)
        if doc is not None:
            result[change.doc_id] = (doc.rev_id, doc.body)
        else:  # a deletion: the same winning tombstone everywhere, not just "deleted"
            current = coll.get_revision(change.doc_id, with_body=False)
            result[change.doc_id] = ("deleted", current.rev_id if current else None)
    return result


async def run(clients: int, docs: int, rounds: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        device = Database.open(Path(tmp) / "device", create=True)
        listener = URLEndpointListener(
            URLEndpointListenerConfiguration(database=device, port=0, disable_tls=True)
        )
        await listener.start()
        url = f"ws://127.0.0.1:{listener.port}/device"
        dbs = [Database.open(Path(tmp) / f"client{n}", create=True) for n in range(clients)]
        resolved = [0] * clients

        async def sync(n: int) -> int:
            replicator = Replicator(
                ReplicatorConfiguration(
                    database=dbs[n], url=url, replicator_type=ReplicatorType.PUSH_AND_PULL
                )
            )
            result = await replicator.run()
            resolved[n] += len(replicator.resolved_conflicts)
            return int(result.docs_pushed + result.docs_pulled)

        try:
            with device.transaction():
                for i in range(docs):
                    device.default_collection.save_document(f"d{i}", {"i": i})
            for n in range(clients):
                await sync(n)
            for round_ in range(rounds):
                for n, db in enumerate(dbs):
                    coll = db.default_collection
                    for i in rng.sample(range(docs), docs // 2):
                        doc = coll.get_document(f"d{i}")
                        if doc is None:
                            coll.save_document(f"d{i}", {"i": i, "by": n, "round": round_})
                        elif rng.random() < 0.05:
                            coll.delete_document(f"d{i}")
                        else:
                            coll.save_document(f"d{i}", {**doc.body, "by": n, "round": round_})
                await asyncio.gather(*(sync(n) for n in range(clients)))
            settle_rounds = 0
            while settle_rounds < 20:
                settle_rounds += 1
                moved = 0
                for n in range(clients):
                    moved += await sync(n)
                if not moved:
                    break
            want = winners(device)
            on_device = device.default_collection
            examples = []
            disagree = 0
            for n, db in enumerate(dbs):
                for doc_id, w in winners(db).items():
                    if want.get(doc_id) != w:
                        disagree += 1
                        if len(examples) < 5:
                            examples.append(
                                {
                                    "client": n,
                                    "doc": doc_id,
                                    "device": want.get(doc_id),
                                    "client_has": w,
                                    "client_leaves": db.default_collection.leaf_revisions(doc_id),
                                    "device_leaves": on_device.leaf_revisions(doc_id),
                                }
                            )
            open_conflicts = sum(
                1 for db in [device, *dbs] for d in want if db.default_collection.is_conflicted(d)
            )
        finally:
            await listener.stop()
            for db in dbs:
                db.close()
            device.close()
    return {
        "clients": clients,
        "docs": docs,
        "rounds": rounds,
        "settle_rounds": settle_rounds,
        "docs_any_client_disagrees_on": disagree,
        "examples": examples,
        "open_conflicts": open_conflicts,
        "conflicts_resolved_by_clients": sum(resolved),
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = asyncio.run(run(args.clients, args.docs, args.rounds, args.seed))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    ok = not report["docs_any_client_disagrees_on"] and not report["open_conflicts"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
