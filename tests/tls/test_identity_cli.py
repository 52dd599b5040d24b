"""``fieldsync identity ...`` through ``fieldsync.cli.main.main``."""

from __future__ import annotations

import io
import ipaddress
import os
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from fieldsync.cli.main import main
from fieldsync.tls.identity import TLSIdentity
from fieldsync.tls.keystore import Keystore


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_create_list_show_export_delete(
    capsys: pytest.CaptureFixture[str], keystore_dir: Path, tmp_path: Path
) -> None:
    ks = str(keystore_dir)
    status, out, err = run(
        capsys,
        "identity", "create", "--keystore", ks, "--alias", "device", "--cn", "field-01",
        "--org", "Acme", "--ou", "Field", "--dns", "field-01.local", "--dns", "field.local",
        "--ip", "192.0.2.10", "--ip", "fe80::1", "--email", "ops@example.com",
        "--days", "30", "--key-type", "ec",
    )  # fmt: skip
    assert status == 0, err
    assert "created device: CN=field-01,OU=Field,O=Acme" in out
    identity = TLSIdentity.get_identity("device", keystore=keystore_dir)
    assert identity is not None
    assert identity.purposes == {"server"}
    assert identity.key_description == "EC-secp256r1"
    san = identity.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["field-01.local", "field.local"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.0.2.10"),
        ipaddress.ip_address("fe80::1"),
    ]
    assert san.get_values_for_type(x509.RFC822Name) == ["ops@example.com"]
    assert identity.fingerprint_sha256 in out

    status, out, err = run(
        capsys, "identity", "create", "--keystore", ks, "--alias", "phone", "--cn", "phone",
        "--client", "--key-type", "ec",
    )  # fmt: skip
    assert status == 0, err
    phone = TLSIdentity.get_identity("phone", keystore=keystore_dir)
    assert phone is not None and phone.purposes == {"client"}

    status, out, _ = run(capsys, "identity", "list", "--keystore", ks)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ALIAS", "PURPOSE", "EXPIRES", "SUBJECT", "SHA-256", "FINGERPRINT"]
    assert lines[1].startswith("device ") and "server" in lines[1]
    assert identity.fingerprint_sha256 in lines[1]
    assert lines[2].startswith("phone ") and "client" in lines[2]

    status, out, _ = run(capsys, "identity", "show", "--keystore", ks, "device")
    assert status == 0
    assert "subject" in out and "CN=field-01,OU=Field,O=Acme" in out
    assert "serverAuth" in out and "DNSName:field-01.local" in out
    assert "not encrypted" in out and "(valid)" in out

    status, out, _ = run(capsys, "identity", "export", "--keystore", ks, "device")
    assert status == 0
    assert x509.load_pem_x509_certificates(out.encode()) == identity.certs
    target = tmp_path / "device.crt"
    status, out, _ = run(
        capsys, "identity", "export", "--keystore", ks, "device", "--out", str(target)
    )
    assert status == 0 and out == ""
    assert x509.load_pem_x509_certificate(target.read_bytes()) == identity.leaf
    assert b"PRIVATE KEY" not in target.read_bytes()

    status, out, _ = run(capsys, "identity", "delete", "--keystore", ks, "device")
    assert status == 0 and "deleted device" in out
    assert Keystore(keystore_dir).aliases() == ["phone"]


def test_import_with_password_file_and_stdin(
    capsys: pytest.CaptureFixture[str],
    keystore_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = TLSIdentity.create_identity(False, {"CN": "imported"}, key_type="ec")
    p12 = tmp_path / "phone.p12"
    p12.write_bytes(source.to_pkcs12("pa:ss wörd"))
    password_file = tmp_path / "password"
    password_file.write_text("pa:ss wörd\n")
    ks = str(keystore_dir)
    status, out, err = run(
        capsys, "identity", "import", "--keystore", ks, "--alias", "one",
        "--password-file", str(password_file), str(p12),
    )  # fmt: skip
    assert status == 0, err
    assert source.fingerprint_sha256 in out

    class FakeStdin:
        buffer = io.BytesIO("pa:ss wörd\n".encode())

    monkeypatch.setattr(sys, "stdin", FakeStdin())
    status, _, err = run(
        capsys, "identity", "import", "--keystore", ks, "--alias", "two",
        "--password-file", "-", str(p12),
    )  # fmt: skip
    assert status == 0, err
    status, _, err = run(
        capsys, "identity", "import", "--keystore", ks, "--alias", "three",
        "--password", "pa:ss wörd", str(p12),
    )  # fmt: skip
    assert status == 0, err
    assert Keystore(keystore_dir).aliases() == ["one", "three", "two"]


def test_import_errors(
    capsys: pytest.CaptureFixture[str], keystore_dir: Path, tmp_path: Path
) -> None:
    source = TLSIdentity.create_identity(False, {"CN": "x"}, key_type="ec")
    p12 = tmp_path / "x.p12"
    p12.write_bytes(source.to_pkcs12("right"))
    ks = str(keystore_dir)
    status, out, err = run(
        capsys, "identity", "import", "--keystore", ks, "--alias", "x", "--password", "wrong",
        str(p12),
    )  # fmt: skip
    assert status == 1 and out == ""
    assert err.strip() == (
        "fieldsync identity import: error: cannot open the PKCS#12 file: wrong password "
        "(or damaged contents)"
    )
    assert len(err.strip().splitlines()) == 1

    status, _, err = run(
        capsys, "identity", "import", "--keystore", ks, "--alias", "x", "--password", "right",
        str(tmp_path / "absent.p12"),
    )  # fmt: skip
    assert status == 1 and "absent.p12: No such file or directory" in err

    no_key = tmp_path / "nokey.p12"
    no_key.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"x", None, source.leaf, None, serialization.BestAvailableEncryption(b"pw")
        )
    )
    status, _, err = run(
        capsys, "identity", "import", "--keystore", ks, "--alias", "x", "--password", "pw",
        str(no_key),
    )  # fmt: skip
    assert status == 1 and "contains no private key" in err


