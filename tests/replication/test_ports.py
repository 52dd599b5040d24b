"""The store satisfies the Protocols replication is written against (``replication/ports.py``).

mypy checks the annotated assignments statically; the test checks the same at run time, so a
store method renamed or re-signed without updating the port is caught either way.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from fieldsync.replication.ports import BlobAccess, ReplicatedCollection, ReplicatedDatabase
from fieldsync.store import Database


def _members(protocol: type) -> set[str]:
    return {
        name
        for name in dir(protocol)
        if not name.startswith("_") and name not in dir(object) and name != "mro"
    }


def test_store_objects_satisfy_the_replication_ports(tmp_path: Path) -> None:
    with Database.open(tmp_path / "db") as db:
        database: ReplicatedDatabase = db
        collection: ReplicatedCollection = db.default_collection
        blobs: BlobAccess = db.blobs
        for port, obj in (
            (ReplicatedDatabase, database),
            (ReplicatedCollection, collection),
            (BlobAccess, blobs),
        ):
            members = _members(port)
            assert members, port
            for name in members:
                assert hasattr(obj, name), f"{type(obj).__name__} lacks {port.__name__}.{name}"
                wanted = getattr(port, name)
                if inspect.isfunction(wanted):
                    have = inspect.signature(getattr(obj, name))
                    expected = list(inspect.signature(wanted).parameters)[1:]
                    assert list(have.parameters) == expected, (port.__name__, name)
