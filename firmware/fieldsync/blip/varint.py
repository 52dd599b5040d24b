"""Unsigned LEB128 varints, as used by BLIP frame headers, property lengths and ACK bodies."""

from __future__ import annotations

from .errors import BLIPProtocolError

__all__ = ["MAX_VARINT_LEN64", "decode_uvarint", "encode_uvarint"]

#: Longest encoding of a 64-bit value.
MAX_VARINT_LEN64 = 10

_SINGLE_BYTES = [bytes((i,)) for i in range(0x80)]


def encode_uvarint(value: int) -> bytes:
    """Encode a non-negative integer below 2**64 as an unsigned LEB128 varint."""
    if 0 <= value < 0x80:
        return _SINGLE_BYTES[value]
    if value < 0 or value >= 1 << 64:
        raise ValueError(f"varint value out of range: {value}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_uvarint(
    data: bytes | bytearray | memoryview, pos: int = 0, *, bits: int = 64, what: str = "varint"
) -> tuple[int, int]:
    """Decode a varint from ``data`` at ``pos``; return ``(value, position after it)``.

    Raises :class:`BLIPProtocolError` if the data ends inside the varint, if the encoding is
    longer than a ``bits``-bit value allows or if the value does not fit in ``bits`` bits.
    ``what`` names the field in the error message.
    """
    if pos < len(data) and data[pos] < 0x80:  # fast path: one-byte varint
        return data[pos], pos + 1
    result = 0
    shift = 0
    end = len(data)
    max_len = (bits + 6) // 7
    for i in range(max_len):
        if pos + i >= end:
            raise BLIPProtocolError(f"truncated {what}: data ends inside the varint")
        byte = data[pos + i]
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if result >= 1 << bits:
                raise BLIPProtocolError(f"bad {what}: value exceeds {bits} bits")
            return result, pos + i + 1
        shift += 7
    raise BLIPProtocolError(f"bad {what}: varint longer than {max_len} bytes")
