"""``fieldsync sync``: replicate a local database with another peer (active replicator)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fieldsync.cli.common import add_collection_option

if TYPE_CHECKING:
    from fieldsync.replication.stats import ReplicationStats


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sync",
        help="replicate with another peer (fieldsync device, Sync Gateway)",
        description="Push, pull or both between a local database and a remote endpoint.",
    )
    parser.add_argument("direction", choices=["push", "pull", "both"])
    parser.add_argument("url", help="ws[s]://host:port/database")
    parser.add_argument("--db", type=Path, help="local database folder (default: user data)")
    parser.add_argument("--continuous", action="store_true", help="keep replicating until Ctrl-C")
    add_collection_option(parser, "replicate these collections (default: the default collection)")
    parser.add_argument("--user", metavar="NAME:PASSWORD", help="HTTP Basic credentials")
    parser.add_argument(
        "--pinned-cert", type=Path, metavar="PEM", help="accept only this server certificate"
    )
    parser.add_argument(
        "--insecure", action="store_true", help="accept any server certificate (testing only)"
    )
    parser.add_argument(
        "--client-cert",
        type=Path,
        metavar="PEM",
        help="client certificate chain (PEM) for certificate authentication",
    )
    parser.add_argument("--client-key", type=Path, metavar="PEM", help="its private key (PEM)")
    parser.add_argument("--no-delta-sync", action="store_true", help="never use deltas")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress lines (only the summary at the end)"
    )
    parser.set_defaults(func=sync)


def _ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.url.startswith("wss://"):
        return None
    if args.pinned_cert:
        from cryptography import x509

        from fieldsync.tls.context import client_ssl_context

        pinned = x509.load_pem_x509_certificate(args.pinned_cert.read_bytes())
        context = client_ssl_context(pinned_certificate=pinned)
    elif args.insecure:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context()
    if args.client_cert:
        context.load_cert_chain(args.client_cert, args.client_key)
    return context


def sync(args: argparse.Namespace) -> int:
    from fieldsync.listener.assembly import run_event_loop, served_collections
    from fieldsync.replicator import (
        ReplicationError,
        Replicator,
        ReplicatorConfiguration,
        ReplicatorResult,
        ReplicatorType,
    )
    from fieldsync.store import Database
    from fieldsync.store.paths import default_database_path

    database = Database.open(args.db or default_database_path(), create=True)
    collections = served_collections(database, args.collection) or None
    username = password = None
    if args.user:
        username, _, password = args.user.partition(":")
    config = ReplicatorConfiguration(
        database=database,
        url=args.url,
        replicator_type={
            "push": ReplicatorType.PUSH,
            "pull": ReplicatorType.PULL,
            "both": ReplicatorType.PUSH_AND_PULL,
        }[args.direction],
        continuous=args.continuous,
        collections=collections,
        username=username,
        password=password,
        ssl_context=_ssl_context(args),
        enable_delta_sync=not args.no_delta_sync,
    )
    replicator = Replicator(config)

    async def main() -> ReplicatorResult:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, replicator.stop)
        if args.quiet:
            return await replicator.run()
        reporter = loop.create_task(_report_progress(replicator.stats, args.direction))
        try:
            return await replicator.run()
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter

    try:
        result = run_event_loop(main())
    except (ReplicationError, OSError) as exc:
        print(f"fieldsync sync: {exc}", file=sys.stderr)
        return 1
    finally:
        database.close()
    print(
        f"fieldsync sync: {result.docs_pushed} pushed, {result.docs_pulled} pulled, "
        f"{len(result.conflicts)} conflicts, {result.errors} errors"
        + (f" (last: {result.last_error})" if result.last_error else "")
    )
    return 0 if result.errors == 0 else 1


async def _report_progress(stats: ReplicationStats, direction: str) -> None:
    """Documents and bytes moved so far, and the rate, on stderr (fieldsync.progress)."""
    from fieldsync.progress import Progress

    progress = Progress(direction)
    try:
        while True:
            progress.update(stats.docs_in + stats.docs_out, stats.bytes_in + stats.bytes_out)
            await asyncio.sleep(0.25)
    finally:
        progress.update(stats.docs_in + stats.docs_out, stats.bytes_in + stats.bytes_out)
        progress.finish()
