"""The keystore: permissions, atomic writes, corruption detection, encryption at rest."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from fieldsync.tls import keystore as keystore_module
from fieldsync.tls.identity import TLSIdentity
from fieldsync.tls.keystore import (
    Keystore,
    KeystoreEntryError,
    KeystoreError,
    default_keystore_path,
    generate_kek_file,
)


def _ec_identity(cn: str = "device") -> TLSIdentity:
    return TLSIdentity.create_identity(True, {"CN": cn}, key_type="ec")


def _nobody() -> int:
    return pwd.getpwnam("nobody").pw_uid


def test_default_path_for_root_is_var_lib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_keystore_path() == Path("/var/lib/fieldsync/keys")


def test_default_path_for_a_user_follows_xdg(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_keystore_path() == tmp_path / "data" / "fieldsync" / "keys"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_keystore_path() == tmp_path / "home" / ".local/share/fieldsync/keys"


def test_directory_is_created_0700(tmp_path: Path) -> None:
    store = Keystore(tmp_path / "a" / "b" / "keys")
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o700
    assert store.aliases() == []


def test_missing_directory_without_create_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="does not exist"):
        Keystore(tmp_path / "absent", create=False)


def test_group_readable_directory_is_refused(keystore_dir: Path) -> None:
    Keystore(keystore_dir)
    os.chmod(keystore_dir, 0o755)
    with pytest.raises(KeystoreError, match=r"mode 0755; it must be 0700"):
        Keystore(keystore_dir)


def test_directory_of_another_owner_is_refused(keystore_dir: Path) -> None:
    Keystore(keystore_dir)
    os.chown(keystore_dir, _nobody(), -1)
    with pytest.raises(KeystoreError, match=r"owned by uid .* not by the running user"):
        Keystore(keystore_dir)


def test_entry_is_written_0600_and_read_back(keystore: Keystore) -> None:
    identity = _ec_identity()
    path = keystore.store("device", identity.certs, identity.private_key, {"kind": "server"})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    entry = keystore.load("device")
    assert entry is not None
    assert entry.certs == identity.certs
    assert entry.private_key.private_numbers() == identity.private_key.private_numbers()
    assert entry.metadata == {"kind": "server"}
    assert entry.encrypted_at_rest is False
    assert keystore.aliases() == ["device"]
    assert "device" in keystore
    # no temporary file is left behind
    assert sorted(os.listdir(keystore.path)) == ["device.pem"]


def test_world_readable_key_file_is_refused(keystore: Keystore) -> None:
    identity = _ec_identity()
    path = keystore.store("device", identity.certs, identity.private_key)
    os.chmod(path, 0o644)
    with pytest.raises(KeystoreError, match=r"mode 0644; it must be 0600") as info:
        keystore.load("device")
    assert str(path) in str(info.value)


def test_key_file_of_another_owner_is_refused(keystore: Keystore) -> None:
    identity = _ec_identity()
    path = keystore.store("device", identity.certs, identity.private_key)
    os.chown(path, _nobody(), -1)
    with pytest.raises(KeystoreError, match="owned by uid"):
        keystore.load("device")


def test_symlinked_entry_is_refused(keystore: Keystore, tmp_path: Path) -> None:
    identity = _ec_identity()
    real = keystore.store("real", identity.certs, identity.private_key)
    os.symlink(real, keystore.path / "link.pem")
    with pytest.raises(KeystoreError, match="symbolic link"):
        keystore.load("link")


def test_existing_alias_is_not_overwritten(keystore: Keystore) -> None:
    first, second = _ec_identity("one"), _ec_identity("two")
    keystore.store("device", first.certs, first.private_key)
    with pytest.raises(KeystoreError, match="already has an identity with alias 'device'"):
        keystore.store("device", second.certs, second.private_key)
    entry = keystore.load("device")
    assert entry is not None and entry.certs == first.certs
    keystore.store("device", second.certs, second.private_key, overwrite=True)
    entry = keystore.load("device")
    assert entry is not None and entry.certs == second.certs
    assert sorted(os.listdir(keystore.path)) == ["device.pem"]


def test_mismatched_key_is_not_stored(keystore: Keystore) -> None:
    one, two = _ec_identity("one"), _ec_identity("two")
    with pytest.raises(ValueError, match="does not match"):
        keystore.store("device", one.certs, two.private_key)
    assert keystore.aliases() == []


@pytest.mark.parametrize("alias", ["", ".hidden", "a/b", "../up", "x" * 129, "sp ace"])
def test_invalid_aliases_are_refused(keystore: Keystore, alias: str) -> None:
    identity = _ec_identity()
    with pytest.raises(ValueError, match="invalid alias"):
        keystore.store(alias, identity.certs, identity.private_key)


def test_absent_alias_loads_as_none_and_delete_reports_it(keystore: Keystore) -> None:
    assert keystore.load("nothing") is None
    assert keystore.delete("nothing") is False
    identity = _ec_identity()
    keystore.store("device", identity.certs, identity.private_key)
    assert keystore.delete("device") is True
    assert keystore.load("device") is None


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_entry_is_reported_with_alias_and_file(keystore: Keystore, keep: float) -> None:
    identity = _ec_identity()
    path = keystore.store("device", identity.certs, identity.private_key)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(KeystoreEntryError) as info:
        keystore.load("device")
    message = str(info.value)
    assert "'device'" in message and str(path) in message
    assert "truncated" in message


def test_truncated_at_a_pem_boundary_is_still_detected(keystore: Keystore) -> None:
    identity = _ec_identity()
    path = keystore.store("device", identity.certs, identity.private_key)
    text = path.read_text()
    cut = text.index("-----END PRIVATE KEY-----\n") + len("-----END PRIVATE KEY-----\n")
    path.write_text(text[:cut])
    with pytest.raises(KeystoreEntryError, match="truncated or half-written"):
        keystore.load("device")


def test_flipped_byte_is_detected(keystore: Keystore) -> None:
    identity = _ec_identity()
    path = keystore.store("device", identity.certs, identity.private_key)
    data = bytearray(path.read_bytes())
    middle = data.index(b"CERTIFICATE-----\n") + 40
    data[middle] = ord("A") if data[middle] != ord("A") else ord("B")
    path.write_bytes(bytes(data))
    with pytest.raises(KeystoreEntryError, match="checksum mismatch"):
        keystore.load("device")


def test_binary_garbage_is_reported(keystore: Keystore) -> None:
    path = keystore.path / "junk.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, os.urandom(300) + b"\xff")
    os.close(fd)
    with pytest.raises(KeystoreEntryError, match="junk"):
        keystore.load("junk")


def test_renamed_entry_is_reported(keystore: Keystore) -> None:
    identity = _ec_identity()
    path = keystore.store("device", identity.certs, identity.private_key)
    os.rename(path, keystore.path / "other.pem")
    with pytest.raises(KeystoreEntryError, match="holds alias 'device', not 'other'"):
        keystore.load("other")


def test_temporary_files_are_not_aliases(keystore: Keystore) -> None:
    (keystore.path / ".tmp-abc123").write_bytes(b"half")
    assert keystore.aliases() == []


# -- encryption at rest ------------------------------------------------------------------------


def test_kek_encrypts_the_key_at_rest(tmp_path: Path, keystore_dir: Path) -> None:
    kek = generate_kek_file(tmp_path / "kek")
    assert stat.S_IMODE(os.stat(kek).st_mode) == 0o600
    store = Keystore(keystore_dir, kek_file=kek)
    assert store.encrypts_keys
    identity = _ec_identity()
    path = store.store("device", identity.certs, identity.private_key)
    text = path.read_text()
    assert "-----BEGIN ENCRYPTED PRIVATE KEY-----" in text
    assert "-----BEGIN PRIVATE KEY-----" not in text

    entry = Keystore(keystore_dir, kek_file=kek).load("device")
    assert entry is not None and entry.encrypted_at_rest
    assert entry.private_key.private_numbers() == identity.private_key.private_numbers()

    with pytest.raises(KeystoreError, match="encrypted at rest, but no key-encryption key"):
        Keystore(keystore_dir).load("device")

    other = generate_kek_file(tmp_path / "other-kek")
    with pytest.raises(KeystoreError, match="wrong key-encryption key") as info:
        Keystore(keystore_dir, kek_file=other).load("device")
    assert not isinstance(info.value, KeystoreEntryError)


def test_plain_entries_still_load_with_a_kek(tmp_path: Path, keystore: Keystore) -> None:
    identity = _ec_identity()
    keystore.store("device", identity.certs, identity.private_key)
    kek = generate_kek_file(tmp_path / "kek")
    entry = Keystore(keystore.path, kek_file=kek).load("device")
    assert entry is not None and entry.encrypted_at_rest is False


def test_kek_file_checks(tmp_path: Path, keystore_dir: Path) -> None:
    kek = generate_kek_file(tmp_path / "kek")
    with pytest.raises(KeystoreError, match="already exists"):
        generate_kek_file(kek)
    os.chmod(kek, 0o644)
    with pytest.raises(KeystoreError, match=r"key-encryption key file .* mode 0644"):
        Keystore(keystore_dir, kek_file=kek)
    short = tmp_path / "short"
    fd = os.open(short, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"tooshort\n")
    os.close(fd)
    with pytest.raises(KeystoreError, match="at least 32 random bytes"):
        Keystore(keystore_dir, kek_file=short)
    with pytest.raises(KeystoreError, match="does not exist"):
        Keystore(keystore_dir, kek_file=tmp_path / "absent")


def test_write_failure_leaves_the_old_entry(
    keystore: Keystore, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = _ec_identity("one"), _ec_identity("two")
    keystore.store("device", first.certs, first.private_key)

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keystore_module.os, "fsync", failing_fsync)
    with pytest.raises(KeystoreError, match="No space left"):
        keystore.store("device", second.certs, second.private_key, overwrite=True)
    monkeypatch.undo()
    entry = keystore.load("device")
    assert entry is not None and entry.certs == first.certs
    assert sorted(os.listdir(keystore.path)) == ["device.pem"]
