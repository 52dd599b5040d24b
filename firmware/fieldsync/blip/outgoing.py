"""An outgoing BLIP message being cut into frames, with its ACK flow-control accounting."""

from __future__ import annotations

from .compression import SYNC_FLUSH_TRAILER, Deflater, deflate_bound
from .frame import (
    CHECKSUM_SIZE,
    COMPRESSED,
    MORE_COMING,
    NO_REPLY,
    TYPE_MASK,
    URGENT,
    MessageType,
)
from .varint import encode_uvarint

__all__ = ["MAX_UNACKED_BYTES", "OutgoingMessage"]

#: A message stops sending while this many of its frame bytes are unacknowledged
#: (LiteCore's MessageOut::kMaxUnackedBytes).
MAX_UNACKED_BYTES = 128_000

# A compressed frame keeps taking more input while at least this much room is left.
_MIN_ROOM_FOR_MORE_INPUT = 1024

Buffer = bytes | bytearray | memoryview


class OutgoingMessage:
    """The encoded data of one outgoing message (request, reply or ACK) and its send state.

    The data is ``varint(len(properties)) properties body`` for requests and replies, or just the
    ACK's varint byte count for ACKs. The body is read through a memoryview, never copied whole.
    ``bytes_sent`` / ``unacked_bytes`` count frame bytes after the header (data plus checksum),
    the quantity the receiver acknowledges.
    """

    __slots__ = (
        "_segments",
        "bytes_sent",
        "bytes_unsent",
        "flags",
        "number",
        "type",
        "unacked_bytes",
    )

    def __init__(self, msg_type: MessageType, number: int, flags: int, data: list[Buffer]) -> None:
        self.type = msg_type
        self.number = number
        self.flags = (int(flags) & ~(TYPE_MASK | MORE_COMING)) | int(msg_type)
        self._segments = [memoryview(d).cast("B") for d in data if len(d)]
        #: Bytes of data not yet cut into frames.
        self.bytes_unsent = sum(len(seg) for seg in self._segments)
        self.bytes_sent = 0
        self.unacked_bytes = 0

    @classmethod
    def build(
        cls, msg_type: MessageType, number: int, flags: int, properties: bytes, body: Buffer
    ) -> OutgoingMessage:
        """A request or reply: ``properties`` is the encoded block (without its length)."""
        prefix = encode_uvarint(len(properties)) + properties
        return cls(msg_type, number, flags, [prefix, body])

    @classmethod
    def ack(cls, acked_type: MessageType, number: int, byte_count: int) -> OutgoingMessage:
        """An ACK of ``byte_count`` frame bytes received of the peer's message ``number``."""
        ack_type = MessageType.ACKRPY if acked_type.is_response else MessageType.ACKMSG
        flags = URGENT | NO_REPLY
        return cls(ack_type, number, flags, [encode_uvarint(byte_count)])

    @property
    def urgent(self) -> bool:
        return bool(self.flags & URGENT)

    @property
    def no_reply(self) -> bool:
        return bool(self.flags & NO_REPLY)

    @property
    def is_ack(self) -> bool:
        return self.type >= MessageType.ACKMSG

    @property
    def is_response(self) -> bool:
        return self.type == MessageType.RPY or self.type == MessageType.ERR

    @property
    def is_new(self) -> bool:
        """No frame of this message has been sent yet."""
        return self.bytes_sent == 0

    @property
    def has_more_data(self) -> bool:
        return bool(self._segments)

    @property
    def needs_ack(self) -> bool:
        """Too many bytes are unacknowledged: wait for an ACK before sending more."""
        return self.unacked_bytes >= MAX_UNACKED_BYTES

    def received_ack(self, byte_count: int) -> None:
        """The peer acknowledged ``byte_count`` bytes of this message."""
        if byte_count <= self.bytes_sent:
            self.unacked_bytes = min(self.unacked_bytes, self.bytes_sent - byte_count)

    def _take(self, limit: int) -> list[memoryview]:
        """Remove and return up to ``limit`` bytes of unsent data (as views, no copy)."""
        pieces: list[memoryview] = []
        segments = self._segments
        while limit > 0 and segments:
            seg = segments[0]
            if len(seg) <= limit:
                pieces.append(seg)
                limit -= len(seg)
                segments.pop(0)
            else:
                pieces.append(seg[:limit])
                segments[0] = seg[limit:]
                limit = 0
        self.bytes_unsent -= sum(len(piece) for piece in pieces)
        return pieces

    def next_frame(self, codec: Deflater, max_size: int) -> bytes:
        """Build this message's next frame, of at most ``max_size`` bytes (header included).

        Non-ACK data goes through ``codec`` (CRC, and deflate if the message is compressed); the
        MoreComing flag is set when data remains afterwards.
        """
        number_bytes = encode_uvarint(self.number)
        header_size = len(number_bytes) + 1  # flags always fit in one byte (< 0x80)
        parts: list[Buffer]
        if self.is_ack:
            parts = list(self._take(1 << 62))
        else:
            room = max_size - header_size - CHECKSUM_SIZE
            if self.flags & COMPRESSED:
                parts = self._deflate_into(codec, room)
            else:
                parts = list(self._take(room))
                for piece in parts:
                    codec.add_uncompressed(piece)
            parts.append(codec.checksum_bytes())
        flags = self.flags | (MORE_COMING if self._segments else 0)
        frame = b"".join([number_bytes, bytes((flags,)), *parts])
        sent = len(frame) - header_size
        self.bytes_sent += sent
        self.unacked_bytes += sent
        return frame

    def _deflate_into(self, codec: Deflater, room: int) -> list[Buffer]:
        """Deflate as much data as fits in ``room`` bytes, minus the final sync-flush trailer."""
        out: list[Buffer] = []
        used = 0
        while self._segments:
            left = room - used
            n = max(0, (left - 32) * 64 // 73)
            while n > 0 and deflate_bound(n) > left:
                n -= 1
            if n == 0:
                break
            pieces = self._take(n)
            chunk = codec.deflate(pieces[0] if len(pieces) == 1 else b"".join(pieces))
            out.append(chunk)
            used += len(chunk)
            if room - used < _MIN_ROOM_FOR_MORE_INPUT:
                break
        last = out[-1]
        assert last[-4:] == SYNC_FLUSH_TRAILER
        out[-1] = memoryview(last)[:-4]
        return out

    def __repr__(self) -> str:
        return (
            f"<OutgoingMessage {self.type.name} #{self.number} flags=0x{self.flags:02x} "
            f"sent={self.bytes_sent} unacked={self.unacked_bytes}>"
        )
