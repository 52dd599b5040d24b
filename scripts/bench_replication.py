"""Benchmark: push and pull of N 1 KB documents between our Replicator and our listener.

Writes docs/s and wall time to a JSON file (default bench/results/replication.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from fieldsync.listener import URLEndpointListener, URLEndpointListenerConfiguration
from fieldsync.replicator import Replicator, ReplicatorConfiguration, ReplicatorType
from fieldsync.store import Database


def _fill(db: Database, count: int) -> None:
    filler = "x" * 1000
    collection = db.default_collection
    for i in range(count):
        collection.save_document(f"doc-{i:06}", {"n": i, "filler": filler})


async def _replicate(local: Database, remote: Database, kind: ReplicatorType) -> float:
    config = URLEndpointListenerConfiguration(database=remote, port=0, disable_tls=True)
    async with URLEndpointListener(config) as listener:
        url = f"ws://127.0.0.1:{listener.port}/{remote.name}"
        replicator = Replicator(
            ReplicatorConfiguration(database=local, url=url, replicator_type=kind)
        )
        start = time.perf_counter()
        result = await replicator.run()
        elapsed = time.perf_counter() - start
    if result.errors:
        raise SystemExit(f"replication had errors: {result.last_error}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=Path("bench/results/replication.json"))
    args = parser.parse_args()
    results: dict[str, object] = {"docs": args.docs, "doc_size_bytes": 1024}
    with tempfile.TemporaryDirectory() as tmp:
        phone, device = Database.open(Path(tmp, "phone")), Database.open(Path(tmp, "device"))
        _fill(phone, args.docs)
        push = asyncio.run(_replicate(phone, device, ReplicatorType.PUSH))
        results["push_seconds"] = round(push, 3)
        results["push_docs_per_second"] = round(args.docs / push, 1)
        fresh = Database.open(Path(tmp, "fresh-phone"))
        pull = asyncio.run(_replicate(fresh, device, ReplicatorType.PULL))
        results["pull_seconds"] = round(pull, 3)
        results["pull_docs_per_second"] = round(args.docs / pull, 1)
        assert fresh.default_collection.count() == args.docs
        for db in (phone, device, fresh):
            db.close()
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    results["cpu_count"] = os.cpu_count()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
