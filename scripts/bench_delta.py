"""Benchmark: change one field in each of N 10 KB documents and pull the change, delta sync on/off.

Reports bytes on the wire (BLIP frames, after BLIP's own compression) and seconds, written to
a JSON file (default bench/results/delta.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path

from fieldsync.listener import URLEndpointListener, URLEndpointListenerConfiguration
from fieldsync.replicator import Replicator, ReplicatorConfiguration, ReplicatorType
from fieldsync.store import Database


async def _measure(docs: int, delta: bool, tmp: Path) -> dict[str, float]:
    device = Database.open(tmp / f"device-{delta}")
    phone = Database.open(tmp / f"phone-{delta}")
    rng = random.Random(42)
    for i in range(docs):
        filler = rng.randbytes(5000).hex()  # ~10 KB, incompressible
        device.default_collection.save_document(f"doc-{i:05}", {"n": i, "filler": filler})
    config = URLEndpointListenerConfiguration(
        database=device, port=0, disable_tls=True, enable_delta_sync=delta
    )
    async with URLEndpointListener(config) as listener:
        url = f"ws://127.0.0.1:{listener.port}/{device.name}"

        async def pull():
            config = ReplicatorConfiguration(
                database=phone, url=url, replicator_type=ReplicatorType.PULL
            )
            return await Replicator(config).run()

        await pull()
        collection = device.default_collection
        with device.transaction():
            for i in range(docs):
                doc = collection.get_document(f"doc-{i:05}")
                collection.save_document(doc.doc_id, {**doc.body, "n": -i})
        start = time.perf_counter()
        result = await pull()
        elapsed = time.perf_counter() - start
    assert result.docs_pulled == docs, result
    device.close()
    phone.close()
    return {
        "seconds": round(elapsed, 3),
        "bytes_received": result.bytes_received,
        "bytes_sent": result.bytes_sent,
        "bytes_per_doc": round((result.bytes_received + result.bytes_sent) / docs, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("bench/results/delta.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            "docs": args.docs,
            "doc_size_bytes": 10_000,
            "delta_on": asyncio.run(_measure(args.docs, True, Path(tmp))),
            "delta_off": asyncio.run(_measure(args.docs, False, Path(tmp))),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
