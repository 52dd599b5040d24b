"""Per-direction BLIP codecs: one raw-deflate context and one running CRC32 each.

Every non-ACK frame in a direction goes through that direction's codec: its uncompressed data is
added to the running CRC32, and (for frames flagged Compressed) it is deflated with the shared
context and sync-flushed, dropping the trailing ``00 00 FF FF`` that the receiver restores.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

from .errors import BLIPProtocolError
from .frame import CHECKSUM_SIZE

__all__ = ["SYNC_FLUSH_TRAILER", "Deflater", "Inflater", "deflate_bound"]

#: The bytes every sync flush ends with; stripped on send, restored on receive.
SYNC_FLUSH_TRAILER = b"\x00\x00\xff\xff"

_WBITS_RAW = -15
_MEM_LEVEL = 9  # as LiteCore
_INFLATE_CHUNK = 64 * 1024

Buffer = bytes | bytearray | memoryview


def deflate_bound(n: int) -> int:
    """Generous upper bound on the deflated, sync-flushed size of ``n`` bytes of input."""
    return n + (n >> 3) + (n >> 6) + 32


class Deflater:
    """Outgoing codec: shared raw-deflate context plus running CRC32 of uncompressed data."""

    def __init__(self, level: int = 6) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, _WBITS_RAW, _MEM_LEVEL)
        self.checksum = 0

    def add_uncompressed(self, data: Buffer) -> None:
        """Account for data sent without compression (CRC only)."""
        self.checksum = zlib.crc32(data, self.checksum)

    def deflate(self, data: Buffer) -> bytes:
        """Compress ``data`` and sync-flush; the result still ends with the 4-byte trailer."""
        self.checksum = zlib.crc32(data, self.checksum)
        out = self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)
        if not out.endswith(SYNC_FLUSH_TRAILER):  # pragma: no cover - zlib guarantees it
            raise RuntimeError("deflate sync flush did not end with 00 00 FF FF")
        return out

    def checksum_bytes(self) -> bytes:
        """The running CRC32 as the 4-byte big-endian frame trailer."""
        return self.checksum.to_bytes(CHECKSUM_SIZE, "big")


class Inflater:
    """Incoming codec: shared raw-inflate context plus running CRC32 of uncompressed data."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(_WBITS_RAW)
        self.checksum = 0

    def add_uncompressed(self, data: Buffer) -> None:
        """Account for data received without compression (CRC only)."""
        self.checksum = zlib.crc32(data, self.checksum)

    def inflate(self, data: Buffer) -> Iterator[bytes]:
        """Inflate the body of one compressed frame (trailer already stripped by the sender).

        Yields the uncompressed data in bounded chunks and adds it to the CRC. Raises
        :class:`BLIPProtocolError` on invalid deflate data.
        """
        z = self._z
        try:
            # One input with the trailer (a 1 KB frame is then one zlib call, not four; perf).
            pending: Buffer = bytes(data) + SYNC_FLUSH_TRAILER
            full = False
            while pending:
                out = z.decompress(pending, _INFLATE_CHUNK)
                full = len(out) == _INFLATE_CHUNK
                if out:
                    self.checksum = zlib.crc32(out, self.checksum)
                    yield out
                pending = z.unconsumed_tail
            while full:  # drain output zlib may still hold: only after a call filled its chunk
                out = z.decompress(b"", _INFLATE_CHUNK)
                full = len(out) == _INFLATE_CHUNK
                if out:
                    self.checksum = zlib.crc32(out, self.checksum)
                    yield out
        except zlib.error as exc:
            raise BLIPProtocolError(f"invalid deflate data in compressed frame: {exc}") from None
        if z.eof:
            raise BLIPProtocolError("invalid deflate data: compressed stream was terminated")

    def verify(self, trailer: Buffer) -> None:
        """Check a received frame's 4-byte checksum against the running CRC32."""
        received = int.from_bytes(trailer, "big")
        if received != self.checksum:
            raise BLIPProtocolError(
                f"frame checksum mismatch (received {received:08x}, computed {self.checksum:08x})"
            )
