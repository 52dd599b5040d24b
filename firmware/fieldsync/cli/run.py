"""``fieldsync run``: open (or create) a database and serve it to phones."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from pathlib import Path

log = logging.getLogger("fieldsync.run")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="serve a database to Couchbase Lite phones (the main job)",
        description="Open or create a database and listen for Couchbase Lite replicators.",
    )
    parser.add_argument("--db", type=Path, help="database folder (default: the user data folder)")
    parser.add_argument("--name", help="the database's name in URLs (default: the folder's name)")
    parser.add_argument("--port", type=int, default=4984, help="TCP port; 0 = OS-chosen (4984)")
    parser.add_argument("--interface", help="network interface name or IP address to listen on")
    parser.add_argument(
        "--collection",
        action="append",
        default=[],
        metavar="SCOPE.NAME",
        help="serve only these collections (created if missing; repeatable)",
    )
    parser.add_argument("--read-only", action="store_true", help="refuse pushes from phones")
    parser.add_argument("--delta-sync", action="store_true", help="enable delta sync")
    tls = parser.add_argument_group("TLS and authentication")
    tls.add_argument("--no-tls", action="store_true", help="serve plain ws:// (not recommended)")
    tls.add_argument("--identity", metavar="ALIAS", help="TLS identity alias in the keystore")
    tls.add_argument("--keystore", type=Path, help="keystore folder")
    tls.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="NAME:PASSWORD",
        help="accept this user with HTTP Basic auth (repeatable)",
    )
    tls.add_argument("--users", type=Path, metavar="FILE", help="users file of name:hash lines")
    tls.add_argument(
        "--client-ca",
        action="append",
        default=[],
        type=Path,
        metavar="PEM",
        help="accept client certificates issued by this CA (repeatable)",
    )
    parser.set_defaults(func=run)


def _open_database(args: argparse.Namespace):
    from fieldsync.store import Database
    from fieldsync.store.paths import default_database_path

    path = args.db or default_database_path()
    database = Database.open(path, create=True)
    if args.name:
        database.name = args.name
    return database


def _collections(database, names: list[str]) -> list | None:
    if not names:
        return None
    return [database.collection(full_name, create=True) for full_name in names]


def _authenticator(args: argparse.Namespace):
    from fieldsync.listener.auth import (
        ListenerCertificateAuthenticator,
        ListenerPasswordAuthenticator,
        hash_password,
        load_users_file,
    )

    if args.client_ca:
        from cryptography import x509

        roots = []
        for path in args.client_ca:
            roots.extend(x509.load_pem_x509_certificates(path.read_bytes()))
        return ListenerCertificateAuthenticator(roots)
    users: dict[str, str] = {}
    if args.users:
        users.update(load_users_file(args.users))
    for entry in args.user:
        name, sep, password = entry.partition(":")
        if not sep or not name:
            raise SystemExit(f"fieldsync run: --user wants NAME:PASSWORD, got {entry!r}")
        users[name] = hash_password(password)
    if users:
        return ListenerPasswordAuthenticator.from_users(users)
    return None


def run(args: argparse.Namespace) -> int:
    from fieldsync.listener import URLEndpointListener, URLEndpointListenerConfiguration
    from fieldsync.listener.sockets import InterfaceError

    database = _open_database(args)
    collections = _collections(database, args.collection)
    identity = None
    keystore = None
    if not args.no_tls:
        from fieldsync.tls.identity import TLSIdentity
        from fieldsync.tls.keystore import Keystore, default_keystore_path

        keystore = Keystore(args.keystore or default_keystore_path())
        if args.identity:
            identity = TLSIdentity.get_identity(args.identity, keystore=keystore)
            if identity is None:
                print(f"fieldsync run: no TLS identity {args.identity!r} in {keystore.path}")
                return 1
    config = URLEndpointListenerConfiguration(
        database=None if collections else database,
        collections=collections,
        port=args.port,
        network_interface=args.interface,
        disable_tls=args.no_tls,
        tls_identity=identity,
        keystore=keystore,
        authenticator=_authenticator(args),
        enable_delta_sync=args.delta_sync,
        read_only=args.read_only,
    )
    listener = URLEndpointListener(config)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
        await listener.start()
        _print_banner(database, listener, config)
        try:
            await stop.wait()
        finally:
            print("fieldsync: stopping", flush=True)
            await listener.stop()

    try:
        _run_loop(serve())
    except (OSError, InterfaceError) as exc:
        print(f"fieldsync run: cannot listen: {exc}")
        return 1
    finally:
        database.close()
    return 0


def _run_loop(coro) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but optional on odd platforms
        asyncio.run(coro)
        return
    uvloop.run(coro)


def _print_banner(database, listener, config) -> None:
    counts = ", ".join(
        f"{c.full_name} ({c.count()} docs)" for c in (config.collections or database.collections())
    )
    print(f"fieldsync: database {database.name!r} at {database.path}", flush=True)
    print(f"fieldsync: collections: {counts}", flush=True)
    print(f"fieldsync: listening on port {listener.port}", flush=True)
    for url in listener.urls:
        print(f"fieldsync:   {url}", flush=True)
    if config.disable_tls:
        print("fieldsync: WARNING: TLS is off: traffic and passwords travel in clear", flush=True)
    else:
        identity = listener.tls_identity
        print(f"fieldsync: TLS certificate SHA-256 {identity.fingerprint_sha256}", flush=True)
    if config.authenticator is None:
        print("fieldsync: WARNING: no authentication: every client is accepted", flush=True)
    if config.read_only:
        print("fieldsync: read-only: phones can pull but not push", flush=True)
    _print_pairing_code(database, listener, config)
    print("fieldsync: press Ctrl-C to stop", flush=True)


def _print_pairing_code(database, listener, config) -> None:
    """The connection details as a QR code for a phone app (fieldsync.pairing)."""
    import sys

    from fieldsync.pairing import encode, pairing_info, print_terminal

    if not listener.urls:
        return
    fingerprint = None if config.disable_tls else listener.tls_identity.fingerprint_sha256
    print("fieldsync: pairing code (scan with the app):", flush=True)
    print_terminal(encode(pairing_info(listener.urls, [database.name], fingerprint)), sys.stdout)
