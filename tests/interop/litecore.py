"""A small ctypes wrapper over an externally built LiteCore (the engine inside Couchbase Lite).

Nothing of LiteCore lives in this repository: this module only *loads* a ``libLiteCore.so`` built
elsewhere (see ``FIELDSYNC_LITECORE_LIB``, and ``FIELDSYNC_LITECORE41_LIB`` for 4.1) and calls
its public C API (``c4*.h``), so interop tests can drive a real Couchbase Lite replicator against
fieldsync's listener.

Entry point: ``LiteCore(lib_path)``; then ``open_db`` -> ``LiteDatabase`` -> ``replicator`` ->
``LiteReplicator``. Errors from LiteCore raise ``LiteCoreError`` with its domain, code and message.

Both LiteCore 3.2 and 4.1 load through the same classes: the C structures this module uses have
the same layout in both, and the one signature that differs (``c4repl_getResponseHeaders``
returns an owned slice in 4.x) is declared per version. ``LiteCore.major`` tells them apart.
A 4.x library can open a **version-vector** database (``open_db(..., version_vectors=True)``);
its replicator then offers only ``BLIP_3+CBMobile_4``. Two libraries (3.2 and 4.1) can be loaded
into one process: ctypes loads each with ``RTLD_LOCAL`` and LiteCore exports only its C API.

``CblTools`` runs the ``cblpeer``/``cblpassive`` command-line tools built next to a library
(``<prefix>/bin`` beside ``<prefix>/lib/libLiteCore.so``) as subprocesses: a phone or LiteCore's
own passive peer in another process.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import re
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    byref,
    c_bool,
    c_char_p,
    c_double,
    c_int,
    c_int8,
    c_int32,
    c_int64,
    c_size_t,
    c_uint,
    c_uint8,
    c_uint16,
    c_uint32,
    c_uint64,
    c_void_p,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_COLLECTION = "_default._default"
# How long wait() lets LiteCore's status callback catch up with c4repl_getStatus (seconds).
CALLBACK_GRACE = 2.0

# -- C structures (layouts from LiteCore 3.2's C/include and vendor/fleece/API) -------------------


class FLSlice(Structure):
    _fields_ = (("buf", c_void_p), ("size", c_size_t))


class FLSliceResult(Structure):
    """An owned slice; release with ``_FLBuf_Release(buf)``."""

    _fields_ = (("buf", c_void_p), ("size", c_size_t))


class C4Error(Structure):
    _fields_ = (("domain", c_uint8), ("code", c_int), ("internal_info", c_uint))


class C4CollectionSpec(Structure):
    _fields_ = (("name", FLSlice), ("scope", FLSlice))


class C4DatabaseConfig2(Structure):
    _fields_ = (
        ("parentDirectory", FLSlice),
        ("flags", c_uint32),
        ("encryptionAlgorithm", c_uint32),
        ("encryptionKey", c_uint8 * 32),
    )


class C4Revision(Structure):
    _fields_ = (("revID", FLSlice), ("flags", c_uint8), ("sequence", c_uint64))


class C4ExtraInfo(Structure):
    _fields_ = (("pointer", c_void_p), ("destructor", c_void_p))


class C4Document(Structure):
    _fields_ = (
        ("_internal1", c_void_p),
        ("_internal2", c_void_p),
        ("flags", c_uint32),
        ("docID", FLSlice),
        ("revID", FLSlice),
        ("sequence", c_uint64),
        ("selectedRev", C4Revision),
        ("extraInfo", C4ExtraInfo),
    )


class C4EnumeratorOptions(Structure):
    _fields_ = (("flags", c_uint16),)


class C4BlobKey(Structure):
    _fields_ = (("bytes", c_uint8 * 20),)


class C4Address(Structure):
    _fields_ = (
        ("scheme", FLSlice),
        ("hostname", FLSlice),
        ("port", c_uint16),
        ("path", FLSlice),
    )


class C4Progress(Structure):
    _fields_ = (
        ("unitsCompleted", c_uint64),
        ("unitsTotal", c_uint64),
        ("documentCount", c_uint64),
    )


class C4ReplicatorStatus(Structure):
    _fields_ = (
        ("level", c_int32),
        ("progress", C4Progress),
        ("error", C4Error),
        ("flags", c_int32),
    )


class C4DocumentEnded(Structure):
    _fields_ = (
        ("collectionSpec", C4CollectionSpec),
        ("docID", FLSlice),
        ("revID", FLSlice),
        ("flags", c_uint8),
        ("sequence", c_uint64),
        ("error", C4Error),
        ("errorIsTransient", c_bool),
        ("collectionContext", c_void_p),
    )


class C4ReplicationCollection(Structure):
    _fields_ = (
        ("collection", C4CollectionSpec),
        ("push", c_int32),
        ("pull", c_int32),
        ("optionsDictFleece", FLSlice),
        ("pushFilter", c_void_p),
        ("pullFilter", c_void_p),
        ("callbackContext", c_void_p),
    )


StatusChangedCallback = CFUNCTYPE(None, c_void_p, C4ReplicatorStatus, c_void_p)
DocumentsEndedCallback = CFUNCTYPE(
    None, c_void_p, c_bool, c_size_t, POINTER(POINTER(C4DocumentEnded)), c_void_p
)
LogCallback = CFUNCTYPE(None, c_void_p, c_int8, c_char_p, c_void_p)


class C4ReplicatorParameters(Structure):
    _fields_ = (
        ("optionsDictFleece", FLSlice),
        ("onStatusChanged", StatusChangedCallback),
        ("onDocumentsEnded", DocumentsEndedCallback),
        ("onBlobProgress", c_void_p),
        ("propertyEncryptor", c_void_p),
        ("propertyDecryptor", c_void_p),
        ("callbackContext", c_void_p),
        ("socketFactory", c_void_p),
        ("collections", POINTER(C4ReplicationCollection)),
        ("collectionCount", c_size_t),
    )


# -- constants -------------------------------------------------------------------------------------

kC4DB_Create = 0x01
kC4DB_VersionVectors = 0x08  # LiteCore 4.x: the database uses version vectors (CBMobile_4)
kDocDeleted, kDocConflicted, kDocHasAttachments, kDocExists = 0x01, 0x02, 0x04, 0x1000
kRevDeleted, kRevLeaf, kRevHasAttachments, kRevIsConflict = 0x01, 0x02, 0x08, 0x20
kDocGetCurrentRev, kDocGetAll = 1, 2
kC4IncludeDeleted, kC4IncludeNonConflicted, kC4IncludeBodies = 0x08, 0x10, 0x20
kC4Disabled, kC4Passive, kC4OneShot, kC4Continuous = 0, 1, 2, 3
kC4ReplProgressPerDocument = 1
LITECORE_DOMAIN, POSIX_DOMAIN, NETWORK_DOMAIN, WEBSOCKET_DOMAIN = 1, 2, 5, 6
kC4ErrorNotFound = 7

ERROR_DOMAINS = {
    1: "LiteCore",
    2: "POSIX",
    3: "SQLite",
    4: "Fleece",
    5: "Network",
    6: "WebSocket",
    7: "MbedTLS",
}
ACTIVITY_LEVELS = ("stopped", "offline", "connecting", "idle", "busy", "stopping")
LOG_LEVELS = {"debug": 0, "verbose": 1, "info": 2, "warning": 3, "error": 4, "none": 5}
# Log domains LiteCore 3.2 registers; set together so one level applies everywhere.
LOG_DOMAINS = (
    "",
    "DB",
    "Query",
    "Sync",
    "SyncBusy",
    "WS",
    "BLIP",
    "BLIPMessages",
    "TLS",
    "Changes",
    "Zip",
    "Actor",
    "Blob",
    "Enum",
    "Listener",
)


class LiteCoreError(RuntimeError):
    """A LiteCore call failed; ``domain``/``code`` are LiteCore's C4Error fields."""

    def __init__(self, what: str, domain: int, code: int, message: str) -> None:
        self.domain = domain
        self.domain_name = ERROR_DOMAINS.get(domain, str(domain))
        self.code = code
        self.message = message
        super().__init__(f"{what}: {self.domain_name} error {code}: {message}")


