"""The ``fieldsync`` command line: a thin shell over the library.

Each subcommand lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable
taking the parsed arguments and returning an exit status.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from fieldsync import __version__

#: Log line format of every fieldsync command; logs go to stderr, output to stdout.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Subcommand modules, in the order ``--help`` lists them.
SUBCOMMANDS = ("run", "db", "identity", "sync", "agent", "status")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command line parser. With ``argv`` naming a subcommand, only that subcommand's
    module is imported: each brings its own dependencies (the agent's, for one, load the mDNS
    library), and a long-running ``fieldsync run`` should not carry the others' (about 4 MB
    of resident memory, issue 13). Without one, all are (``fieldsync --help`` lists them)."""
    parser = argparse.ArgumentParser(
        prog="fieldsync",
        description="A Couchbase Lite passive peer (URLEndpointListener) for field devices.",
    )
    parser.add_argument("--version", action="version", version=f"fieldsync {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (repeatable)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    requested = [arg for arg in (argv or ()) if not arg.startswith("-")][:1]
    names = requested if requested and requested[0] in SUBCOMMANDS else SUBCOMMANDS
    for name in names:
        try:
            module = importlib.import_module(f"fieldsync.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"fieldsync.cli.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    level = logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    if args.verbose < 2:
        logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
