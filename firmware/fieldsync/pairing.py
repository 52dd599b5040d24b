"""Pairing a phone with a fieldsync device: the connection details as a small JSON document, shown
as a QR code (terminal or PNG).

The payload (version 1) is compact JSON, UTF-8, keys in this order::

    {"fieldsync":1,"urls":["wss://192.168.4.1:4984/farm"],"db":["farm"],"sha256":"9f86d0…"}

- ``fieldsync``: the payload version (an integer; an app refuses versions it does not know).
- ``urls``: every ``ws[s]://address:port/database`` URL the listener serves now (one per address
  and database), most useful first.
- ``db``: the names of the databases served.
- ``sha256``: the SHA-256 of the TLS certificate's DER encoding, 64 lower-case hex digits, or
  ``null`` when TLS is off. An app connects once, checks that the server certificate hashes to
  this value, and then pins that certificate (Couchbase Lite ``pinnedServerCertificate``).

An app parses it with any JSON parser; unknown keys are ignored (later versions may add some).
The QR code is made by ``segno`` (a maintained, pure-Python encoder), error correction ``M``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import segno

PAYLOAD_VERSION = 1
_HEX64 = re.compile(r"[0-9a-f]{64}")


class PairingError(ValueError):
    """A pairing payload that cannot be read, or details that cannot make one."""


@dataclass(frozen=True)
class PairingInfo:
    """What a phone needs to reach and trust one device."""

    urls: tuple[str, ...]
    databases: tuple[str, ...]
    sha256: str | None  # 64 lower-case hex digits, or None without TLS

    def __post_init__(self) -> None:
        if self.sha256 is not None and not _HEX64.fullmatch(self.sha256):
            raise PairingError(f"sha256 must be 64 lower-case hex digits, got {self.sha256!r}")
        for url in self.urls:
            if not url.startswith(("ws://", "wss://")):
                raise PairingError(f"not a ws:// or wss:// URL: {url!r}")


def normalize_fingerprint(fingerprint: str | bytes | None) -> str | None:
    """``AB:CD:…`` (95 characters), plain hex or the raw 32 bytes -> 64 lower-case hex digits."""
    if fingerprint is None:
        return None
    if isinstance(fingerprint, bytes):
        if len(fingerprint) != 32:
            raise PairingError(f"a SHA-256 digest has 32 bytes, not {len(fingerprint)}")
        return fingerprint.hex()
    text = fingerprint.replace(":", "").strip().lower()
    if not _HEX64.fullmatch(text):
        raise PairingError(f"not a SHA-256 fingerprint: {fingerprint!r}")
    return text


def pairing_info(
    urls: Iterable[str], databases: Iterable[str], fingerprint: str | bytes | None
) -> PairingInfo:
    """Build the pairing details (the fingerprint in any form :func:`normalize_fingerprint`
    takes)."""
    return PairingInfo(
        urls=tuple(urls),
        databases=tuple(dict.fromkeys(databases)),
        sha256=normalize_fingerprint(fingerprint),
    )


def from_status(document: Mapping[str, Any]) -> PairingInfo:
    """The pairing details of a running agent, from its status document (``fieldsync status
    --json``): ``urls``, ``databases[].name`` and ``tls.fingerprint``."""
    tls = document.get("tls") or {}
    names = [str(db.get("name")) for db in document.get("databases") or [] if db.get("name")]
    return pairing_info(document.get("urls") or [], names, tls.get("fingerprint"))


def encode(info: PairingInfo) -> str:
    """The payload text (compact JSON)."""
    return json.dumps(
        {
            "fieldsync": PAYLOAD_VERSION,
            "urls": list(info.urls),
            "db": list(info.databases),
            "sha256": info.sha256,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def decode(text: str) -> PairingInfo:
    """Parse a payload (what an app does); :class:`PairingError` when it is not one."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise PairingError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("fieldsync") != PAYLOAD_VERSION:
        raise PairingError("not a fieldsync pairing payload (version 1)")
    urls, dbs, sha = data.get("urls"), data.get("db"), data.get("sha256")
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise PairingError("urls must be a list of strings")
    if not isinstance(dbs, list) or not all(isinstance(d, str) for d in dbs):
        raise PairingError("db must be a list of strings")
    if sha is not None and not isinstance(sha, str):
        raise PairingError("sha256 must be a string or null")
    return PairingInfo(urls=tuple(urls), databases=tuple(dbs), sha256=sha)


def _qr(payload: str):  # -> segno.QRCode (segno has no type hints of its own)
    return segno.make_qr(payload, error="m", boost_error=False)


def print_terminal(payload: str, out: TextIO) -> None:
    """Write the payload as a QR code drawn with block characters (two modules per character
    row, so it fits an 80x24 terminal for a few URLs), then the payload itself."""
    _qr(payload).terminal(out=out, compact=True, border=2)
    out.write(payload + "\n")
    out.flush()


def write_png(payload: str, path: Path, *, scale: int = 8) -> None:
    """Write the payload as a PNG image (black on white, a 4-module quiet zone)."""
    _qr(payload).save(str(path), kind="png", scale=scale, border=4)