@dataclass(frozen=True)
class ReplicatorError:
    """The error part of a replicator status (``code == 0`` means none)."""

    domain: int
    code: int
    message: str

    @property
    def domain_name(self) -> str:
        return ERROR_DOMAINS.get(self.domain, str(self.domain))

    def __bool__(self) -> bool:
        return self.code != 0


@dataclass(frozen=True)
class ReplicatorStatus:
    """A snapshot of ``c4repl_getStatus``."""

    level: str
    units_completed: int
    units_total: int
    document_count: int
    error: ReplicatorError
    flags: int


@dataclass(frozen=True)
class DocumentEnded:
    """One document the replicator finished (successfully or not)."""

    pushing: bool
    collection: str
    doc_id: str
    rev_id: str
    flags: int
    error: ReplicatorError
    transient: bool

    @property
    def deleted(self) -> bool:
        return bool(self.flags & kRevDeleted)


def _slice(data: bytes | None) -> FLSlice:
    if not data:
        return FLSlice(None, 0)
    return FLSlice(ctypes.cast(c_char_p(data), c_void_p), len(data))


def _bytes(s: FLSlice | FLSliceResult) -> bytes:
    if not s.buf or not s.size:
        return b""
    return ctypes.string_at(s.buf, s.size)


def _split_collection(full_name: str) -> tuple[str, str]:
    """``"scope.name"`` or ``"name"`` -> (scope, name)."""
    if "." in full_name:
        scope, name = full_name.split(".", 1)
        return scope, name
    return "_default", full_name


def _contains_blob(value: Any) -> bool:
    if isinstance(value, Mapping):
        if value.get("@type") == "blob":
            return True
        return any(_contains_blob(v) for v in value.values())
    if isinstance(value, list):
        return any(_contains_blob(v) for v in value)
    return False


def _to_der(cert: bytes | str) -> bytes:
    """A certificate as DER bytes, accepting PEM (str or bytes) or DER."""
    if isinstance(cert, str):
        cert = cert.encode()
    if cert.lstrip().startswith(b"-----BEGIN"):
        return ssl.PEM_cert_to_DER_cert(cert.decode())
    return cert


def _as_bytes(data: bytes | str) -> bytes:
    return data.encode() if isinstance(data, str) else data


def _key_data(key: bytes | str) -> bytes:
    """A private key for ``clientCertKey``: DER as is, PEM with the NUL byte mbedTLS needs.

    LiteCore hands this slice straight to ``mbedtls_pk_parse_key``, which only takes PEM when
    the terminating NUL is counted in the length ("PK - Invalid key tag or value" otherwise).
    """
    data = _as_bytes(key)
    if data.lstrip().startswith(b"-----BEGIN") and not data.endswith(b"\0"):
        data += b"\0"
    return data


# -- the library -----------------------------------------------------------------------------------


def _declare(lib: ctypes.CDLL) -> None:
    """Set argtypes/restype for every function the wrapper calls."""
    e = POINTER(C4Error)
    sig: dict[str, tuple[Any, list[Any]]] = {
        "c4_getVersion": (FLSliceResult, []),
        "c4_getBuildInfo": (FLSliceResult, []),
        "_FLBuf_Release": (None, [c_void_p]),
        "c4base_release": (None, [c_void_p]),
        "c4error_getMessage": (FLSliceResult, [C4Error]),
        "c4db_openNamed": (c_void_p, [FLSlice, POINTER(C4DatabaseConfig2), e]),
        "c4db_close": (c_bool, [c_void_p, e]),
        "c4db_beginTransaction": (c_bool, [c_void_p, e]),
        "c4db_endTransaction": (c_bool, [c_void_p, c_bool, e]),
        "c4db_getDefaultCollection": (c_void_p, [c_void_p, e]),
        "c4db_getCollection": (c_void_p, [c_void_p, C4CollectionSpec, e]),
        "c4db_createCollection": (c_void_p, [c_void_p, C4CollectionSpec, e]),
        "c4db_encodeJSON": (FLSliceResult, [c_void_p, FLSlice, e]),
        "c4db_getBlobStore": (c_void_p, [c_void_p, e]),
        "c4coll_getDoc": (POINTER(C4Document), [c_void_p, FLSlice, c_bool, c_uint8, e]),
        "c4coll_createDoc": (POINTER(C4Document), [c_void_p, FLSlice, FLSlice, c_uint8, e]),
        "c4coll_purgeDoc": (c_bool, [c_void_p, FLSlice, e]),
        "c4coll_getDocumentCount": (c_uint64, [c_void_p]),
        "c4coll_enumerateAllDocs": (c_void_p, [c_void_p, POINTER(C4EnumeratorOptions), e]),
        "c4enum_next": (c_bool, [c_void_p, e]),
        "c4enum_getDocument": (POINTER(C4Document), [c_void_p, e]),
        "c4enum_free": (None, [c_void_p]),
        "c4doc_update": (POINTER(C4Document), [POINTER(C4Document), FLSlice, c_uint8, e]),
        "c4doc_release": (None, [POINTER(C4Document)]),
        "c4doc_bodyAsJSON": (FLSliceResult, [POINTER(C4Document), c_bool, e]),
        "c4doc_getRevisionHistory": (
            FLSliceResult,
            [POINTER(C4Document), c_uint, c_void_p, c_uint],
        ),
        "c4doc_selectNextLeafRevision": (c_bool, [POINTER(C4Document), c_bool, c_bool, e]),
        "c4doc_selectCurrentRevision": (c_bool, [POINTER(C4Document)]),
        "c4doc_getRevisionBody": (FLSlice, [POINTER(C4Document)]),
        "c4doc_getSelectedRevIDGlobalForm": (FLSliceResult, [POINTER(C4Document)]),
        "c4doc_resolveConflict": (
            c_bool,
            [POINTER(C4Document), FLSlice, FLSlice, FLSlice, c_uint8, e],
        ),
        "c4doc_save": (c_bool, [POINTER(C4Document), c_uint32, e]),
        "c4blob_create": (c_bool, [c_void_p, FLSlice, c_void_p, POINTER(C4BlobKey), e]),
        "c4blob_keyToString": (FLSliceResult, [C4BlobKey]),
        "c4blob_keyFromString": (c_bool, [FLSlice, POINTER(C4BlobKey)]),
        "c4blob_getContents": (FLSliceResult, [c_void_p, C4BlobKey, e]),
        "c4address_fromURL": (c_bool, [FLSlice, POINTER(C4Address), POINTER(FLSlice)]),
        "c4repl_new": (
            c_void_p,
            [c_void_p, C4Address, FLSlice, C4ReplicatorParameters, FLSlice, e],
        ),
        "c4repl_start": (None, [c_void_p, c_bool]),
        "c4repl_stop": (None, [c_void_p]),
        "c4repl_free": (None, [c_void_p]),
        "c4repl_getStatus": (C4ReplicatorStatus, [c_void_p]),
        "c4repl_setProgressLevel": (c_bool, [c_void_p, c_int32, e]),
        "c4log_writeToCallback": (None, [c_int8, LogCallback, c_bool]),
        "c4log_setCallbackLevel": (None, [c_int8]),
        "c4log_getDomain": (c_void_p, [c_char_p, c_bool]),
        "c4log_getDomainName": (c_char_p, [c_void_p]),
        "c4log_setLevel": (None, [c_void_p, c_int8]),
        "FLEncoder_New": (c_void_p, []),
        "FLEncoder_Free": (None, [c_void_p]),
        "FLEncoder_WriteNull": (c_bool, [c_void_p]),
        "FLEncoder_WriteBool": (c_bool, [c_void_p, c_bool]),
        "FLEncoder_WriteInt": (c_bool, [c_void_p, c_int64]),
        "FLEncoder_WriteDouble": (c_bool, [c_void_p, c_double]),
        "FLEncoder_WriteString": (c_bool, [c_void_p, FLSlice]),
        "FLEncoder_WriteData": (c_bool, [c_void_p, FLSlice]),
        "FLEncoder_BeginArray": (c_bool, [c_void_p, c_size_t]),
        "FLEncoder_EndArray": (c_bool, [c_void_p]),
        "FLEncoder_BeginDict": (c_bool, [c_void_p, c_size_t]),
        "FLEncoder_WriteKey": (c_bool, [c_void_p, FLSlice]),
        "FLEncoder_EndDict": (c_bool, [c_void_p]),
        "FLEncoder_Finish": (FLSliceResult, [c_void_p, POINTER(c_int)]),
    }
    for name, (restype, argtypes) in sig.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


