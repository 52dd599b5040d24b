"""``fieldsync agent``: the boot-time service (run by systemd as ``Type=notify``).

``fieldsync agent`` runs until SIGTERM; ``--check-config`` validates the file and exits;
``--hash-password`` turns a password (from the terminal or one stdin line) into the salted hash
that the ``[users]`` table wants. Exit status: 0 after a clean stop, 1 when the agent could not
start, 2 for an invalid configuration.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from fieldsync.agent.config import DEFAULT_CONFIG_PATH, ConfigError, load_config

EXIT_CONFIG = 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "agent",
        help="run the boot-time agent (listener, mDNS, status socket)",
        description="Serve the configured databases on the configured interface, advertise them "
        "over mDNS, and answer `fieldsync status`. Meant to run under systemd.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ.get("FIELDSYNC_CONFIG", str(DEFAULT_CONFIG_PATH))),
        help="configuration file (default: %(default)s)",
    )
    actions = parser.add_mutually_exclusive_group()
    actions.add_argument(
        "--check-config", action="store_true", help="validate the configuration and exit"
    )
    actions.add_argument(
        "--hash-password",
        action="store_true",
        help="read a password and print the salted hash to put in [users]",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.hash_password:
        return _hash_password()
    if args.check_config:
        return _check_config(args.config)
    from fieldsync.agent.service import run_agent
    from fieldsync.listener.assembly import run_event_loop

    return run_event_loop(run_agent(args.config))


def _check_config(path: Path) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"fieldsync agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    listener = config.listener
    print(f"{path}: OK")
    print(
        f"  listener  {listener.interface or 'all interfaces'} port {listener.port}, "
        f"tls {'on (identity ' + listener.identity + ')' if listener.tls else 'off'}"
    )
    for db in config.databases:
        scope = ", ".join(db.collections) if db.collections else "all collections"
        print(f"  database  {db.name} at {db.path} ({scope})")
    auth = (
        f"{len(config.users)} user(s)"
        if config.users
        else f"client certificates ({len(config.client_cert_roots)} root file(s))"
        if config.client_cert_roots
        else "none"
    )
    print(f"  auth      {auth}")
    mdns = config.mdns
    print(
        "  mdns      " + (f'"{mdns.instance_name}" {mdns.service_type}' if mdns.enabled else "off")
    )
    print(f"  control   {config.control_socket}")
    return 0


def _hash_password() -> int:
    from fieldsync.agent.passwords import hash_password
    from fieldsync.listener.passwords import PasswordHashError

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("fieldsync agent: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        print(hash_password(password))
    except PasswordHashError as exc:
        print(f"fieldsync agent: {exc}", file=sys.stderr)
        return 1
    return 0
