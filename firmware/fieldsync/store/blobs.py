"""Content-addressed blob storage and blob references inside document bodies.

A blob is keyed by its digest, ``sha1-<base64 of the SHA-1 of its bytes>`` (Couchbase Lite's form).
Each blob is one file ``<base64 digest, '/' written as '_'>.blob`` in the store's directory, as
LiteCore lays it out. Writes stream into a temporary file in the same directory, which is
fsynced, checked against the expected digest and renamed into place, so a blob file either holds
exactly the bytes its name promises or does not exist.

In a document, a blob is a dict ``{"@type": "blob", "digest": …, "length": …, "content_type": …}``
anywhere in the body; legacy documents also list attachments under the top-level
``_attachments`` dict.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from fieldsync.files import fsync_directory
from fieldsync.store.errors import InvalidInput, NotFoundError, StoreError

DIGEST_PREFIX = "sha1-"
BLOB_TYPE = "blob"
LEGACY_ATTACHMENTS = "_attachments"
_SUFFIX = ".blob"
_TEMP_PREFIX = ".tmp-"
#: A blob being garbage-collected is first renamed to this prefix (see ``BlobStore.collect``).
_TRASH_PREFIX = ".trash-"
#: Temporary files older than this are leftovers of a crashed writer.
_STALE_TEMP_SECONDS = 3600


class DigestMismatch(InvalidInput):
    """Blob bytes whose digest differs from the one they were announced with."""


def digest_for(raw_sha1: bytes) -> str:
    return DIGEST_PREFIX + base64.b64encode(raw_sha1).decode("ascii")


def compute_digest(data: bytes) -> str:
    """The blob digest of ``data``."""
    return digest_for(hashlib.sha1(data, usedforsecurity=False).digest())


def parse_digest(digest: object) -> bytes:
    """The 20 SHA-1 bytes a digest string names; ``InvalidInput`` if it is malformed."""
    if not isinstance(digest, str) or not digest.startswith(DIGEST_PREFIX):
        raise InvalidInput(f"blob digest must look like 'sha1-<base64>', got {digest!r}")
    encoded = digest[len(DIGEST_PREFIX) :]
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"blob digest is not valid base64: {digest!r}") from None
    if len(raw) != 20 or base64.b64encode(raw).decode("ascii") != encoded:
        raise InvalidInput(f"blob digest is not a SHA-1 digest: {digest!r}")
    return raw


def is_blob(value: object) -> bool:
    """Whether ``value`` is a blob dict (``@type: blob`` with a string ``digest``)."""
    return (
        isinstance(value, dict)
        and value.get("@type") == BLOB_TYPE
        and isinstance(value.get("digest"), str)
    )


def find_blobs(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every blob dict in ``body`` (nested anywhere) plus every legacy ``_attachments`` entry
    that has a ``digest``. Each dict appears once; several may share a digest."""
    found: list[dict[str, Any]] = []
    seen: set[int] = set()

    def add(value: dict[str, Any]) -> None:
        if id(value) not in seen:
            seen.add(id(value))
            found.append(value)

    def visit(value: object) -> None:
        if isinstance(value, dict):
            if is_blob(value):
                add(value)
                return
            for item in value.values():
                visit(item)
        elif isinstance(value, list):
            for item in value:
                visit(item)

    if not isinstance(body, dict):
        return found
    for key, value in body.items():
        if key == LEGACY_ATTACHMENTS and isinstance(value, dict):
            for attachment in value.values():
                if isinstance(attachment, dict) and isinstance(attachment.get("digest"), str):
                    add(attachment)
                else:
                    visit(attachment)
        else:
            visit(value)
    return found


class BlobWriter:
    """Streams one blob into the store. ``finish()`` makes it durable and returns its digest.

    As a context manager: leaving normally finishes (if not done yet), leaving by an exception
    aborts.
    """

    def __init__(self, store: BlobStore, expected_digest: str | None = None) -> None:
        if expected_digest is not None:
            parse_digest(expected_digest)
        self._store = store
        self._expected = expected_digest
        fd, name = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=_SUFFIX, dir=store.path)
        self._temp = Path(name)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self._sha1 = hashlib.sha1(usedforsecurity=False)
        self.length = 0
        self.digest: str | None = None

    def write(self, chunk: bytes | bytearray | memoryview) -> int:
        if self._file is None:
            raise StoreError("blob writer is already finished or aborted")
        self._sha1.update(chunk)
        self._file.write(chunk)
        self.length += len(chunk)
        return len(chunk)

    def finish(self) -> str:
        """Verify, fsync and publish the blob; return its digest (``DigestMismatch`` if it is
        not the expected one, in which case nothing is stored)."""
        if self.digest is not None:
            return self.digest
        if self._file is None:
            raise StoreError("blob writer was aborted")
        file, self._file = self._file, None
        try:
            file.flush()
            os.fsync(file.fileno())
        finally:
            file.close()
        digest = digest_for(self._sha1.digest())
        if self._expected is not None and digest != self._expected:
            self._temp.unlink(missing_ok=True)
            raise DigestMismatch(
                f"blob content has digest {digest}, expected {self._expected} "
                f"({self.length} bytes received)"
            )
        try:
            os.chmod(self._temp, 0o644)
            os.replace(self._temp, self._store.path_for(digest))
            fsync_directory(self._store.path)
        except OSError:
            self._temp.unlink(missing_ok=True)
            raise
        self.digest = digest
        return digest

    def abort(self) -> None:
        """Discard what was written. Safe to call more than once, or after ``finish``."""
        if self._file is not None:
            file, self._file = self._file, None
            file.close()
            self._temp.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            if self._file is not None:
                self.finish()
        else:
            self.abort()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.abort()


