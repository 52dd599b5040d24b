"""Reassembly of an incoming BLIP message from its frames."""

from __future__ import annotations

from collections.abc import Mapping

from .compression import Inflater
from .errors import BLIPLimitExceeded, BLIPProtocolError
from .frame import CHECKSUM_SIZE, COMPRESSED, MORE_COMING, MessageType
from .limits import CLOSE_MESSAGE_TOO_BIG
from .message import Message
from .properties import MAX_PROPERTIES_SIZE, decode_properties
from .spool import Spool
from .varint import decode_uvarint

__all__ = ["ACK_INTERVAL", "MessageAssembler"]

#: The receiver ACKs a message each time this many more of its frame bytes have arrived
#: (LiteCore's kIncomingAckThreshold).
ACK_INTERVAL = 50_000

_MAX_VARINT_LEN32 = 5

Buffer = bytes | bytearray | memoryview


class MessageAssembler:
    """Collects the frames of one incoming request or reply.

    The body is kept as a list of chunks (views into received frames, or inflated output) and
    joined once, when the last frame arrives; or, once it passes the memory allowance that
    :meth:`add_frame` is given, written to a :class:`~fieldsync.blip.spool.Spool`.
    """

    __slots__ = (
        "_body",
        "_length_bytes",
        "_properties",
        "_properties_size",
        "_shared_strings",
        "_spool",
        "_spool_dir",
        "flags",
        "memory",
        "number",
        "raw_bytes_received",
        "size",
        "type",
        "unacked_bytes",
    )

    def __init__(
        self,
        msg_type: MessageType,
        number: int,
        flags: int,
        spool_dir: str | None = None,
        shared_strings: Mapping[str, str] | None = None,
    ) -> None:
        self.type = msg_type
        self.number = number
        self.flags = flags & ~MORE_COMING
        self.raw_bytes_received = 0
        self.unacked_bytes = 0
        #: Uncompressed bytes received so far (properties length, properties and body).
        self.size = 0
        self._length_bytes: bytearray | None = bytearray()  # None once the length is known
        self._properties_size = 0
        self._properties = bytearray()
        self._body: list[Buffer] = []
        #: Bytes of this message held in memory (properties and unspooled body).
        self.memory = 0
        self._spool: Spool | None = None
        self._spool_dir = spool_dir
        self._shared_strings = shared_strings

    @property
    def _label(self) -> str:
        return f"{self.type.name} #{self.number}"

    def add_frame(
        self,
        payload: memoryview,
        flags: int,
        codec: Inflater,
        limit: int | None = None,
        memory: int | None = None,
    ) -> bool:
        """Add one frame's payload (everything after the header); return True if it was the last.

        Verifies the frame's checksum against ``codec``'s running CRC32. ``limit`` bounds
        :attr:`size`: it is checked on each inflated chunk, so a deflate bomb is refused
        (:class:`BLIPLimitExceeded`) after at most ``limit`` bytes of output, never inflated whole.
        ``memory`` bounds :attr:`memory`: body bytes beyond it go to a spool file, chunk by
        chunk as they are inflated. This may run in a worker thread (a big compressed frame)
        while nothing else touches this assembler or ``codec``.
        """
        self.raw_bytes_received += len(payload)
        self.unacked_bytes += len(payload)
        if len(payload) < CHECKSUM_SIZE:
            raise BLIPProtocolError(
                f"truncated frame of {self._label}: {len(payload)} bytes, too short for a checksum"
            )
        data = payload[:-CHECKSUM_SIZE]
        if flags & COMPRESSED:
            for piece in codec.inflate(data):
                self._add(memoryview(piece), limit, memory)
        else:
            codec.add_uncompressed(data)
            self._add(data, limit, memory)
        codec.verify(payload[-CHECKSUM_SIZE:])
        if self._length_bytes is not None:
            raise BLIPProtocolError(
                f"first frame of {self._label} is too short to hold the properties length"
            )
        if flags & MORE_COMING:
            return False
        if len(self._properties) < self._properties_size:
            raise BLIPProtocolError(f"{self._label} ends before the end of its properties")
        return True

    def _add(self, data: memoryview, limit: int | None, memory: int | None) -> None:
        self.size += len(data)
        if limit is not None and self.size > limit:
            raise BLIPLimitExceeded(
                f"{self._label} is larger than the {limit}-byte limit for incoming messages",
                CLOSE_MESSAGE_TOO_BIG,
            )
        if self._length_bytes is not None:
            data = self._consume_length(data)
        missing = self._properties_size - len(self._properties)
        if missing > 0 and data:
            self._properties += data[:missing]
            self.memory += min(missing, len(data))
            data = data[missing:]
        if not data:
            return
        if self._spool is None and memory is not None and self.memory + len(data) > memory:
            self._spool = Spool(self._spool_dir)
            for chunk in self._body:
                self._spool.write(chunk)
            self.memory -= sum(len(chunk) for chunk in self._body)
            self._body = []
        if self._spool is not None:
            self._spool.write(data)
        else:
            self._body.append(data)
            self.memory += len(data)

    def _consume_length(self, data: memoryview) -> memoryview:
        length_bytes = self._length_bytes
        assert length_bytes is not None
        if not length_bytes and data and data[0] < 0x80:  # a one-byte length, all at once
            self._properties_size = data[0]  # < 128: below MAX_PROPERTIES_SIZE
            self._length_bytes = None
            return data[1:]
        i = 0
        while i < len(data):
            byte = data[i]
            length_bytes.append(byte)
            i += 1
            if not byte & 0x80:
                size, _ = decode_uvarint(length_bytes, 0, bits=32, what="properties length")
                if size > MAX_PROPERTIES_SIZE:
                    raise BLIPProtocolError(
                        f"properties of {self._label} excessively large ({size} bytes)"
                    )
                self._properties_size = size
                self._length_bytes = None
                break
            if len(length_bytes) >= _MAX_VARINT_LEN32:
                raise BLIPProtocolError(f"bad properties length varint in {self._label}")
        return data[i:]

    def finish(self) -> Message:
        """The complete message (call after :meth:`add_frame` returned True); a spooled body
        passes to the message (see :attr:`Message.spooled`)."""
        properties = decode_properties(self._properties, self._shared_strings)
        body = b"".join(self._body)
        self._body = []
        self._properties = bytearray()
        self.memory = 0
        spool, self._spool = self._spool, None
        return Message(self.type, self.number, self.flags, properties, body, spool)

    def discard(self) -> None:
        """Drop what was received (the connection ended before the message did)."""
        self._body = []
        self.memory = 0
        if self._spool is not None:
            self._spool.close()
            self._spool = None
