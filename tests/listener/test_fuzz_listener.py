"""Issue 11 fuzzing, CI size: generated BLIP frame sequences and HTTP upgrades against a live
listener on loopback, while another connection keeps syncing. The full count (100,000) runs
from ``scripts/fuzz_listener.py``; here a few thousand cases, bounded in count."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fieldsync.listener import URLEndpointListener, URLEndpointListenerConfiguration
from fieldsync.store import Database

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fuzz_listener.py"
#: Cases CI runs (about a minute here); the script's default is the full 100,000.
CI_CASES = 3_000


def load_driver():
    spec = importlib.util.spec_from_file_location("fuzz_listener", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_listener"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[URLEndpointListener, Database]]:
    db = Database.open(tmp_path / "db")
    listener = URLEndpointListener(
        URLEndpointListenerConfiguration(
            database=db, port=0, disable_tls=True, network_interface="127.0.0.1"
        )
    )
    await listener.start()
    yield listener, db
    await listener.stop()
    db.close()


@pytest.mark.slow
async def test_fuzzed_frames_and_upgrades_leave_the_listener_serving(served) -> None:
    listener, db = served
    driver = load_driver()
    report = await driver.fuzz(listener.port, cases=CI_CASES, seed=5, concurrency=6)
    assert report.cases == CI_CASES
    assert report.hangs == 0
    assert report.sync_failures == 0 and report.sync_rounds > 0
    # Every fuzz connection is gone once the run ends (nothing is kept for a closed peer); one
    # the fuzzer just dropped may still be finishing its close for a moment.
    for _ in range(100):
        if listener.status.connection_count == 0:
            break
        await asyncio.sleep(0.05)
    assert listener.status.connection_count == 0
    # The witness's documents all arrived intact, whatever the fuzz did around them.
    assert db.default_collection.get_document("w1") is not None


def test_generation_is_reproducible() -> None:
    import random

    driver = load_driver()
    first = [driver.frame_sequence(random.Random(9)) for _ in range(3)]
    again = [driver.frame_sequence(random.Random(9)) for _ in range(3)]
    assert first == again