_VERSION = re.compile(r"^(\d+)\.(\d+)")


class LiteCore:
    """A loaded ``libLiteCore.so``. One instance per library per process (logging is global)."""

    def __init__(self, lib_path: str | os.PathLike[str]) -> None:
        path = Path(lib_path)
        if not path.is_file():
            raise FileNotFoundError(f"LiteCore library not found: {path}")
        self.path = path
        # RTLD_LOCAL: a second LiteCore (another version) in the same process keeps its own
        # symbols; each CDLL object calls into its own copy.
        self.lib = ctypes.CDLL(str(path), mode=os.RTLD_LOCAL | os.RTLD_NOW)
        _declare(self.lib)
        match = _VERSION.match(self.version)
        if match is None:
            raise LiteCoreError("c4_getVersion", LITECORE_DOMAIN, 0, f"odd version {self.version}")
        self.major, self.minor = int(match.group(1)), int(match.group(2))
        # LiteCore 4.x returns the response headers as an owned slice (3.x: a borrowed one).
        headers = self.lib.c4repl_getResponseHeaders
        headers.restype = FLSliceResult if self.major >= 4 else FLSlice
        headers.argtypes = [c_void_p]
        # Couchbase Lite registers LiteCore's built-in WebSocket client at startup; so do we.
        # (Needs a library that includes LiteCoreWebSocket and exports this symbol.)
        self.has_websocket = hasattr(self.lib, "C4RegisterBuiltInWebSocket")
        if self.has_websocket:
            self.lib.C4RegisterBuiltInWebSocket.restype = None
            self.lib.C4RegisterBuiltInWebSocket.argtypes = []
            self.lib.C4RegisterBuiltInWebSocket()
        self._log_callback: Any = None
        self._log_file: Any = None
        self._log_lock = threading.Lock()

    # helpers shared by the other classes
    def take(self, result: FLSliceResult) -> bytes:
        """Copy an owned FLSliceResult into bytes and release it."""
        try:
            return _bytes(result)
        finally:
            if result.buf:
                self.lib._FLBuf_Release(result.buf)

    def error_message(self, err: C4Error) -> str:
        return self.take(self.lib.c4error_getMessage(err)).decode(errors="replace")

    def raise_error(self, what: str, err: C4Error) -> None:
        raise LiteCoreError(what, err.domain, err.code, self.error_message(err))

    @property
    def version(self) -> str:
        """LiteCore's version string, e.g. ``"3.2.4 (0)"`` or ``"4.1.0 (1)"``."""
        return self.take(self.lib.c4_getVersion()).decode()

    @property
    def supports_version_vectors(self) -> bool:
        """True for LiteCore 4.x, whose replicator speaks CBMobile_4 for a VV database."""
        return self.major >= 4

    @property
    def tools(self) -> CblTools:
        """``cblpeer``/``cblpassive`` built against this library (may not exist: ``.available``)."""
        return CblTools.beside(self.path)

    @property
    def build_info(self) -> str:
        return self.take(self.lib.c4_getBuildInfo()).decode()

    def encode_fleece(self, value: Any) -> bytes:
        """Encode a Python value (dict/list/str/bytes/int/float/bool/None) as Fleece."""
        lib = self.lib
        enc = lib.FLEncoder_New()
        keep: list[bytes] = []

        def write(v: Any) -> None:
            if v is None:
                lib.FLEncoder_WriteNull(enc)
            elif isinstance(v, bool):
                lib.FLEncoder_WriteBool(enc, v)
            elif isinstance(v, int):
                lib.FLEncoder_WriteInt(enc, v)
            elif isinstance(v, float):
                lib.FLEncoder_WriteDouble(enc, v)
            elif isinstance(v, str):
                b = v.encode()
                keep.append(b)
                lib.FLEncoder_WriteString(enc, _slice(b))
            elif isinstance(v, bytes | bytearray):
                b = bytes(v)
                keep.append(b)
                lib.FLEncoder_WriteData(enc, _slice(b))
            elif isinstance(v, Mapping):
                lib.FLEncoder_BeginDict(enc, len(v))
                for k, item in v.items():
                    kb = str(k).encode()
                    keep.append(kb)
                    lib.FLEncoder_WriteKey(enc, _slice(kb))
                    write(item)
                lib.FLEncoder_EndDict(enc)
            elif isinstance(v, list | tuple):
                lib.FLEncoder_BeginArray(enc, len(v))
                for item in v:
                    write(item)
                lib.FLEncoder_EndArray(enc)
            else:
                raise TypeError(f"cannot encode {type(v).__name__} as Fleece")

        try:
            write(value)
            code = c_int(0)
            data = self.take(lib.FLEncoder_Finish(enc, byref(code)))
            if code.value:
                raise LiteCoreError("FLEncoder_Finish", 4, code.value, "Fleece encoding failed")
            return data
        finally:
            lib.FLEncoder_Free(enc)

    def enable_log(
        self,
        level: str = "info",
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        """Send LiteCore's log (all domains) at ``level`` or above to ``path`` (or stderr).

        Levels: debug (debug builds only), verbose, info, warning, error, none.
        """
        lvl = LOG_LEVELS[level]
        with self._log_lock:
            if self._log_file is not None and self._log_file is not _STDERR:
                self._log_file.close()
            self._log_file = open(path, "a", buffering=1) if path else _STDERR  # noqa: SIM115
        lib = self.lib

        def on_log(domain: int | None, log_level: int, message: bytes | None, _args: Any) -> None:
            name = lib.c4log_getDomainName(domain) if domain else b""
            text = (message or b"").decode(errors="replace").rstrip("\n")
            names = ("debug", "verbose", "info", "warning", "error")
            tag = names[log_level] if 0 <= log_level < len(names) else str(log_level)
            stamp = time.strftime("%H:%M:%S") + f".{int(time.time() * 1000) % 1000:03d}"
            with self._log_lock:
                out = self._log_file
                if out is None:
                    return
                out.write(f"{stamp} {(name or b'').decode()}|{tag}: {text}\n")

        self._log_callback = LogCallback(on_log)  # keep alive: LiteCore holds the pointer
        lib.c4log_writeToCallback(lvl, self._log_callback, True)
        lib.c4log_setCallbackLevel(lvl)
        for name in LOG_DOMAINS:
            domain = lib.c4log_getDomain(name.encode() if name else None, False)
            if domain:
                lib.c4log_setLevel(domain, lvl)

    def open_db(
        self, directory: str | os.PathLike[str], name: str, *, version_vectors: bool = False
    ) -> LiteDatabase:
        """Open (creating if needed) ``<directory>/<name>.cblite2``.

        ``version_vectors``: open it as Couchbase Lite 4.x does (``kC4DB_VersionVectors``; an
        existing rev-tree database is upgraded). Needs LiteCore 4.x.
        """
        if version_vectors and not self.supports_version_vectors:
            raise ValueError(f"version-vector databases need LiteCore 4.x, not {self.version}")
        Path(directory).mkdir(parents=True, exist_ok=True)
        return LiteDatabase(self, Path(directory), name, version_vectors=version_vectors)


class _Stderr:
    def write(self, text: str) -> None:
        import sys

        sys.stderr.write(text)

    def close(self) -> None:
        pass


_STDERR = _Stderr()


# -- database --------------------------------------------------------------------------------------


class LiteDatabase:
    """An open LiteCore database (C4Database) with document, blob and collection helpers."""

    def __init__(
        self, lc: LiteCore, directory: Path, name: str, *, version_vectors: bool = False
    ) -> None:
        self.lc = lc
        self.lib = lc.lib
        self.directory = directory
        self.name = name
        self.version_vectors = version_vectors
        self._dir_bytes = str(directory).encode()
        config = C4DatabaseConfig2()
        config.parentDirectory = _slice(self._dir_bytes)
        config.flags = kC4DB_Create | (kC4DB_VersionVectors if version_vectors else 0)
        err = C4Error()
        name_b = name.encode()
        ptr = self.lib.c4db_openNamed(_slice(name_b), byref(config), byref(err))
        if not ptr:
            lc.raise_error(f"c4db_openNamed({name!r} in {directory})", err)
        self._db: int | None = ptr
        self._replicators: list[LiteReplicator] = []

    @property
    def path(self) -> Path:
        return self.directory / f"{self.name}.cblite2"

    @property
    def handle(self) -> int:
        if self._db is None:
            raise LiteCoreError("database", LITECORE_DOMAIN, 6, f"{self.name} is closed")
        return self._db

    def close(self) -> None:
        """Stop and free this database's replicators, then close it."""
        if self._db is None:
            return
        for repl in list(self._replicators):
            repl.free()
        err = C4Error()
        ok = self.lib.c4db_close(self._db, byref(err))
        self.lib.c4base_release(self._db)
        self._db = None
        if not ok:
            self.lc.raise_error("c4db_close", err)

    def __enter__(self) -> LiteDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- collections

    def collection_handle(self, full_name: str = DEFAULT_COLLECTION) -> int:
        scope, name = _split_collection(full_name)
        err = C4Error()
        s, n = scope.encode(), name.encode()
        ptr = self.lib.c4db_getCollection(
            self.handle, C4CollectionSpec(_slice(n), _slice(s)), byref(err)
        )
        if not ptr:
            if err.code:
                self.lc.raise_error(f"c4db_getCollection({full_name})", err)
            raise LiteCoreError(
                f"collection {full_name}", LITECORE_DOMAIN, kC4ErrorNotFound, "no such collection"
            )
        return ptr

    def create_collection(self, full_name: str) -> None:
        """Create ``"scope.name"`` (or ``"name"`` in the default scope) if it does not exist."""
        scope, name = _split_collection(full_name)
        err = C4Error()
        s, n = scope.encode(), name.encode()
        ptr = self.lib.c4db_createCollection(
            self.handle, C4CollectionSpec(_slice(n), _slice(s)), byref(err)
        )
        if not ptr:
            self.lc.raise_error(f"c4db_createCollection({full_name})", err)

    def count(self, collection: str = DEFAULT_COLLECTION) -> int:
        """Number of live (non-deleted) documents in the collection."""
        return int(self.lib.c4coll_getDocumentCount(self.collection_handle(collection)))

    # -- transactions

    @contextmanager
    def transaction(self) -> Iterator[None]:
        err = C4Error()
        if not self.lib.c4db_beginTransaction(self.handle, byref(err)):
            self.lc.raise_error("c4db_beginTransaction", err)
        commit = False
        try:
            yield
            commit = True
        finally:
            err2 = C4Error()
            ok = self.lib.c4db_endTransaction(self.handle, commit, byref(err2))
            if commit and not ok:
                self.lc.raise_error("c4db_endTransaction", err2)

    # -- documents

    def _get_doc(self, coll: int, doc_id: str, content: int) -> Any:
        err = C4Error()
        idb = doc_id.encode()
        doc = self.lib.c4coll_getDoc(coll, _slice(idb), False, content, byref(err))
        if not doc:
            self.lc.raise_error(f"c4coll_getDoc({doc_id})", err)
        return doc

    def _encode_json(self, body: Mapping[str, Any]) -> bytes:
        """JSON -> Fleece with the database's shared keys (needs an open transaction)."""
        err = C4Error()
        js = json.dumps(body).encode()
        encoded = self.lc.take(self.lib.c4db_encodeJSON(self.handle, _slice(js), byref(err)))
        if not encoded and err.code:
            self.lc.raise_error("c4db_encodeJSON", err)
        return encoded

    def _save_revision(
        self, doc_id: str, collection: str, body: Mapping[str, Any] | None, flags: int
    ) -> str:
        coll = self.collection_handle(collection)
        with self.transaction():
            encoded = self._encode_json(body) if body is not None else b""
            doc = self._get_doc(coll, doc_id, kDocGetCurrentRev)
            try:
                err = C4Error()
                if doc.contents.flags & kDocExists:
                    new = self.lib.c4doc_update(doc, _slice(encoded), flags, byref(err))
                    action = "c4doc_update"
                else:
                    if flags & kRevDeleted:
                        raise LiteCoreError(
                            f"delete {doc_id}", LITECORE_DOMAIN, kC4ErrorNotFound, "no such doc"
                        )
                    idb = doc_id.encode()
                    new = self.lib.c4coll_createDoc(
                        coll, _slice(idb), _slice(encoded), flags, byref(err)
                    )
                    action = "c4coll_createDoc"
                if not new:
                    self.lc.raise_error(f"{action}({doc_id})", err)
                rev = _bytes(new.contents.revID).decode()
                self.lib.c4doc_release(new)
                return rev
            finally:
                self.lib.c4doc_release(doc)

    def put(
        self, doc_id: str, body: Mapping[str, Any], collection: str = DEFAULT_COLLECTION
    ) -> str:
        """Create or update a document (a new revision on the current one); returns its revID."""
        flags = kRevHasAttachments if _contains_blob(body) else 0
        return self._save_revision(doc_id, collection, body, flags)

    def delete(self, doc_id: str, collection: str = DEFAULT_COLLECTION) -> str:
        """Delete (tombstone) a document; returns the tombstone's revID."""
        return self._save_revision(doc_id, collection, None, kRevDeleted)

    def purge(self, doc_id: str, collection: str = DEFAULT_COLLECTION) -> None:
        err = C4Error()
        idb = doc_id.encode()
        coll = self.collection_handle(collection)
        with self.transaction():
            if not self.lib.c4coll_purgeDoc(coll, _slice(idb), byref(err)):
                self.lc.raise_error(f"c4coll_purgeDoc({doc_id})", err)

    def _doc_json(self, doc: Any) -> dict[str, Any]:
        err = C4Error()
        raw = self.lc.take(self.lib.c4doc_bodyAsJSON(doc, False, byref(err)))
        if not raw:
            return {}
        return json.loads(raw)

    def _describe(self, doc: Any) -> dict[str, Any]:
        d = doc.contents
        history = self.lc.take(self.lib.c4doc_getRevisionHistory(doc, 0, None, 0)).decode()
        global_rev = self.lc.take(self.lib.c4doc_getSelectedRevIDGlobalForm(doc)).decode()
        deleted = bool(d.flags & kDocDeleted)
        return {
            "id": _bytes(d.docID).decode(),
            "revID": _bytes(d.revID).decode(),
            "globalRevID": global_rev,
            "sequence": int(d.sequence),
            "deleted": deleted,
            "conflicted": bool(d.flags & kDocConflicted),
            "hasAttachments": bool(d.flags & kDocHasAttachments),
            "history": [r.strip() for r in history.split(",") if r.strip()],
            "body": {} if deleted else self._doc_json(doc),
        }

    def get(self, doc_id: str, collection: str = DEFAULT_COLLECTION) -> dict[str, Any] | None:
        """The current revision as ``{id, revID, globalRevID, sequence, deleted, conflicted,
        history, body}``.

        None if the document does not exist (a tombstone exists: ``deleted`` is true).
        In a version-vector database ``revID`` is the current version in LiteCore's local form
        (``<hex time>@*`` when this database wrote it); ``globalRevID`` is the selected revision
        with the real source ID instead of ``*`` (what peers see; after a conflict resolution
        LiteCore spells the whole vector there, ``"cv, mv1, mv2;"``); ``history`` is the version
        vector's entries split at ``,`` and stripped (LiteCore's own spelling otherwise: a merge
        entry ends with ``;``).
        """
        coll = self.collection_handle(collection)
        doc = self._get_doc(coll, doc_id, kDocGetAll)
        try:
            if not doc.contents.flags & kDocExists:
                return None
            return self._describe(doc)
        finally:
            self.lib.c4doc_release(doc)

    def leaf_revisions(
        self, doc_id: str, collection: str = DEFAULT_COLLECTION
    ) -> list[dict[str, Any]]:
        """Every leaf revision (the current one first): ``{revID, deleted, conflict, body}``."""
        coll = self.collection_handle(collection)
        doc = self._get_doc(coll, doc_id, kDocGetAll)
        leaves: list[dict[str, Any]] = []
        try:
            if not doc.contents.flags & kDocExists:
                return []
            err = C4Error()
            while True:
                rev = doc.contents.selectedRev
                body_slice = self.lib.c4doc_getRevisionBody(doc)
                body: dict[str, Any] = {}
                if body_slice.size:
                    body = self._doc_json(doc)
                leaves.append(
                    {
                        "revID": _bytes(rev.revID).decode(),
                        "deleted": bool(rev.flags & kRevDeleted),
                        "conflict": bool(rev.flags & kRevIsConflict),
                        "body": body,
                    }
                )
                if not self.lib.c4doc_selectNextLeafRevision(doc, True, True, byref(err)):
                    break
            return leaves
        finally:
            self.lib.c4doc_release(doc)

    def resolve_conflict(
        self,
        doc_id: str,
        winning_rev: str,
        losing_rev: str,
        merged_body: Mapping[str, Any] | None = None,
        collection: str = DEFAULT_COLLECTION,
    ) -> str:
        """Resolve a conflict (``c4doc_resolveConflict``) and save; returns the new revID."""
        coll = self.collection_handle(collection)
        with self.transaction():
            merged = self._encode_json(merged_body) if merged_body is not None else b""
            doc = self._get_doc(coll, doc_id, kDocGetAll)
            try:
                err = C4Error()
                w, lo = winning_rev.encode(), losing_rev.encode()
                flags = kRevHasAttachments if merged_body and _contains_blob(merged_body) else 0
                if not self.lib.c4doc_resolveConflict(
                    doc, _slice(w), _slice(lo), _slice(merged), flags, byref(err)
                ):
                    self.lc.raise_error(f"c4doc_resolveConflict({doc_id})", err)
                if not self.lib.c4doc_save(doc, 0, byref(err)):
                    self.lc.raise_error(f"c4doc_save({doc_id})", err)
                return _bytes(doc.contents.revID).decode()
            finally:
                self.lib.c4doc_release(doc)

    def all_docs(
        self, collection: str = DEFAULT_COLLECTION, *, include_deleted: bool = False
    ) -> dict[str, dict[str, Any]]:
        """``{doc_id: body}`` for the collection (tombstones map to ``{}`` if included)."""
        coll = self.collection_handle(collection)
        flags = kC4IncludeNonConflicted | kC4IncludeBodies
        if include_deleted:
            flags |= kC4IncludeDeleted
        opts = C4EnumeratorOptions(flags)
        err = C4Error()
        e = self.lib.c4coll_enumerateAllDocs(coll, byref(opts), byref(err))
        if not e:
            self.lc.raise_error("c4coll_enumerateAllDocs", err)
        result: dict[str, dict[str, Any]] = {}
        try:
            while self.lib.c4enum_next(e, byref(err)):
                doc = self.lib.c4enum_getDocument(e, byref(err))
                if not doc:
                    self.lc.raise_error("c4enum_getDocument", err)
                try:
                    doc_id = _bytes(doc.contents.docID).decode()
                    deleted = doc.contents.flags & kDocDeleted
                    result[doc_id] = {} if deleted else self._doc_json(doc)
                finally:
                    self.lib.c4doc_release(doc)
            if err.code:
                self.lc.raise_error("c4enum_next", err)
        finally:
            self.lib.c4enum_free(e)
        return result

    # -- blobs

    def _blob_store(self) -> int:
        err = C4Error()
        store = self.lib.c4db_getBlobStore(self.handle, byref(err))
        if not store:
            self.lc.raise_error("c4db_getBlobStore", err)
        return store

    def put_blob(
        self, data: bytes, content_type: str = "application/octet-stream"
    ) -> dict[str, Any]:
        """Store ``data`` in the blob store; returns the blob dict to embed in a document."""
        key = C4BlobKey()
        err = C4Error()
        if not self.lib.c4blob_create(
            self._blob_store(), _slice(data), None, byref(key), byref(err)
        ):
            self.lc.raise_error("c4blob_create", err)
        digest = self.lc.take(self.lib.c4blob_keyToString(key)).decode()
        return {
            "@type": "blob",
            "digest": digest,
            "length": len(data),
            "content_type": content_type,
        }

    def get_blob(self, blob: Mapping[str, Any] | str) -> bytes | None:
        """The bytes of a blob (given its dict or its ``sha1-…`` digest), or None if absent."""
        digest = blob if isinstance(blob, str) else str(blob["digest"])
        key = C4BlobKey()
        db = digest.encode()
        if not self.lib.c4blob_keyFromString(_slice(db), byref(key)):
            raise ValueError(f"not a blob digest: {digest!r}")
        err = C4Error()
        result = self.lib.c4blob_getContents(self._blob_store(), key, byref(err))
        if not result.buf:
            if err.domain == LITECORE_DOMAIN and err.code == kC4ErrorNotFound:
                return None
            if err.code:
                self.lc.raise_error(f"c4blob_getContents({digest})", err)
        return self.lc.take(result)

    # -- replication

    def replicator(
        self,
        url: str,
        *,
        push: bool = True,
        pull: bool = True,
        continuous: bool = False,
        collections: Sequence[str] | None = None,
        pinned_cert_pem: bytes | str | None = None,
        root_certs_pem: bytes | str | None = None,
        self_signed_only: bool = False,
        username: str | None = None,
        password: str | None = None,
        client_cert: tuple[bytes | str, bytes | str] | None = None,
        doc_ids: Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None,
        heartbeat: int | None = None,
        max_retries: int | None = 0,
        extra_options: Mapping[str, Any] | None = None,
    ) -> LiteReplicator:
        """A replicator to ``ws[s]://host:port/<db>`` (not started: call ``start()``).

        ``collections``: full names (default: the default collection only). ``max_retries``:
        LiteCore's retry count on transient errors (0 here, so failures end the run; None =
        LiteCore's default). ``client_cert``: (certificate, private key), PEM or DER.
        """
        if not self.lc.has_websocket:
            raise LiteCoreError(
                "replicator",
                LITECORE_DOMAIN,
                2,
                f"{self.lc.path} has no built-in WebSocket client (C4RegisterBuiltInWebSocket is "
                "not exported): link LiteCore's LiteCoreWebSocket objects into it",
            )
        options: dict[str, Any] = {}
        if pinned_cert_pem is not None:
            options["pinnedCert"] = _to_der(pinned_cert_pem)
        if root_certs_pem is not None:
            options["rootCerts"] = _as_bytes(root_certs_pem)
        if self_signed_only:
            options["onlySelfSignedServer"] = True
        if username is not None or password is not None:
            options["auth"] = {
                "type": "Basic",
                "username": username or "",
                "password": password or "",
            }
        if client_cert is not None:
            cert, key = client_cert
            options["auth"] = {
                "type": "Client Cert",
                "clientCert": _to_der(cert),
                "clientCertKey": _key_data(key),
            }
        collection_options: dict[str, Any] = {}
        if doc_ids is not None:
            # LiteCore 3.2 reads docIDs per collection (C4ReplicationCollection options); a
            # top-level docIDs option is ignored.
            collection_options["docIDs"] = list(doc_ids)
        if headers:
            options["headers"] = dict(headers)
        if heartbeat is not None:
            options["heartbeat"] = heartbeat
        if max_retries is not None:
            options["maxRetries"] = max_retries
        if extra_options:
            options.update(extra_options)
        mode = kC4Continuous if continuous else kC4OneShot
        repl = LiteReplicator(
            self,
            url,
            push=mode if push else kC4Disabled,
            pull=mode if pull else kC4Disabled,
            collections=list(collections or [DEFAULT_COLLECTION]),
            options=options,
            collection_options=collection_options,
        )
        self._replicators.append(repl)
        return repl


# -- replicator ------------------------------------------------------------------------------------


@dataclass
class _ReplState:
    statuses: list[ReplicatorStatus] = field(default_factory=list)
    documents: list[DocumentEnded] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: threading.Condition | None = None


class LiteReplicator:
    """A LiteCore active replicator (C4Replicator) bound to one database."""

    def __init__(
        self,
        db: LiteDatabase,
        url: str,
        *,
        push: int,
        pull: int,
        collections: list[str],
        options: dict[str, Any],
        collection_options: dict[str, Any] | None = None,
    ) -> None:
        self.db = db
        self.lc = db.lc
        self.lib = db.lib
        self.url = url
        self.collections = collections
        self._state = _ReplState()
        self._state.changed = threading.Condition(self._state.lock)
        # Everything LiteCore may point into stays referenced by this object.
        self._url_b = url.encode()
        self._options_b = self.lc.encode_fleece(options)
        self._spec_bytes: list[bytes] = []
        self._collection_options_b = (
            self.lc.encode_fleece(collection_options) if collection_options else b""
        )
        address = C4Address()
        db_name = FLSlice()
        if not self.lib.c4address_fromURL(_slice(self._url_b), byref(address), byref(db_name)):
            raise LiteCoreError(f"c4address_fromURL({url})", NETWORK_DOMAIN, 4, "invalid URL")
        array = (C4ReplicationCollection * len(collections))()
        for i, full_name in enumerate(collections):
            scope, name = (s.encode() for s in _split_collection(full_name))
            self._spec_bytes += [scope, name]
            array[i].collection = C4CollectionSpec(_slice(name), _slice(scope))
            array[i].push = push
            array[i].pull = pull
            array[i].optionsDictFleece = _slice(self._collection_options_b)
        self._collections_array = array
        self._on_status = StatusChangedCallback(self._status_changed)
        self._on_docs = DocumentsEndedCallback(self._documents_ended)
        params = C4ReplicatorParameters()
        params.optionsDictFleece = _slice(self._options_b)
        params.onStatusChanged = self._on_status
        params.onDocumentsEnded = self._on_docs
        params.collections = ctypes.cast(array, POINTER(C4ReplicationCollection))
        params.collectionCount = len(collections)
        self._prefix = b"interop"
        err = C4Error()
        ptr = self.lib.c4repl_new(
            db.handle, address, db_name, params, _slice(self._prefix), byref(err)
        )
        if not ptr:
            self.lc.raise_error(f"c4repl_new({url})", err)
        self._repl: int | None = ptr
        err = C4Error()
        if not self.lib.c4repl_setProgressLevel(ptr, kC4ReplProgressPerDocument, byref(err)):
            self.lc.raise_error("c4repl_setProgressLevel", err)

    # callbacks run on LiteCore threads
    def _status_changed(self, _repl: Any, status: C4ReplicatorStatus, _ctx: Any) -> None:
        snap = self._snapshot(status)
        state = self._state
        assert state.changed is not None
        with state.changed:
            state.statuses.append(snap)
            state.changed.notify_all()

    def _documents_ended(self, _repl: Any, pushing: bool, count: int, docs: Any, _ctx: Any) -> None:
        ended = []
        for i in range(count):
            d = docs[i].contents
            scope = _bytes(d.collectionSpec.scope).decode() or "_default"
            name = _bytes(d.collectionSpec.name).decode() or "_default"
            err = ReplicatorError(d.error.domain, d.error.code, "")
            if d.error.code:
                err = ReplicatorError(d.error.domain, d.error.code, self.lc.error_message(d.error))
            ended.append(
                DocumentEnded(
                    pushing=bool(pushing),
                    collection=f"{scope}.{name}",
                    doc_id=_bytes(d.docID).decode(),
                    rev_id=_bytes(d.revID).decode(),
                    flags=int(d.flags),
                    error=err,
                    transient=bool(d.errorIsTransient),
                )
            )
        state = self._state
        assert state.changed is not None
        with state.changed:
            state.documents.extend(ended)
            state.changed.notify_all()

    def _snapshot(self, status: C4ReplicatorStatus) -> ReplicatorStatus:
        err = status.error
        message = self.lc.error_message(err) if err.code else ""
        level = status.level
        return ReplicatorStatus(
            level=ACTIVITY_LEVELS[level] if 0 <= level < len(ACTIVITY_LEVELS) else str(level),
            units_completed=int(status.progress.unitsCompleted),
            units_total=int(status.progress.unitsTotal),
            document_count=int(status.progress.documentCount),
            error=ReplicatorError(err.domain, err.code, message),
            flags=int(status.flags),
        )

    @property
    def handle(self) -> int:
        if self._repl is None:
            raise LiteCoreError("replicator", LITECORE_DOMAIN, 6, "replicator was freed")
        return self._repl

    @property
    def status(self) -> ReplicatorStatus:
        """The current status (``c4repl_getStatus``)."""
        return self._snapshot(self.lib.c4repl_getStatus(self.handle))

    @property
    def status_history(self) -> list[ReplicatorStatus]:
        """Every status LiteCore reported through its callback, in order."""
        with self._state.lock:
            return list(self._state.statuses)

    @property
    def documents_ended(self) -> list[DocumentEnded]:
        """Every document LiteCore reported finished (pushed or pulled), in order."""
        with self._state.lock:
            return list(self._state.documents)

    def response_headers(self) -> dict[str, Any]:
        """The HTTP response headers of the WebSocket upgrade (after connecting)."""
        result = self.lib.c4repl_getResponseHeaders(self.handle)
        raw = self.lc.take(result) if isinstance(result, FLSliceResult) else _bytes(result)
        if not raw:
            return {}
        return self._decode_fleece_json(raw)

    def _decode_fleece_json(self, data: bytes) -> dict[str, Any]:
        # The headers are a Fleece dict; decode through LiteCore's own JSON conversion.
        lib = self.lib
        lib.FLValue_FromData.restype = c_void_p
        lib.FLValue_FromData.argtypes = [FLSlice, c_int]
        lib.FLValue_ToJSON.restype = FLSliceResult
        lib.FLValue_ToJSON.argtypes = [c_void_p]
        value = lib.FLValue_FromData(_slice(data), 0)
        if not value:
            return {}
        return json.loads(self.lc.take(lib.FLValue_ToJSON(value)) or b"{}")

    def start(self, reset: bool = False) -> None:
        self.lib.c4repl_start(self.handle, reset)

    def stop(self) -> None:
        self.lib.c4repl_stop(self.handle)

    def _done(self, until: str, status: ReplicatorStatus) -> bool:
        if until == "stopped":
            return status.level == "stopped"
        if until == "idle":
            return status.level in ("idle", "stopped")
        if until == "offline":
            return status.level in ("offline", "stopped")
        raise ValueError(f"until must be 'stopped', 'idle' or 'offline', not {until!r}")

    def _settled(self, until: str) -> bool:
        """True once LiteCore's status callback has also reported the state ``until`` asked for.

        The callback comes after the per-document notifications, so ``documents_ended`` is
        complete by then.
        """
        with self._state.lock:
            history = list(self._state.statuses)
        return any(self._done(until, s) for s in history[-1:])

    def wait(self, until: str = "stopped", timeout: float = 30.0) -> ReplicatorStatus:
        """Block until the replicator reaches ``until``; TimeoutError (with status) if not."""
        deadline = time.monotonic() + timeout
        state = self._state
        assert state.changed is not None
        reached_at: float | None = None
        while True:
            status = self.status
            now = time.monotonic()
            if self._done(until, status):
                reached_at = reached_at or now
                if self._settled(until) or now - reached_at > CALLBACK_GRACE:
                    return status
            if now >= deadline:
                raise TimeoutError(f"replicator not {until} after {timeout}s: {status}")
            with state.changed:
                state.changed.wait(min(deadline - now, 0.05))

    async def wait_async(self, until: str = "stopped", timeout: float = 30.0) -> ReplicatorStatus:
        """``wait`` for use inside an event loop (polls, never blocks the loop)."""
        deadline = time.monotonic() + timeout
        reached_at: float | None = None
        while True:
            status = self.status
            now = time.monotonic()
            if self._done(until, status):
                reached_at = reached_at or now
                if self._settled(until) or now - reached_at > CALLBACK_GRACE:
                    return status
            if now >= deadline:
                raise TimeoutError(f"replicator not {until} after {timeout}s: {status}")
            await asyncio.sleep(0.02)

    def free(self) -> None:
        """Stop (if running) and free the replicator. Callbacks stay referenced for safety."""
        if self._repl is None:
            return
        repl, self._repl = self._repl, None
        status = self._snapshot(self.lib.c4repl_getStatus(repl))
        if status.level != "stopped":
            self.lib.c4repl_stop(repl)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if self.lib.c4repl_getStatus(repl).level == 0:
                    break
                time.sleep(0.02)
        self.lib.c4repl_free(repl)
        _KEEP_ALIVE.append((self._on_status, self._on_docs, self._collections_array))
        with suppress(ValueError):
            self.db._replicators.remove(self)

    def __enter__(self) -> LiteReplicator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()


# Callback trampolines of freed replicators: LiteCore threads might still be unwinding through them.
_KEEP_ALIVE: list[Any] = []


def pushed_doc_ids(ended: Iterable[DocumentEnded]) -> set[str]:
    """The IDs of documents pushed without error."""
    return {d.doc_id for d in ended if d.pushing and not d.error}


def pulled_doc_ids(ended: Iterable[DocumentEnded]) -> set[str]:
    """The IDs of documents pulled without error."""
    return {d.doc_id for d in ended if not d.pushing and not d.error}


# -- the command-line tools (cblpeer / cblpassive) as subprocesses ---------------------------------

_LISTENING = re.compile(r"^listening on (ws://\S+?):(\d+)/(\S+)\s*$")
_SETPRIV = "/usr/bin/setpriv"


def _tied_to_us(argv: list[str]) -> list[str]:
    """``argv`` run so that it gets SIGTERM if this process dies first (a crashed forked test
    must not leave a cblpassive behind); ``setpriv --pdeathsig`` from util-linux, if present."""
    if os.access(_SETPRIV, os.X_OK):
        return [_SETPRIV, "--pdeathsig", "TERM", "--", *argv]
    return argv


@dataclass(frozen=True)
class ToolRun:
    """One finished ``cblpeer`` run: exit status, output, and its JSON lines."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[dict[str, Any]]:
        """Every stdout line that is a JSON object (``dump`` prints one per document)."""
        found = []
        for line in self.stdout.splitlines():
            if line.startswith("{"):
                with suppress(ValueError):
                    found.append(json.loads(line))
        return found

    @property
    def result(self) -> dict[str, Any]:
        """The last JSON line (the result of ``push``/``pull``/``pushpull``/``info``)."""
        lines = self.lines
        if not lines:
            raise AssertionError(f"no JSON from {' '.join(self.argv)}:\n{self.stdout}{self.stderr}")
        return lines[-1]


class CblPassive:
    """A running ``cblpassive``: LiteCore's own passive replicator on ``ws://127.0.0.1:port``.

    Started by ``CblTools.passive``; ``stop()`` ends it gracefully (SIGTERM) and returns its
    final ``{"event": "exit", ...}`` line. ``events`` are all JSON lines so far (one
    ``{"event": "connection", ...}`` per finished connection, with ``docs_received`` etc.).
    """

    def __init__(self, argv: list[str], db_dir: Path, name: str, timeout: float = 30.0) -> None:
        self.argv = argv
        self.db_dir = db_dir
        self.name = name
        self.process = subprocess.Popen(
            _tied_to_us(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
        )
        self._lines: list[str] = []
        self._stderr: list[str] = []
        self._cond = threading.Condition()
        self.port = 0
        threading.Thread(
            target=self._read, args=(self.process.stdout, self._lines), daemon=True
        ).start()
        threading.Thread(
            target=self._read, args=(self.process.stderr, self._stderr), daemon=True
        ).start()
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.port:
                for line in self._lines:
                    match = _LISTENING.match(line)
                    if match:
                        self.port = int(match.group(2))
                if self.port:
                    break
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.process.kill()
                    raise RuntimeError(
                        f"cblpassive did not start: {' '.join(argv)}\n"
                        + "".join(self._lines + self._stderr)
                    )
                self._cond.wait(0.05)

    def _read(self, stream: Any, into: list[str]) -> None:
        for line in stream:
            with self._cond:
                into.append(line)
                self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:<port>/<name>`` (what a replicator connects to)."""
        return f"ws://127.0.0.1:{self.port}/{self.name}"

    @property
    def events(self) -> list[dict[str, Any]]:
        with self._cond:
            lines = list(self._lines)
        found = []
        for line in lines:
            if line.startswith("{"):
                with suppress(ValueError):
                    found.append(json.loads(line))
        return found

    @property
    def connections(self) -> list[dict[str, Any]]:
        """The ``connection`` events (one per finished connection)."""
        return [e for e in self.events if e.get("event") == "connection"]

    def wait_connections(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Block until ``count`` connections have finished; their events."""
        deadline = time.monotonic() + timeout
        while len(self.connections) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"cblpassive: {len(self.connections)} of {count} connections")
            time.sleep(0.05)
        return self.connections

    @property
    def stderr(self) -> str:
        with self._cond:
            return "".join(self._stderr)

    def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        """SIGTERM, wait, and return the exit event (``{}`` if it printed none)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        exits = [e for e in self.events if e.get("event") == "exit"]
        return exits[-1] if exits else {}

    def __enter__(self) -> CblPassive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class CblTools:
    """``cblpeer`` and ``cblpassive`` in ``bin_dir`` (built against one LiteCore version)."""

    bin_dir: Path

    @classmethod
    def beside(cls, lib_path: str | os.PathLike[str]) -> CblTools:
        """The tools of a build laid out as ``<prefix>/lib/libLiteCore.so`` + ``<prefix>/bin``."""
        return cls(Path(lib_path).resolve().parent.parent / "bin")

    @property
    def cblpeer(self) -> Path:
        return self.bin_dir / "cblpeer"

    @property
    def cblpassive(self) -> Path:
        return self.bin_dir / "cblpassive"

    @property
    def available(self) -> bool:
        return all(os.access(p, os.X_OK) for p in (self.cblpeer, self.cblpassive))

    def peer(
        self,
        db_dir: str | os.PathLike[str],
        command: str,
        *args: str,
        url: str | None = None,
        name: str = "cblpeer",
        vv: bool = False,
        collections: Sequence[str] = (),
        options: Sequence[str] = (),
        timeout: float = 600.0,
        taskset: str | None = None,
    ) -> ToolRun:
        """Run ``cblpeer --db DIR --name NAME [--url URL] [--vv] [options] COMMAND args...``.

        ``options`` go before the command (e.g. ``["--gen", "100", "--size", "1024"]``).
        ``taskset``: a CPU list to pin it to (``taskset -c``).
        """
        argv = [str(self.cblpeer), "--db", str(db_dir), "--name", name]
        if url is not None:
            argv += ["--url", url]
        if vv:
            argv.append("--vv")
        for c in collections:
            argv += ["--collection", c]
        argv += [*options, command, *args]
        if taskset is not None:
            argv = ["taskset", "-c", taskset, *argv]
        done = subprocess.run(
            _tied_to_us(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
        return ToolRun(argv, done.returncode, done.stdout, done.stderr)

    def passive(
        self,
        db_dir: str | os.PathLike[str],
        *,
        name: str = "db",
        port: int = 0,
        vv: bool = False,
        collections: Sequence[str] = (),
        delta_sync: bool = False,
        read_only: bool = False,
        options: Sequence[str] = (),
        taskset: str | None = None,
    ) -> CblPassive:
        """Start ``cblpassive`` on 127.0.0.1 (``port`` 0: a free one) and wait until it listens."""
        argv = [str(self.cblpassive), "--db", str(db_dir), "--name", name, "--port", str(port)]
        if vv:
            argv.append("--vv")
        for c in collections:
            argv += ["--collection", c]
        if delta_sync:
            argv.append("--delta-sync")
        if read_only:
            argv.append("--read-only")
        argv += list(options)
        if taskset is not None:
            argv = ["taskset", "-c", taskset, *argv]
        return CblPassive(argv, Path(db_dir), name)
