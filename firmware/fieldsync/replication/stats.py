"""Counters one replication connection keeps, for logs and the status report."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol


class ByteCounter(Protocol):
    """Counts a connection's bytes each way (``BLIPProtocol`` does)."""

    bytes_sent: int
    bytes_received: int


@dataclass
class ReplicationStats:
    """What has crossed one connection, and whether it is busy right now."""

    since: float = field(default_factory=time.time)
    docs_in: int = 0
    docs_out: int = 0
    blobs_in: int = 0
    blobs_out: int = 0
    errors: int = 0
    pushing: bool = False
    pulling: bool = False
    in_flight: int = 0
    last_error: str = ""
    #: Where byte counts come from (the connection's BLIP protocol object).
    byte_counter: ByteCounter | None = field(default=None, repr=False)

    @property
    def bytes_in(self) -> int:
        return self.byte_counter.bytes_received if self.byte_counter is not None else 0

    @property
    def bytes_out(self) -> int:
        return self.byte_counter.bytes_sent if self.byte_counter is not None else 0

    @property
    def busy(self) -> bool:
        """True while revisions are moving (not merely connected and caught up)."""
        return self.in_flight > 0

    def record_error(self, message: str) -> None:
        self.errors += 1
        self.last_error = message