class BlobStore:
    """The blobs of one database, in a directory of their own."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temp_files()
        with contextlib.suppress(OSError):
            self.restore_trash()

    def path_for(self, digest: str) -> Path:
        """The file holding the blob ``digest`` (whether or not it exists)."""
        raw = parse_digest(digest)
        return self.path / (base64.b64encode(raw).decode("ascii").replace("/", "_") + _SUFFIX)

    def has(self, digest: str) -> bool:
        """Whether the blob is stored (``False`` for a malformed digest)."""
        try:
            return self.path_for(digest).is_file()
        except InvalidInput:
            return False

    def size(self, digest: str) -> int | None:
        """Length in bytes of a stored blob, ``None`` if it is not stored."""
        try:
            return self.path_for(digest).stat().st_size
        except (InvalidInput, FileNotFoundError):
            return None

    def open_read(self, digest: str) -> BinaryIO:
        """A binary file object reading the blob; ``NotFoundError`` if it is not stored."""
        path = self.path_for(digest)
        try:
            return path.open("rb")
        except FileNotFoundError:
            raise NotFoundError(f"no blob {digest}") from None

    def read(self, digest: str) -> bytes:
        with self.open_read(digest) as file:
            return file.read()

    def put(self, data: bytes | bytearray | memoryview) -> str:
        """Store ``data`` (durably) and return its digest."""
        with self.writer() as writer:
            writer.write(data)
        assert writer.digest is not None
        return writer.digest

    def writer(self, expected_digest: str | None = None) -> BlobWriter:
        """A streaming writer; with ``expected_digest`` the content is verified on finish."""
        return BlobWriter(self, expected_digest)

    def claim(self, digest: str) -> bool:
        """Whether the blob is stored, and if so protect it from garbage collection for the
        grace period (its mtime is refreshed). Code that skips fetching or writing a blob
        because it is already here must use this, not ``has``, so that a blob no committed
        revision references yet cannot be collected before the revision is committed."""
        try:
            path = self.path_for(digest)
        except InvalidInput:
            return False
        try:
            os.utime(path)
            # utime resolved the name before a concurrent collector may have renamed it away;
            # the name still existing afterwards proves the collector will see the new mtime.
            return path.is_file()
        except FileNotFoundError:
            return False

    def collect(self, digest: str, older_than: float) -> int | None:
        """Remove an unreferenced blob if its mtime is older than ``older_than`` (a
        ``time.time()`` value); return the bytes freed, or ``None`` if it was kept or absent.

        Two steps, so that a concurrent ``claim`` or ``writer`` always wins: the file is renamed
        to a trash name, its mtime is read again, and it is put back if it was refreshed. A
        crash between the steps leaves a trash file that ``restore_trash`` puts back.
        The caller must know that no committed revision references the blob.
        """
        path = self.path_for(digest)
        try:
            if path.stat().st_mtime >= older_than:
                return None
            trash = self.path / (_TRASH_PREFIX + path.name)
            os.rename(path, trash)
        except FileNotFoundError:
            return None
        stat = trash.stat()
        if stat.st_mtime >= older_than:
            os.replace(trash, path)  # claimed meanwhile: keep it
            return None
        trash.unlink()
        return stat.st_size

    def restore_trash(self) -> int:
        """Put back blobs a crashed collection left renamed; return how many."""
        restored = 0
        for entry in self.path.glob(_TRASH_PREFIX + "*" + _SUFFIX):
            target = self.path / entry.name[len(_TRASH_PREFIX) :]
            with contextlib.suppress(FileNotFoundError):
                if target.exists():
                    entry.unlink()  # a writer stored the same content again meanwhile
                else:
                    os.replace(entry, target)
                    restored += 1
        return restored

    def sync_directory(self) -> None:
        """Make renames and removals in the blob directory durable."""
        fsync_directory(self.path)

    def delete(self, digest: str) -> bool:
        """Remove a blob; ``True`` if it existed."""
        try:
            self.path_for(digest).unlink()
        except FileNotFoundError:
            return False
        return True

    def digests(self) -> Iterator[str]:
        """The digests of all stored blobs."""
        for entry in self.path.iterdir():
            name = entry.name
            if name.startswith((_TEMP_PREFIX, _TRASH_PREFIX)) or not name.endswith(_SUFFIX):
                continue
            digest = DIGEST_PREFIX + name[: -len(_SUFFIX)].replace("_", "/")
            try:
                parse_digest(digest)
            except InvalidInput:
                continue
            yield digest

    def total_size(self) -> int:
        """Bytes of every file in the directory (a file a writer renames meanwhile is skipped)."""
        total = 0
        for entry in self.path.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if entry.is_file():
                    total += entry.stat().st_size
        return total

    def _remove_stale_temp_files(self) -> None:
        cutoff = time.time() - _STALE_TEMP_SECONDS
        for entry in self.path.glob(_TEMP_PREFIX + "*"):
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()
