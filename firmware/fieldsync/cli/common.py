"""What several subcommands share: the one-line error and common options."""

from __future__ import annotations

import argparse

from fieldsync.errors import FieldsyncError


class CommandError(FieldsyncError):
    """A user-facing failure: printed as one line on stderr, exit status 1."""


def add_collection_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--collection SCOPE.NAME``, repeatable (``store.names`` decides what is valid)."""
    parser.add_argument(
        "--collection", action="append", default=[], metavar="SCOPE.NAME", help=help_text
    )
