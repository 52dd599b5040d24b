"""The active replicator's public names: ``from fieldsync.replicator import Replicator``."""

from fieldsync.replication.active import (
    Replicator,
    ReplicatorConfiguration,
    ReplicatorResult,
    ReplicatorType,
)
from fieldsync.replication.errors import ReplicationError

__all__ = [
    "ReplicationError",
    "Replicator",
    "ReplicatorConfiguration",
    "ReplicatorResult",
    "ReplicatorType",
]
