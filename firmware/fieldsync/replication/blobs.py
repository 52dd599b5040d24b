"""Serving blobs to the peer: ``getAttachment`` and ``proveAttachment``.

Only blobs of revisions sent on the same connection are served, so a peer cannot read a blob
just by knowing its digest.
"""

from __future__ import annotations

import hashlib
from base64 import b64encode

from fieldsync.blip import IncomingRequest
from fieldsync.replication.messages import is_true
from fieldsync.replication.ports import ReplicatedDatabase
from fieldsync.replication.stats import ReplicationStats
from fieldsync.store import StoreError


def blob_proof(nonce: bytes, data: bytes) -> str:
    """The ``proveAttachment`` answer: SHA-1 of (nonce length, nonce, blob) as ``sha1-<base64>``."""
    digest = hashlib.sha1(bytes([len(nonce) & 0xFF]) + nonce + data).digest()
    return "sha1-" + b64encode(digest).decode()


class BlobServer:
    """Answers the peer's blob requests for one connection."""

    def __init__(self, database: ReplicatedDatabase, stats: ReplicationStats) -> None:
        self._database = database
        self._stats = stats
        #: Digests of blobs referenced by revisions sent on this connection.
        self.served: set[str] = set()

    def _read(self, request: IncomingRequest) -> bytes | None:
        digest = request.properties.get("digest", "")
        if digest not in self.served:
            request.respond_error("HTTP", 403, f"blob {digest!r} was not sent on this connection")
            return None
        try:
            return self._database.blobs.read(digest)
        except (KeyError, StoreError):
            request.respond_error("HTTP", 404, f"no blob {digest!r}")
            return None

    def get_attachment(self, request: IncomingRequest) -> None:
        data = self._read(request)
        if data is not None:
            self._stats.blobs_out += 1
            request.respond({}, data, compressed=is_true(request.properties.get("compress")))

    def prove_attachment(self, request: IncomingRequest) -> None:
        nonce = request.body
        if not nonce or len(nonce) > 255:
            request.respond_error("BLIP", 400, "Missing nonce")
            return
        data = self._read(request)
        if data is not None:
            request.respond({}, blob_proof(nonce, data).encode())
