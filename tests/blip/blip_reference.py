"""An independent, deliberately naive BLIP frame encoder/decoder written from the spec.

Used by the tests to check the codec against a second implementation instead of against itself.
"""

from __future__ import annotations

import base64
import hashlib
import zlib

TRAILER = b"\x00\x00\xff\xff"


def varint(n: int) -> bytes:
    out = b""
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out += bytes([byte | 0x80])
        else:
            return out + bytes([byte])


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, pos


def props_block(pairs: list[tuple[str, str]]) -> bytes:
    raw = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in pairs)
    return varint(len(raw)) + raw


class RefSender:
    """Writes frames the way the spec's section 3.5 summary describes."""

    def __init__(self) -> None:
        self.crc = 0
        self.deflater = zlib.compressobj(6, zlib.DEFLATED, -15)

    def frame(self, number: int, flags: int, data: bytes) -> bytes:
        self.crc = zlib.crc32(data, self.crc)
        if flags & 0x08:
            body = self.deflater.compress(data) + self.deflater.flush(zlib.Z_SYNC_FLUSH)
            assert body.endswith(TRAILER)
            body = body[:-4]
        else:
            body = data
        return varint(number) + varint(flags) + body + self.crc.to_bytes(4, "big")


class RefReceiver:
    """Reads frames; returns (number, flags, uncompressed data); asserts the running CRC."""

    def __init__(self) -> None:
        self.crc = 0
        self.inflater = zlib.decompressobj(-15)

    def frame(self, frame: bytes) -> tuple[int, int, bytes]:
        number, pos = read_varint(frame, 0)
        flags, pos = read_varint(frame, pos)
        if flags & 0x07 in (4, 5):
            return number, flags, frame[pos:]
        body, crc = frame[pos:-4], int.from_bytes(frame[-4:], "big")
        data = self.inflater.decompress(body + TRAILER) if flags & 0x08 else body
        self.crc = zlib.crc32(data, self.crc)
        assert crc == self.crc, "checksum mismatch"
        return number, flags, data


def split_message(data: bytes) -> tuple[dict[str, str], bytes]:
    """Split a message's reassembled data into (properties, body)."""
    size, pos = read_varint(data, 0)
    raw = data[pos : pos + size]
    strings = raw.split(b"\0")[:-1] if raw else []
    props = {strings[i].decode(): strings[i + 1].decode() for i in range(0, len(strings), 2)}
    return props, data[pos + size :]


# Frame 1 of a push as observed from LiteCore 3.2.4 (PROTOCOL-NOTES.md), with a 28-character
# base64 client ID so that the properties are 0x3d bytes long.
CLIENT_ID = "cp-" + base64.b64encode(hashlib.sha1(b"fieldsync test").digest()).decode()


def golden_frame1() -> tuple[bytes, bytes]:
    """Frame 1 of a push, built by hand from the spec: returns (frame, uncompressed data)."""
    assert len(CLIENT_ID) == 3 + 28
    props = b"Profile\0getCheckpoint\0client\0" + CLIENT_ID.encode() + b"\0"
    assert len(props) == 0x3D
    data = b"\x3d" + props  # properties length varint + properties, empty body
    crc = zlib.crc32(data)  # first frame in this direction: CRC starts from 0
    return b"\x01\x00" + data + crc.to_bytes(4, "big"), data
