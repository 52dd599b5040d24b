"""JSON from peers, parsed with a nesting limit.

``json.loads`` of a body nested 100,000 deep raises ``RecursionError`` (not ``ValueError``), and
a body nested ~1,000 deep parses but then breaks whatever walks it recursively later (storing,
deltas, blob lookup). :func:`loads` refuses both with :class:`JSONTooDeep`, a ``ValueError``, so
every caller that answers bad JSON with 400 answers this with 400 too. It is the one place JSON
received from the network (and bodies given to the store) is parsed.
"""

from __future__ import annotations

from typing import Any

from fieldsync import fastjson

__all__ = ["MAX_JSON_DEPTH", "JSONTooDeep", "check_depth", "loads"]

#: Deepest nesting of arrays/objects accepted (the outermost container is depth 1). Real
#: documents stay far below; the limit leaves room for code that walks bodies recursively.
MAX_JSON_DEPTH = 256


class JSONTooDeep(ValueError):
    """JSON nested deeper than the limit."""


def loads(data: bytes | bytearray | memoryview | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` that raises :class:`JSONTooDeep` for nesting beyond ``max_depth``."""
    raw = bytes(data) if isinstance(data, bytearray | memoryview) else data
    if isinstance(raw, str):
        opened = raw.count("[") + raw.count("{")
    elif isinstance(raw, bytes):
        opened = raw.count(b"[") + raw.count(b"{")
    else:
        raise TypeError(f"JSON must be str or bytes, not {type(raw).__name__}")
    try:
        value = fastjson.loads(raw)  # json.loads, faster (perf, issue 13)
    except RecursionError:
        raise JSONTooDeep(f"JSON nested deeper than {max_depth} levels") from None
    if opened > max_depth:  # only then can the nesting exceed the limit
        check_depth(value, max_depth)
    return value


def check_depth(value: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise :class:`JSONTooDeep` if ``value`` nests lists/dicts deeper than ``max_depth``
    (iteratively: a deep value cannot overflow the stack here)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if not isinstance(item, dict | list):
            continue
        if depth > max_depth:
            raise JSONTooDeep(f"JSON nested deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
