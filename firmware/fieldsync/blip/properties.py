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
    strings = [s for pair in items for s in pair]
    if not all(isinstance(s, str) for s in strings):
        bad = next(s for s in strings if not isinstance(s, str))
        raise ValueError(f"BLIP property keys and values must be str, not {type(bad)!r}")
    if not strings:
        return b""
    text = "\0".join(strings)
    if text.count("\0") != len(strings) - 1:  # a string holds a NUL of its own
        key = next(k for k, v in zip(strings[::2], strings[1::2], strict=True) if "\0" in k + v)
        raise ValueError(f"BLIP property {key!r} contains a NUL character")
    out = (text + "\0").encode("utf-8")
    if len(out) > MAX_PROPERTIES_SIZE:
        raise ValueError(f"BLIP properties too large ({len(out)} > {MAX_PROPERTIES_SIZE} bytes)")
    return out


def decode_properties(
    data: bytes | bytearray | memoryview, shared: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Decode an encoded properties block into a dict.

    When a key repeats, the first value wins (as LiteCore's lookup does). A key or value found
    in ``shared`` is given as the string ``shared`` holds, so that the messages waiting in a
    queue share one copy of the names every message carries. Raises
    :class:`BLIPProtocolError` if the block does not end with NUL, has a key without a value
    or contains invalid UTF-8.
    """
    raw = bytes(data)
    if not raw:
        return {}
    if raw[-1] != 0:
        raise BLIPProtocolError("bad message properties: not NUL-terminated")
    try:  # one decode: a NUL byte is never part of a longer UTF-8 sequence
        strings = raw[:-1].decode("utf-8").split("\0")
    except UnicodeDecodeError as exc:
        raise BLIPProtocolError(f"bad message properties: invalid UTF-8 ({exc})") from None
    if len(strings) % 2:
        raise BLIPProtocolError("bad message properties: odd number of strings (key without value)")
    if shared:
        strings = list(map(shared.get, strings, strings))
    keys = strings[::2]
    result = dict(zip(keys, strings[1::2], strict=True))
    if len(result) != len(keys):  # a key repeats: its first value wins
        result = {}
        for key, value in zip(keys, strings[1::2], strict=True):
            result.setdefault(key, value)
    return result
