"""``fieldsync run``: open (or create) a database and serve it to phones."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from fieldsync.cli.common import add_collection_option
from fieldsync.cli.main import LOG_FORMAT
from fieldsync.listener import URLEndpointListener, URLEndpointListenerConfiguration
from fieldsync.listener.assembly import (
    AssemblyError,
    ServeSettings,
    assemble,
    run_event_loop,
    served_collections,
)
from fieldsync.listener.auth import load_users_file
from fieldsync.listener.config import DEFAULT_PORT
from fieldsync.listener.passwords import hash_password
from fieldsync.listener.prefork import serve_in_workers
from fieldsync.store import Database, StoreError
from fieldsync.store.housekeeper import Housekeeper
from fieldsync.store.paths import default_database_path
from fieldsync.tls import DEFAULT_SERVER_ALIAS

log = logging.getLogger("fieldsync.run")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="serve a database to Couchbase Lite phones (the main job)",
        description="Open or create a database and listen for Couchbase Lite replicators.",
    )
    parser.add_argument("--db", type=Path, help="database folder (default: the user data folder)")
    parser.add_argument("--name", help="the database's name in URLs (default: the folder's name)")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"TCP port; 0 = OS-chosen ({DEFAULT_PORT})",
    )
    parser.add_argument("--interface", help="network interface name or IP address to listen on")
    add_collection_option(parser, "serve only these collections (created if missing; repeatable)")
    parser.add_argument(
        "--workers",
        type=_whole_number(1),
        default=1,
        metavar="N",
        help="serve from N processes sharing the port, to use N cores with several phones "
        "(default 1)",
    )
    parser.add_argument("--read-only", action="store_true", help="refuse pushes from phones")
    parser.add_argument("--delta-sync", action="store_true", help="enable delta sync")
    parser.add_argument(
        "--reserve-free-mb",
        type=_whole_number(0, " of MiB"),
        metavar="MB",
        help="refuse pushes while less than MB MiB are free on the database's disk "
        "(default 64; 0 = no reserve)",
    )
    tls = parser.add_argument_group("TLS and authentication")
    tls.add_argument("--no-tls", action="store_true", help="serve plain ws:// (not recommended)")
    tls.add_argument("--identity", metavar="ALIAS", help="TLS identity alias in the keystore")
    tls.add_argument("--keystore", type=Path, help="keystore folder")
    tls.add_argument(
        "--kek-file",
        type=Path,
        metavar="FILE",
        help="key-encryption-key file, to use identities stored encrypted (fieldsync identity)",
    )
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


def _whole_number(minimum: int, unit: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number (of ``unit``) of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number{unit}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, not {value}")
        return value

    return parse


def _settings(args: argparse.Namespace) -> ServeSettings:
    users: dict[str, str] = {}
    if args.users:
        try:
            users.update(load_users_file(args.users))
        except (OSError, ValueError) as exc:
            raise AssemblyError(f"--users: {exc}") from None
    for entry in args.user:
        name, sep, password = entry.partition(":")
        if not sep or not name:
            raise AssemblyError(f"--user wants NAME:PASSWORD, got {entry!r}")
        users[name] = hash_password(password)
    return ServeSettings(
        port=args.port,
        interface=args.interface,
        tls=not args.no_tls,
        identity=args.identity or DEFAULT_SERVER_ALIAS,
        create_identity=args.identity is None,
        keystore=args.keystore,
        kek_file=args.kek_file,
        users=users,
        client_ca=list(args.client_ca),
        client_ca_key="--client-ca",
        delta_sync=args.delta_sync,
        read_only=args.read_only,
        reserve_free_mb=args.reserve_free_mb,
    )


def run(args: argparse.Namespace) -> int:
    path = args.db or default_database_path()
    try:
        database = Database.open(path, create=True)
    except StoreError as exc:
        return _fail(f"database {path}: {exc}")
    try:
        name, listener, config = _compose(args, database)
        if args.workers == 1:
            run_event_loop(_serve(name, database, listener, config))
            return 0
        # Workers: the port is reserved (and the TLS identity made, once) here; each worker
        # listens on it with a socket of its own, and the kernel spreads new connections
        # over them (SO_REUSEPORT: one accepting process does not take a burst of phones).
        port = listener.bind(shared=True, listen=False)
        _print_banner(database, listener, config, name)
        print(f"fieldsync: serving from {args.workers} worker processes", flush=True)
    except (AssemblyError, StoreError) as exc:
        return _fail(str(exc))
    except OSError as exc:  # includes InterfaceError
        return _fail(f"cannot listen: {exc}")
    finally:
        database.close()  # a worker opens its own
    try:
        return serve_in_workers(args.workers, lambda index: _serve_worker(args, path, port, index))
    finally:
        listener.unbind()


def _compose(
    args: argparse.Namespace, database: Database, port: int | None = None
) -> tuple[str, URLEndpointListener, URLEndpointListenerConfiguration]:
    name = args.name or database.name
    collections = served_collections(database, args.collection) or None
    settings = _settings(args)
    if port is not None:
        settings = dataclasses.replace(settings, port=port)
    assembly = assemble({name: database}, settings, collections=collections)
    if assembly.identity is not None and assembly.identity.replaced:
        print(f"fieldsync run: ERROR: {assembly.identity.replaced}", file=sys.stderr)
    return name, URLEndpointListener(assembly.configuration), assembly.configuration


def _serve_worker(args: argparse.Namespace, path: Path, port: int, index: int) -> int:
    """One worker of ``--workers``: its own database connections and its own socket on the
    parent's port. The first one also runs the housekeeper."""
    try:
        database = Database.open(path, create=False)
    except StoreError as exc:
        return _fail(f"database {path}: {exc}")
    try:
        name, listener, config = _compose(args, database, port)
        listener.bind(shared=True)
        worker_format = LOG_FORMAT.replace(": %(message)s", f" [worker {index}]: %(message)s")
        for handler in logging.getLogger().handlers:  # whose line is whose, on one stderr
            handler.setFormatter(logging.Formatter(worker_format))
        log.info("worker %d (pid %d) serving", index, os.getpid())
        run_event_loop(
            _serve(name, database, listener, config, banner=False, housekeeping=index == 0)
        )
    except (AssemblyError, StoreError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot listen: {exc}")
    finally:
        database.close()
    return 0


def _fail(message: str) -> int:
    print(f"fieldsync run: {message}", file=sys.stderr)
    return 1


async def _serve(
    name: str,
    database: Database,
    listener: URLEndpointListener,
    config: URLEndpointListenerConfiguration,
    *,
    banner: bool = True,
    housekeeping: bool = True,
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    await listener.start()
    if banner:
        _print_banner(database, listener, config, name)
    housekeeper = Housekeeper(database) if housekeeping else None  # expiry (issue 14)
    if housekeeper is not None:
        await housekeeper.start()
    try:
        await stop.wait()
    finally:
        if banner:
            print("fieldsync: stopping", flush=True)
        if housekeeper is not None:
            await housekeeper.stop()
        await listener.stop()


def _print_banner(
    database: Database,
    listener: URLEndpointListener,
    config: URLEndpointListenerConfiguration,
    name: str,
) -> None:
    counts = ", ".join(
        f"{c.full_name} ({c.count()} docs)" for c in (config.collections or database.collections())
    )
    print(f"fieldsync: database {name!r} at {database.path}", flush=True)
    print(f"fieldsync: collections: {counts}", flush=True)
    print(f"fieldsync: listening on port {listener.port}", flush=True)
    for url in listener.urls:
        print(f"fieldsync:   {url}", flush=True)
    if config.disable_tls:
        print("fieldsync: WARNING: TLS is off: traffic and passwords travel in clear", flush=True)
    else:
        identity = listener.tls_identity
        if identity is not None:
            print(f"fieldsync: TLS certificate SHA-256 {identity.fingerprint_sha256}", flush=True)
    if config.authenticator is None:
        print("fieldsync: WARNING: no authentication: every client is accepted", flush=True)
    if config.read_only:
        print("fieldsync: read-only: phones can pull but not push", flush=True)
    _print_pairing_code(database, listener, config, name)
    print("fieldsync: press Ctrl-C to stop", flush=True)


def _print_pairing_code(
    database: Database,
    listener: URLEndpointListener,
    config: URLEndpointListenerConfiguration,
    name: str,
) -> None:
    """The connection details as a QR code for a phone app (fieldsync.pairing)."""
    import sys

    from fieldsync.pairing import encode, pairing_info, print_terminal

    if not listener.urls:
        return
    identity = listener.tls_identity
    fingerprint = identity.fingerprint_sha256 if identity is not None else None
    print("fieldsync: pairing code (scan with the app):", flush=True)
    print_terminal(encode(pairing_info(listener.urls, [name], fingerprint)), sys.stdout)
