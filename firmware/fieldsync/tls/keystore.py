"""A file keystore for TLS identities on a device without an OS keychain.

The keystore is one directory, meant to live on the device's secured partition, holding one
file per identity: ``<alias>.pem``. Each entry file carries, in this order, a few ``# key: value``
header lines (format version, alias, small metadata), the private key as a PKCS#8 PEM block
(``ENCRYPTED PRIVATE KEY`` when a key-encryption key is configured), the certificate chain as PEM
blocks (leaf first) and a final ``# sha256: <hex>`` line over everything before it. Tools such as
``openssl x509 -in <alias>.pem`` read the file as it is.

Safety rules, as OpenSSH applies them to ``~/.ssh``:

* the directory must be owned by the running user and have no group/other permission bits
  (mode 0700); it is created that way when absent;
* entry files must be regular files (symlinks are refused), owned by the running user and
  without group/other bits (0600);
* every write goes to a temporary file in the same directory, is fsynced, renamed into place,
  and the directory is fsynced, so an entry is either the old one or the new one;
* an entry whose checksum line is missing or wrong (truncated, half-written, damaged) raises
  :class:`KeystoreEntryError` naming the alias and the file; it is never used.

Encryption at rest (``kek_file``): the private keys are written as PKCS#8 with
``BestAvailableEncryption`` under a passphrase derived (HKDF-SHA256) from the contents of a
key-encryption-key file, which must itself be a 0600 file owned by the running user (root on
the device). This protects the keys of a keystore that is copied or read without that file —
an SD card pulled from the device, a backup or image of the keystore partition — provided the
KEK lives somewhere that copy does not reach (another partition, a TPM-/secure-element-backed
mount, a removable token). It does **not** protect against an attacker who has root (or the
listener's user) on the running device: such an attacker reads the KEK file or the decrypted
key from the process memory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import secrets
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fieldsync.errors import FieldsyncError
from fieldsync.files import atomic_write, fsync_directory

__all__ = [
    "ENTRY_SUFFIX",
    "Keystore",
    "KeystoreEntry",
    "KeystoreEntryError",
    "KeystoreError",
    "PrivateKey",
    "default_keystore_path",
    "generate_kek_file",
    "open_keystore",
    "validate_alias",
]

#: Private key types a keystore entry (and a TLS identity) may hold.
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

ENTRY_SUFFIX = ".pem"
_FORMAT_VERSION = "1"
#: The device keystore (the agent, and every command run as root).
DEVICE_KEYSTORE = Path("/var/lib/fieldsync/keys")
_ROOT_KEYSTORE = DEVICE_KEYSTORE
_ALIAS_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
_META_KEY_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")
_PEM_BLOCK_RE = re.compile(
    r"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----\r?\n?", re.DOTALL
)
_CHECKSUM_PREFIX = "# sha256: "
_MAX_ENTRY_BYTES = 1 << 20
_MIN_KEK_BYTES = 32
_KEK_INFO = b"fieldsync keystore key-encryption v1"
_LOCK_NAME = ".lock"
_TEMP_PREFIX = ".tmp-"


class KeystoreError(FieldsyncError):
    """The keystore (or one of its files) cannot be used safely; the message says why."""


class KeystoreEntryError(KeystoreError):
    """An entry file is corrupt, truncated or half-written; it is never used."""

    def __init__(self, alias: str, path: Path, problem: str) -> None:
        super().__init__(f"keystore entry {alias!r} ({path}) is unusable: {problem}")
        self.alias = alias
        self.path = path
        self.problem = problem


def default_keystore_path() -> Path:
    """The keystore directory used when none is configured.

    ``/var/lib/fieldsync/keys`` when running as root (the device service), otherwise
    ``$XDG_DATA_HOME/fieldsync/keys`` (``~/.local/share/fieldsync/keys`` without the variable).
    """
    if os.geteuid() == 0:
        return _ROOT_KEYSTORE
    data_home = os.environ.get("XDG_DATA_HOME")
    base = Path(data_home) if data_home and os.path.isabs(data_home) else None
    if base is None:
        base = Path.home() / ".local" / "share"
    return base / "fieldsync" / "keys"


def validate_alias(alias: str) -> str:
    """Return ``alias`` if it can name a keystore entry, else raise ValueError.

    Aliases are 1-128 characters from ``A-Z a-z 0-9 . _ @ + -`` and start with a letter or digit
    (they become file names).
    """
    if not isinstance(alias, str) or not _ALIAS_RE.fullmatch(alias):
        raise ValueError(
            f"invalid alias {alias!r}: use 1-128 characters from A-Z a-z 0-9 . _ @ + -, "
            "starting with a letter or digit"
        )
    return alias


@dataclass(frozen=True)
class KeystoreEntry:
    """One identity as read from the keystore."""

    alias: str
    certs: list[x509.Certificate]
    private_key: PrivateKey
    metadata: dict[str, str] = field(default_factory=dict)
    encrypted_at_rest: bool = False
    path: Path | None = None


def generate_kek_file(path: str | os.PathLike[str]) -> Path:
    """Write a new random key-encryption key to ``path`` (mode 0600); never overwrites.

    Put it where a copy of the keystore does not reach (see the module docstring).
    """
    target = Path(path)
    data = (secrets.token_hex(32) + "\n").encode("ascii")
    try:
        _atomic_write(target, data, overwrite=False, what="key-encryption key")
    except FileExistsError:
        raise KeystoreError(f"{target} already exists; refusing to overwrite it") from None
    return target


def open_keystore(keystore: Keystore | str | os.PathLike[str] | None) -> Keystore:
    """``keystore`` as a :class:`Keystore`: itself, a directory path, or None for the default."""
    if isinstance(keystore, Keystore):
        return keystore
    return Keystore(keystore)


class Keystore:
    """A directory of TLS identities, by alias, with OpenSSH-style permission checks.

    ``path`` defaults to :func:`default_keystore_path`; the directory is created (0700) when
    absent unless ``create`` is False. ``kek_file`` turns on encryption at rest for keys
    written from now on and is needed to read keys written encrypted.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        kek_file: str | os.PathLike[str] | None = None,
        create: bool = True,
    ) -> None:
        self._path = Path(path) if path is not None else default_keystore_path()
        self._kek_file = Path(kek_file) if kek_file is not None else None
        self._passphrase: bytes | None = None
        if self._kek_file is not None:
            self._passphrase = _derive_passphrase(self._kek_file)
        if create:
            self._create_directory()
        self._check_directory()

    def __repr__(self) -> str:
        return f"Keystore({str(self._path)!r}, encrypted={self.encrypts_keys})"

    @property
    def path(self) -> Path:
        """The keystore directory."""
        return self._path

    @property
    def kek_file(self) -> Path | None:
        """The key-encryption-key file, if one is configured."""
        return self._kek_file

    @property
    def encrypts_keys(self) -> bool:
        """True when keys are written encrypted at rest."""
        return self._passphrase is not None

    def entry_path(self, alias: str) -> Path:
        """The file that holds (or would hold) ``alias``."""
        return self._path / (validate_alias(alias) + ENTRY_SUFFIX)

    def aliases(self) -> list[str]:
        """The aliases present, sorted."""
        self._check_directory()
        found = []
        for name in os.listdir(self._path):
            if name.endswith(ENTRY_SUFFIX) and _ALIAS_RE.fullmatch(name[: -len(ENTRY_SUFFIX)]):
                found.append(name[: -len(ENTRY_SUFFIX)])
        return sorted(found)

    def __contains__(self, alias: object) -> bool:
        if not isinstance(alias, str):
            return False
        self._check_directory()
        return os.path.lexists(self.entry_path(alias))

    def load(self, alias: str) -> KeystoreEntry | None:
        """The entry for ``alias``, or None if there is none.

        Raises :class:`KeystoreEntryError` for a corrupt entry and :class:`KeystoreError` for
        unsafe permissions or a key that cannot be decrypted.
        """
        path = self.entry_path(alias)
        self._check_directory()
        try:
            raw = _read_private_file(path, what=f"keystore entry {alias!r}")
        except FileNotFoundError:
            return None
        return self._parse_entry(alias, path, raw)

    def store(
        self,
        alias: str,
        certs: Sequence[x509.Certificate],
        private_key: PrivateKey,
        metadata: Mapping[str, str] | None = None,
        *,
        overwrite: bool = False,
    ) -> Path:
        """Write an entry atomically; refuse an existing alias unless ``overwrite``."""
        path = self.entry_path(alias)
        if not certs:
            raise ValueError("a keystore entry needs at least one certificate")
        self._check_directory()
        data = self._render_entry(alias, list(certs), private_key, dict(metadata or {}))
        try:
            _atomic_write(path, data, overwrite=overwrite, what=f"keystore entry {alias!r}")
        except FileExistsError:
            raise KeystoreError(
                f"keystore {self._path} already has an identity with alias {alias!r}"
            ) from None
        return path

    def delete(self, alias: str) -> bool:
        """Remove ``alias``; True if it existed."""
        path = self.entry_path(alias)
        self._check_directory()
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        fsync_directory(self._path)
        return True

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive advisory lock on the keystore (for read-check-write sequences)."""
        self._check_directory()
        fd = os.open(
            self._path / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- internals ---------------------------------------------------------------------------

    def _create_directory(self) -> None:
        if os.path.isdir(self._path):
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(self._path, 0o700)
        except FileExistsError:
            return
        os.chmod(self._path, 0o700)
        fsync_directory(self._path.parent)

    def _check_directory(self) -> None:
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            raise KeystoreError(f"keystore directory {self._path} does not exist") from None
        if not stat.S_ISDIR(st.st_mode):
            raise KeystoreError(f"keystore path {self._path} is not a directory")
        if st.st_uid != os.geteuid():
            raise KeystoreError(
                f"keystore directory {self._path} is owned by uid {st.st_uid}, "
                f"not by the running user (uid {os.geteuid()}); refusing to use it"
            )
        if st.st_mode & 0o077:
            raise KeystoreError(
                f"keystore directory {self._path} has mode {stat.S_IMODE(st.st_mode):04o}; "
                f"it must be 0700 (run: chmod 700 {self._path})"
            )

    def _render_entry(
        self,
        alias: str,
        certs: list[x509.Certificate],
        private_key: PrivateKey,
        metadata: dict[str, str],
    ) -> bytes:
        if not isinstance(private_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ValueError("only RSA and EC private keys can be stored")
        if private_key.public_key() != certs[0].public_key():
            raise ValueError("the private key does not match the leaf certificate")
        lines = [
            "# fieldsync keystore entry",
            f"# format: {_FORMAT_VERSION}",
            f"# alias: {alias}",
        ]
        for key, value in metadata.items():
            if key in ("format", "alias", "sha256") or not _META_KEY_RE.fullmatch(key):
                raise ValueError(f"invalid keystore metadata key {key!r}")
            value = str(value)
            if "\n" in value or "\r" in value or not value.isprintable():
                raise ValueError(f"keystore metadata {key!r} must be one printable line")
            lines.append(f"# {key}: {value}")
        encryption: serialization.KeySerializationEncryption
        if self._passphrase is not None:
            encryption = serialization.BestAvailableEncryption(self._passphrase)
        else:
            encryption = serialization.NoEncryption()
        key_pem = private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        ).decode("ascii")
        body = "\n".join(lines) + "\n" + key_pem
        body += "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certs)
        digest = hashlib.sha256(body.encode("ascii")).hexdigest()
        return (body + _CHECKSUM_PREFIX + digest + "\n").encode("ascii")

    def _parse_entry(self, alias: str, path: Path, raw: bytes) -> KeystoreEntry:
        def corrupt(problem: str) -> KeystoreEntryError:
            return KeystoreEntryError(alias, path, problem)

        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise corrupt("not a text PEM file (binary garbage)") from None
        body, sep, last = text.rstrip("\n").rpartition("\n")
        if not sep or not last.startswith(_CHECKSUM_PREFIX):
            raise corrupt("no checksum line at the end: the file is truncated or half-written")
        body += "\n"
        expected = last[len(_CHECKSUM_PREFIX) :].strip()
        if hashlib.sha256(body.encode("ascii")).hexdigest() != expected:
            raise corrupt("checksum mismatch: the file is damaged or truncated")

        header: dict[str, str] = {}
        for line in body.splitlines():
            if line.startswith("-----BEGIN"):
                break
            if line.startswith("# ") and ": " in line:
                name, _, value = line[2:].partition(": ")
                header[name] = value
        if header.get("format") != _FORMAT_VERSION:
            raise corrupt(f"unsupported entry format {header.get('format')!r}")
        if header.get("alias") != alias:
            raise corrupt(f"the file holds alias {header.get('alias')!r}, not {alias!r}")

        key_blocks: list[tuple[str, str]] = []
        cert_blocks: list[str] = []
        for match in _PEM_BLOCK_RE.finditer(body):
            label, block = match.group(1), match.group(0)
            if label in ("PRIVATE KEY", "ENCRYPTED PRIVATE KEY"):
                key_blocks.append((label, block))
            elif label == "CERTIFICATE":
                cert_blocks.append(block)
            else:
                raise corrupt(f"unexpected PEM block {label!r}")
        if len(key_blocks) != 1:
            raise corrupt(f"expected one private key block, found {len(key_blocks)}")
        if not cert_blocks:
            raise corrupt("no certificate")
        try:
            certs = [x509.load_pem_x509_certificate(b.encode("ascii")) for b in cert_blocks]
        except ValueError as exc:
            raise corrupt(f"unreadable certificate: {exc}") from None

        label, key_block = key_blocks[0]
        encrypted = label == "ENCRYPTED PRIVATE KEY"
        if encrypted and self._passphrase is None:
            raise KeystoreError(
                f"the private key of keystore entry {alias!r} ({path}) is encrypted at rest, "
                "but no key-encryption key (kek_file) is configured"
            )
        try:
            key = serialization.load_pem_private_key(
                key_block.encode("ascii"), self._passphrase if encrypted else None
            )
        except (ValueError, TypeError) as exc:
            if encrypted:
                raise KeystoreError(
                    f"cannot decrypt the private key of keystore entry {alias!r} ({path}) with "
                    f"the key-encryption key {self._kek_file}: wrong key-encryption key?"
                ) from None
            raise corrupt(f"unreadable private key: {exc}") from None
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise corrupt(f"unsupported private key type {type(key).__name__}")
        if key.public_key() != certs[0].public_key():
            raise corrupt("the private key does not match the leaf certificate")
        metadata = {k: v for k, v in header.items() if k not in ("format", "alias")}
        return KeystoreEntry(alias, certs, key, metadata, encrypted, path)


def _derive_passphrase(kek_file: Path) -> bytes:
    try:
        contents = _read_private_file(kek_file, what="key-encryption key file")
    except FileNotFoundError:
        raise KeystoreError(f"key-encryption key file {kek_file} does not exist") from None
    material = contents.strip()
    if len(material) < _MIN_KEK_BYTES:
        raise KeystoreError(
            f"key-encryption key file {kek_file} holds {len(material)} bytes; "
            f"at least {_MIN_KEK_BYTES} random bytes are needed"
        )
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEK_INFO).derive(material)
    return derived.hex().encode("ascii")


def _read_private_file(path: Path, *, what: str) -> bytes:
    """Read a secret file after checking it is a regular 0600 file of the running user."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise FileNotFoundError(str(path)) from None
        if exc.errno == errno.ELOOP:
            raise KeystoreError(
                f"{what} {path} is a symbolic link; refusing to follow it"
            ) from None
        raise KeystoreError(f"cannot open {what} {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeystoreError(f"{what} {path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise KeystoreError(
                f"{what} {path} is owned by uid {st.st_uid}, not by the running user "
                f"(uid {os.geteuid()}); refusing to use it"
            )
        if st.st_mode & 0o077:
            raise KeystoreError(
                f"{what} {path} has mode {stat.S_IMODE(st.st_mode):04o}; it must be 0600 "
                f"(run: chmod 600 {path})"
            )
        if st.st_size > _MAX_ENTRY_BYTES:
            raise KeystoreError(f"{what} {path} is too large ({st.st_size} bytes)")
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes, *, overwrite: bool, what: str) -> None:
    """Write ``data`` to ``path`` (0600) durably (``fieldsync.files.atomic_write``)."""
    try:
        atomic_write(path, data, mode=0o600, overwrite=overwrite, temp_prefix=_TEMP_PREFIX)
    except FileExistsError:
        raise
    except OSError as exc:
        raise KeystoreError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