def test_errors_are_one_line_and_non_zero(
    capsys: pytest.CaptureFixture[str], keystore_dir: Path
) -> None:
    ks = str(keystore_dir)
    assert run(capsys, "identity", "create", "--keystore", ks, "--alias", "a", "--cn", "a",
               "--key-type", "ec")[0] == 0  # fmt: skip
    cases = [
        (["create", "--alias", "a", "--cn", "again"], "already has an identity 'a'"),
        (["create", "--alias", "b", "--cn", "b", "--ip", "not-an-ip"], "is not an IP address"),
        (["create", "--alias", "b", "--cn", "b", "--days", "0"], "--days must be at least 1"),
        (["create", "--alias", "bad/alias", "--cn", "b"], "invalid alias"),
        (["show", "missing"], "no identity 'missing'"),
        (["export", "missing"], "no identity 'missing'"),
        (["delete", "missing"], "no identity 'missing'"),
    ]
    for argv, expected in cases:
        status, _, err = run(capsys, "identity", argv[0], "--keystore", ks, *argv[1:])
        assert status == 1, argv
        assert expected in err, (argv, err)
        assert len(err.strip().splitlines()) == 1
        assert err.startswith(f"fieldsync identity {argv[0]}: error: ")

    os.chmod(keystore_dir, 0o755)
    status, _, err = run(capsys, "identity", "list", "--keystore", ks)
    assert status == 1 and "must be 0700" in err
    os.chmod(keystore_dir, 0o700)

    status, _, err = run(capsys, "identity", "list", "--keystore", str(keystore_dir / "nope"))
    assert status == 1 and "does not exist" in err


def test_list_reports_a_corrupt_entry_and_continues(
    capsys: pytest.CaptureFixture[str], keystore_dir: Path
) -> None:
    ks = str(keystore_dir)
    for alias in ("good", "hurt"):
        assert run(capsys, "identity", "create", "--keystore", ks, "--alias", alias, "--cn",
                   alias, "--key-type", "ec")[0] == 0  # fmt: skip
    path = keystore_dir / "hurt.pem"
    path.write_bytes(path.read_bytes()[:-100])
    status, out, err = run(capsys, "identity", "list", "--keystore", ks)
    assert status == 1
    assert "good" in out and "hurt " not in out
    assert "'hurt'" in err and str(path) in err


def test_encrypted_keystore_through_the_cli(
    capsys: pytest.CaptureFixture[str], keystore_dir: Path, tmp_path: Path
) -> None:
    kek = tmp_path / "kek"
    status, out, _ = run(capsys, "identity", "generate-kek", str(kek))
    assert status == 0 and str(kek) in out
    ks = str(keystore_dir)
    status, _, err = run(
        capsys, "identity", "create", "--keystore", ks, "--kek-file", str(kek), "--alias", "d",
        "--cn", "d", "--key-type", "ec",
    )  # fmt: skip
    assert status == 0, err
    assert b"ENCRYPTED PRIVATE KEY" in (keystore_dir / "d.pem").read_bytes()
    status, out, _ = run(capsys, "identity", "show", "--keystore", ks, "--kek-file", str(kek), "d")
    assert status == 0 and "encrypted" in out and "not encrypted" not in out
    status, _, err = run(capsys, "identity", "show", "--keystore", ks, "d")
    assert status == 1 and "no key-encryption key" in err
    status, _, err = run(capsys, "identity", "generate-kek", str(kek))
    assert status == 1 and "already exists" in err


def test_client_identity_eku(capsys: pytest.CaptureFixture[str], keystore_dir: Path) -> None:
    status, _, _ = run(
        capsys, "identity", "create", "--keystore", str(keystore_dir), "--alias", "c", "--cn",
        "c", "--client", "--key-type", "ec",
    )  # fmt: skip
    assert status == 0
    identity = TLSIdentity.get_identity("c", keystore=keystore_dir)
    assert identity is not None
    eku = identity.leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_bare_identity_command_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "identity")
    assert status == 2 and "create" in err
