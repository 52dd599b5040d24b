"""fieldsync's embedded document store: SQLite (WAL) with Couchbase Lite's data model.

A database is a directory with ``db.sqlite3`` and ``blobs/``. It holds scopes and collections of
JSON documents with revision trees (all leaves kept, LiteCore's winner rules, bounded depth)
and, beside each tree, a version vector (``versions``: the CBMobile_4 spelling; every write
updates both, ``doc_versions`` keeps them in SQLite), per-collection sequences and changes
feeds, content-addressed blobs, peer checkpoints and local values. It knows nothing of the
network.
"""

from fieldsync.store.blobs import BlobStore, BlobWriter, DigestMismatch, compute_digest, find_blobs
from fieldsync.store.collection import Collection
from fieldsync.store.database import Database
from fieldsync.store.errors import (
    CheckpointConflict,
    ConflictError,
    InvalidInput,
    NotFoundError,
    StoreError,
)
from fieldsync.store.maintenance import MaintenancePolicy, MaintenanceResult, MaintenanceType
from fieldsync.store.models import (
    Change,
    Document,
    IncomingRevision,
    IncomingVersioned,
    InsertResult,
    Revision,
)
from fieldsync.store.paths import default_database_path

__all__ = [
    "BlobStore",
    "BlobWriter",
    "Change",
    "CheckpointConflict",
    "Collection",
    "ConflictError",
    "Database",
    "DigestMismatch",
    "Document",
    "IncomingRevision",
    "IncomingVersioned",
    "InsertResult",
    "InvalidInput",
    "MaintenancePolicy",
    "MaintenanceResult",
    "MaintenanceType",
    "NotFoundError",
    "Revision",
    "StoreError",
    "compute_digest",
    "default_database_path",
    "find_blobs",
]
