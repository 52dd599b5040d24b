"""BLIP frame header: message types, frame flags and the ``varint(number) varint(flags)`` header.

A frame is ``header + data + checksum``: the checksum (4 bytes, big-endian running CRC32 of the
uncompressed data sent so far in that direction) is present on every frame except ACKs.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from .errors import BLIPProtocolError
from .varint import decode_uvarint, encode_uvarint

__all__ = [
    "BIG_FRAME_SIZE",
    "CHECKSUM_SIZE",
    "COMPRESSED",
    "DEFAULT_FRAME_SIZE",
    "MORE_COMING",
    "NO_REPLY",
    "TYPE_MASK",
    "URGENT",
    "FrameFlags",
    "FrameHeader",
    "MessageType",
    "decode_header",
    "encode_header",
]

#: Frame size (header included) used for a normal message while an urgent one waits behind it.
DEFAULT_FRAME_SIZE = 4096
#: Maximum frame size (header included) otherwise.
BIG_FRAME_SIZE = 16384
#: Size of the CRC32 trailer of non-ACK frames.
CHECKSUM_SIZE = 4


class MessageType(enum.IntEnum):
    """The 3-bit message type held in the low bits of the frame flags."""

    MSG = 0  #: a request
    RPY = 1  #: a reply
    ERR = 2  #: an error reply
    ACKMSG = 4  #: flow-control acknowledgement of request bytes
    ACKRPY = 5  #: flow-control acknowledgement of reply bytes

    @property
    def is_ack(self) -> bool:
        return self in (MessageType.ACKMSG, MessageType.ACKRPY)

    @property
    def is_response(self) -> bool:
        return self in (MessageType.RPY, MessageType.ERR)


class FrameFlags(enum.IntFlag):
    """Frame flag bits (``TYPE_MASK`` is a 3-bit field holding a :class:`MessageType`)."""

    NONE = 0
    TYPE_MASK = 0x07
    COMPRESSED = 0x08
    URGENT = 0x10
    NO_REPLY = 0x20
    MORE_COMING = 0x40


# Plain-int copies of the flag bits, for hot paths (IntFlag arithmetic is slow).
TYPE_MASK = 0x07
COMPRESSED = 0x08
URGENT = 0x10
NO_REPLY = 0x20
MORE_COMING = 0x40

_TYPES: dict[int, MessageType] = {int(t): t for t in MessageType}


class FrameHeader(NamedTuple):
    """A decoded frame header."""

    number: int  #: message number (the request's number for replies and ACKs)
    flags: int  #: all flag bits as received (unknown high bits preserved)
    type: MessageType
    size: int  #: number of header bytes

    @property
    def more_coming(self) -> bool:
        return bool(self.flags & MORE_COMING)

    @property
    def compressed(self) -> bool:
        return bool(self.flags & COMPRESSED)


def encode_header(number: int, flags: int) -> bytes:
    """Encode a frame header: ``varint(number) varint(flags)``."""
    return encode_uvarint(number) + encode_uvarint(flags)


def decode_header(frame: bytes | bytearray | memoryview) -> FrameHeader:
    """Decode the header at the start of ``frame``.

    Raises :class:`BLIPProtocolError` for an empty frame, a bad or truncated varint, a zero
    message number or a message type BLIP does not define.
    """
    if len(frame) == 0:
        raise BLIPProtocolError("empty BLIP frame")
    number, pos = decode_uvarint(frame, 0, what="frame header (message number)")
    flags, pos = decode_uvarint(frame, pos, what="frame header (flags)")
    if number == 0:
        raise BLIPProtocolError("bad frame header: message number 0")
    type_bits = flags & TYPE_MASK
    msg_type = _TYPES.get(type_bits)
    if msg_type is None:
        raise BLIPProtocolError(f"unknown BLIP message type {type_bits} in frame #{number}")
    return FrameHeader(number, flags, msg_type, pos)
