"""``fieldsync identity``: manage the TLS identities in the device keystore."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from fieldsync.cli.common import CommandError
from fieldsync.tls.identity import (
    CERT_ATTR_COMMON_NAME,
    CERT_ATTR_EMAIL_ADDRESS,
    CERT_ATTR_HOSTNAME,
    CERT_ATTR_IP_ADDRESS,
    CERT_ATTR_ORGANIZATION,
    CERT_ATTR_ORGANIZATION_UNIT,
    TLSIdentity,
    TLSIdentityError,
)
from fieldsync.tls.keystore import (
    Keystore,
    KeystoreError,
    default_keystore_path,
    generate_kek_file,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``identity`` and its subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--keystore",
        metavar="DIR",
        type=Path,
        help=f"keystore directory (default: {default_keystore_path()})",
    )
    common.add_argument(
        "--kek-file",
        metavar="FILE",
        type=Path,
        help="key-encryption-key file: keys are stored encrypted with it (and need it to load)",
    )
    parser = subparsers.add_parser(
        "identity", help="manage TLS identities (certificate + private key) in the keystore"
    )
    parser.set_defaults(func=lambda _args: _usage(parser))
    commands = parser.add_subparsers(dest="identity_command", metavar="SUBCOMMAND")

    create = commands.add_parser("create", parents=[common], help="create a self-signed identity")
    create.add_argument("--alias", required=True, help="name of the identity in the keystore")
    create.add_argument("--cn", required=True, help="subject common name")
    create.add_argument("--org", help="subject organization (O)")
    create.add_argument("--ou", help="subject organizational unit (OU)")
    create.add_argument("--dns", action="append", default=[], help="DNS name (repeatable)")
    create.add_argument("--ip", action="append", default=[], help="IP address (repeatable)")
    create.add_argument("--email", help="e-mail address (subject alternative name)")
    create.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    create.add_argument("--key-type", choices=("rsa", "ec"), default="rsa", help="default rsa")
    create.add_argument(
        "--client", action="store_true", help="a client identity (default: server identity)"
    )
    create.set_defaults(func=_guarded(_create))

    imp = commands.add_parser("import", parents=[common], help="import a PKCS#12 (.p12) file")
    imp.add_argument("--alias", required=True, help="name of the identity in the keystore")
    secret = imp.add_mutually_exclusive_group()
    secret.add_argument("--password", help="PKCS#12 password (visible to other local users!)")
    secret.add_argument(
        "--password-file", metavar="FILE", help="read the password from FILE ('-': stdin)"
    )
    imp.add_argument("file", type=Path, help="the PKCS#12 file")
    imp.set_defaults(func=_guarded(_import))

    lst = commands.add_parser("list", parents=[common], help="list the stored identities")
    lst.set_defaults(func=_guarded(_list))

    show = commands.add_parser("show", parents=[common], help="show one identity in detail")
    show.add_argument("alias")
    show.set_defaults(func=_guarded(_show))

    export = commands.add_parser(
        "export", parents=[common], help="write an identity's certificate chain (PEM)"
    )
    export.add_argument("alias")
    export.add_argument("--out", type=Path, help="output file (default: standard output)")
    export.add_argument("--leaf-only", action="store_true", help="only the identity's own cert")
    export.add_argument(
        "--qr",
        type=Path,
        metavar="FILE.png",
        help="instead, write a pairing QR code (PNG) with this certificate's SHA-256 and the "
        "URLs (--url, else those of the running agent serving this identity)",
    )
    export.add_argument(
        "--url",
        action="append",
        default=[],
        help="with --qr: a wss://host:port/database URL for the code (repeatable)",
    )
    export.set_defaults(func=_guarded(_export))

    delete = commands.add_parser("delete", parents=[common], help="delete an identity")
    delete.add_argument("alias")
    delete.set_defaults(func=_guarded(_delete))

    kek = commands.add_parser(
        "generate-kek",
        help="write a new random key-encryption-key file (mode 0600) for --kek-file",
    )
    kek.add_argument("path", type=Path)
    kek.set_defaults(func=_guarded(_generate_kek))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run ``handler``; expected failures become one line on stderr and exit status 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (CommandError, KeystoreError, TLSIdentityError, ValueError, OSError) as exc:
            message = str(exc) or type(exc).__name__
            if isinstance(exc, OSError) and exc.filename and exc.strerror:
                message = f"{exc.filename}: {exc.strerror}"
            print(f"fieldsync identity {args.identity_command}: error: {message}", file=sys.stderr)
            return 1

    return run


def _keystore(args: argparse.Namespace, *, create: bool = False) -> Keystore:
    return Keystore(args.keystore, kek_file=args.kek_file, create=create)


def _create(args: argparse.Namespace) -> int:
    if args.days < 1:
        raise CommandError("--days must be at least 1")
    attributes: dict[str, Any] = {CERT_ATTR_COMMON_NAME: args.cn}
    if args.org:
        attributes[CERT_ATTR_ORGANIZATION] = args.org
    if args.ou:
        attributes[CERT_ATTR_ORGANIZATION_UNIT] = args.ou
    if args.dns:
        attributes[CERT_ATTR_HOSTNAME] = args.dns
    if args.ip:
        for value in args.ip:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise CommandError(f"--ip {value!r} is not an IP address") from None
        attributes[CERT_ATTR_IP_ADDRESS] = args.ip
    if args.email:
        attributes[CERT_ATTR_EMAIL_ADDRESS] = args.email
    keystore = _keystore(args, create=True)
    if args.alias in keystore:
        raise CommandError(f"keystore {keystore.path} already has an identity {args.alias!r}")
    expiration = dt.datetime.now(dt.UTC) + dt.timedelta(days=args.days)
    identity = TLSIdentity.create_identity(
        not args.client,
        attributes,
        expiration,
        args.alias,
        keystore=keystore,
        key_type=args.key_type,
    )
    print(f"created {args.alias}: {identity.subject}, expires {_when(identity.expiration)}")
    print(f"SHA-256 fingerprint: {identity.fingerprint_sha256}")
    return 0


def _import(args: argparse.Namespace) -> int:
    password: bytes | None = None
    if args.password is not None:
        password = args.password.encode("utf-8")
    elif args.password_file is not None:
        if args.password_file == "-":
            raw = sys.stdin.buffer.read()
        else:
            raw = Path(args.password_file).read_bytes()
        password = raw[:-1] if raw.endswith(b"\n") else raw
        password = password[:-1] if password.endswith(b"\r") else password
    data = args.file.read_bytes()
    identity = TLSIdentity.import_identity(
        data, password, args.alias, keystore=_keystore(args, create=True)
    )
    print(f"imported {args.alias}: {identity.subject}, expires {_when(identity.expiration)}")
    print(f"SHA-256 fingerprint: {identity.fingerprint_sha256}")
    return 0


def _list(args: argparse.Namespace) -> int:
    keystore = _keystore(args)
    aliases = keystore.aliases()
    if not aliases:
        print(f"no identities in {keystore.path}")
        return 0
    rows = [("ALIAS", "PURPOSE", "EXPIRES", "SUBJECT", "SHA-256 FINGERPRINT")]
    failures = 0
    for alias in aliases:
        try:
            identity = TLSIdentity.get_identity(alias, keystore=keystore)
        except KeystoreError as exc:
            print(f"fieldsync identity list: error: {exc}", file=sys.stderr)
            failures += 1
            continue
        if identity is None:  # deleted meanwhile
            continue
        purpose = "+".join(sorted(identity.purposes)) or "-"
        rows.append(
            (
                alias,
                purpose,
                _when(identity.expiration),
                identity.subject,
                identity.fingerprint_sha256,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
            + "  "
            + row[4]
        )
    return 1 if failures else 0


def _show(args: argparse.Namespace) -> int:
    keystore = _keystore(args)
    entry = keystore.load(args.alias)
    if entry is None:
        raise CommandError(f"no identity {args.alias!r} in {keystore.path}")
    identity = TLSIdentity(entry.certs, entry.private_key, alias=args.alias)
    leaf = identity.leaf
    now = dt.datetime.now(dt.UTC)
    status = "EXPIRED" if identity.expiration <= now else "valid"
    lines = [
        ("alias", args.alias),
        ("file", str(entry.path)),
        ("subject", identity.subject),
        ("issuer", leaf.issuer.rfc4514_string()),
        ("serial", f"{leaf.serial_number:x}"),
        ("not before", _when(leaf.not_valid_before_utc)),
        ("not after", f"{_when(identity.expiration)} ({status})"),
        ("key", identity.key_description),
        ("key at rest", "encrypted" if entry.encrypted_at_rest else "not encrypted"),
        ("purpose", ", ".join(sorted(identity.purposes)) or "-"),
        ("extended key usage", _eku(leaf)),
        ("alternative names", _sans(leaf)),
        ("chain length", str(len(entry.certs))),
        ("SHA-256 fingerprint", identity.fingerprint_sha256),
    ]
    lines += [(key, value) for key, value in entry.metadata.items()]
    width = max(len(key) for key, _ in lines)
    for key, value in lines:
        print(f"{key.ljust(width)}  {value}")
    return 0


def _export(args: argparse.Namespace) -> int:
    keystore = _keystore(args)
    identity = TLSIdentity.get_identity(args.alias, keystore=keystore)
    if identity is None:
        raise CommandError(f"no identity {args.alias!r} in {keystore.path}")
    if args.qr is not None:
        return _export_qr(args, identity)
    pem = identity.certificate_pem(chain=not args.leaf_only)
    if args.out is None:
        sys.stdout.write(pem)
    else:
        args.out.write_text(pem, encoding="ascii")
    return 0


def _export_qr(args: argparse.Namespace, identity: TLSIdentity) -> int:
    """``export --qr FILE.png``: the pairing payload of this identity as a PNG image."""
    from urllib.parse import urlsplit

    from fieldsync.pairing import PairingError, encode, pairing_info, write_png

    urls = list(args.url)
    if not urls:
        urls = _agent_urls(identity.fingerprint_sha256)
    if not urls:
        raise CommandError(
            "no URLs for the code: the agent is not serving this identity; give --url "
            "wss://HOST:PORT/DATABASE"
        )
    databases = [urlsplit(url).path.strip("/").split("/")[0] for url in urls]
    try:
        payload = encode(
            pairing_info(urls, [d for d in databases if d], identity.fingerprint_sha256)
        )
    except PairingError as exc:
        raise CommandError(str(exc)) from None
    write_png(payload, args.qr)
    print(f"wrote {args.qr}: {payload}")
    return 0


def _agent_urls(fingerprint: str) -> list[str]:
    """The running agent's URLs when it serves the identity with this fingerprint, else []."""
    from fieldsync.agent.control import ControlError, query_status
    from fieldsync.cli.status import default_socket_path

    try:
        document = query_status(default_socket_path())
    except ControlError:
        return []
    if ((document.get("tls") or {}).get("fingerprint") or "") != fingerprint:
        return []
    return [str(url) for url in document.get("urls") or []]


def _delete(args: argparse.Namespace) -> int:
    keystore = _keystore(args)
    if not TLSIdentity.delete_identity(args.alias, keystore=keystore):
        raise CommandError(f"no identity {args.alias!r} in {keystore.path}")
    print(f"deleted {args.alias}")
    return 0


def _generate_kek(args: argparse.Namespace) -> int:
    path = generate_kek_file(args.path)
    print(f"wrote key-encryption key {path} (keep it off the keystore's partition)")
    return 0


def _when(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _eku(cert: x509.Certificate) -> str:
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return "(none: any)"
    names = {
        ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
        ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    }
    return ", ".join(names.get(oid, oid.dotted_string) for oid in usages)


def _sans(cert: x509.Certificate) -> str:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "-"
    return ", ".join(f"{type(n).__name__}:{n.value}" for n in names)
