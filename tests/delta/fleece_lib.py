"""ctypes access to the real Fleece delta functions inside an externally built libLiteCore.so.

Nothing of LiteCore/Fleece lives in this repository: point ``FIELDSYNC_LITECORE_LIB`` at a
LiteCore 3.2.4 build (its bundled Fleece is the one Couchbase Lite 3.2 uses); without it the
interop tests skip. Only Fleece's public C API is called.
"""

from __future__ import annotations

import json
import os
from ctypes import (
    CDLL,
    POINTER,
    Structure,
    addressof,
    byref,
    c_int,
    c_size_t,
    c_uint32,
    c_void_p,
    create_string_buffer,
    string_at,
)
from pathlib import Path
from typing import Any

LIB_ENV = "FIELDSYNC_LITECORE_LIB"
_TRUSTED = 1  # kFLTrusted


class FLSlice(Structure):
    _fields_ = (("buf", c_void_p), ("size", c_size_t))


class FLSliceResult(Structure):
    _fields_ = (("buf", c_void_p), ("size", c_size_t))


class FleeceError(Exception):
    """A Fleece call failed; ``code`` is its FLError (3 = kFLInvalidData)."""

    def __init__(self, what: str, code: int) -> None:
        super().__init__(f"{what} failed with FLError {code}")
        self.code = code


def library_path() -> Path | None:
    """The configured libLiteCore.so, or None."""
    value = os.environ.get(LIB_ENV, "").strip()
    return Path(value) if value else None


class _Bytes:
    """Bytes pinned in a ctypes buffer, viewable as an FLSlice."""

    def __init__(self, data: bytes) -> None:
        self._buf = create_string_buffer(data, len(data))
        self.slice = FLSlice(addressof(self._buf), len(data))


class Fleece:
    """The handful of Fleece C functions the delta interop tests need."""

    def __init__(self, path: Path) -> None:
        lib = CDLL(str(path))
        self._lib = lib
        sigs: dict[str, tuple[tuple[Any, ...], Any]] = {
            "FLDoc_FromJSON": ((FLSlice, POINTER(c_int)), c_void_p),
            "FLDoc_GetRoot": ((c_void_p,), c_void_p),
            "FLDoc_Release": ((c_void_p,), None),
            "FLValue_AsArray": ((c_void_p,), c_void_p),
            "FLArray_Get": ((c_void_p, c_uint32), c_void_p),
            "FLValue_ToJSON": ((c_void_p,), FLSliceResult),
            "FLValue_FromData": ((FLSlice, c_int), c_void_p),
            "FLCreateJSONDelta": ((c_void_p, c_void_p), FLSliceResult),
            "FLApplyJSONDelta": ((c_void_p, FLSlice, POINTER(c_int)), FLSliceResult),
            "_FLBuf_Release": ((c_void_p,), None),
        }
        for name, (argtypes, restype) in sigs.items():
            fn = getattr(lib, name)
            fn.argtypes = argtypes
            fn.restype = restype

    def _take(self, result: FLSliceResult) -> bytes | None:
        if not result.buf:
            return None
        try:
            return string_at(result.buf, result.size)
        finally:
            self._lib._FLBuf_Release(result.buf)

    def create_delta(self, old: Any, new: Any) -> bytes | None:
        """``FLCreateJSONDelta(old, new)`` as JSON bytes (None if Fleece failed)."""
        with _Doc(self._lib, old) as o, _Doc(self._lib, new) as n:
            return self._take(self._lib.FLCreateJSONDelta(o.value, n.value))

    def apply_delta(self, old: Any, delta: bytes) -> Any:
        """``FLApplyJSONDelta(old, delta)``, parsed back to a Python value."""
        err = c_int(0)
        pinned = _Bytes(delta)
        with _Doc(self._lib, old) as o:
            data = self._take(self._lib.FLApplyJSONDelta(o.value, pinned.slice, byref(err)))
        if data is None:
            raise FleeceError("FLApplyJSONDelta", err.value)
        encoded = _Bytes(data)
        value = self._lib.FLValue_FromData(encoded.slice, _TRUSTED)
        if not value:
            raise FleeceError("FLValue_FromData", -1)
        text = self._take(self._lib.FLValue_ToJSON(value))
        assert text is not None
        # A buggy string delta can leave invalid UTF-8 behind; keep it visible, don't crash.
        return json.loads(text.decode("utf-8", "surrogateescape"))


class _Doc:
    """A Fleece document holding ``[value]`` (so scalars work too); ``.value`` is the item."""

    def __init__(self, lib: CDLL, value: Any) -> None:
        self._lib = lib
        self._json = _Bytes(json.dumps([value], ensure_ascii=False).encode("utf-8"))
        self._doc: int | None = None
        self.value: int | None = None

    def __enter__(self) -> _Doc:
        err = c_int(0)
        doc = self._lib.FLDoc_FromJSON(self._json.slice, byref(err))
        if not doc:
            raise FleeceError("FLDoc_FromJSON", err.value)
        self._doc = doc
        root = self._lib.FLValue_AsArray(self._lib.FLDoc_GetRoot(doc))
        self.value = self._lib.FLArray_Get(root, 0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._doc:
            self._lib.FLDoc_Release(self._doc)
