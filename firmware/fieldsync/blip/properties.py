"""BLIP message properties: NUL-terminated UTF-8 key/value strings."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .errors import BLIPProtocolError

__all__ = ["MAX_PROPERTIES_SIZE", "decode_properties", "encode_properties"]

#: Largest encoded properties block accepted or produced (LiteCore's kMaxPropertiesSize).
MAX_PROPERTIES_SIZE = 100 * 1024


def encode_properties(properties: Mapping[str, str] | Iterable[tuple[str, str]]) -> bytes:
    """Encode properties, in order, as ``key\\0value\\0...`` (no length prefix).

    Raises ``ValueError`` for a key or value that is not a string, contains a NUL, or when the
    encoded block exceeds :data:`MAX_PROPERTIES_SIZE`.
    """
    items = properties.items() if isinstance(properties, Mapping) else properties
    out = bytearray()
    for key, value in items:
        for s in (key, value):
            if not isinstance(s, str):
                raise ValueError(f"BLIP property keys and values must be str, not {type(s)!r}")
            if "\0" in s:
                raise ValueError(f"BLIP property {key!r} contains a NUL character")
            out += s.encode("utf-8")
            out.append(0)
    if len(out) > MAX_PROPERTIES_SIZE:
        raise ValueError(f"BLIP properties too large ({len(out)} > {MAX_PROPERTIES_SIZE} bytes)")
    return bytes(out)


def decode_properties(data: bytes | bytearray | memoryview) -> dict[str, str]:
    """Decode an encoded properties block into a dict.

    When a key repeats, the first value wins (as LiteCore's lookup does). Raises
    :class:`BLIPProtocolError` if the block does not end with NUL, has a key without a value
    or contains invalid UTF-8.
    """
    raw = bytes(data)
    if not raw:
        return {}
    if raw[-1] != 0:
        raise BLIPProtocolError("bad message properties: not NUL-terminated")
    parts = raw[:-1].split(b"\0")
    if len(parts) % 2:
        raise BLIPProtocolError("bad message properties: odd number of strings (key without value)")
    try:
        strings = [p.decode("utf-8") for p in parts]
    except UnicodeDecodeError as exc:
        raise BLIPProtocolError(f"bad message properties: invalid UTF-8 ({exc})") from None
    result: dict[str, str] = {}
    for i in range(0, len(strings), 2):
        result.setdefault(strings[i], strings[i + 1])
    return result
