"""``fieldsync status``: what the running agent is doing, read from its control socket.

Works over ``ssh pi@device fieldsync status`` (no TTY needed; no colour unless stdout is a
terminal). Exit status: 0 when the agent is serving, 1 when it runs but is not serving (the
reason goes to stderr in one line), 3 when it cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from datetime import datetime
from typing import Any, TextIO

from fieldsync.agent.config import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_CONTROL_SOCKET,
    ConfigError,
    load_config,
)
from fieldsync.agent.control import ControlError, query_status

EXIT_SERVING = 0
EXIT_NOT_SERVING = 1
EXIT_UNREACHABLE = 3
DEFAULT_WATCH_INTERVAL = 2.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show what the fieldsync agent is doing",
        description="Show the state of the running fieldsync agent. Exit status: 0 serving, "
        "1 running but not serving, 3 agent not reachable.",
    )
    parser.add_argument(
        "--socket",
        help="the agent's control socket (default: $FIELDSYNC_CONTROL_SOCKET, else "
        "control_socket from the agent's configuration file, else "
        f"{DEFAULT_CONTROL_SOCKET})",
    )
    parser.add_argument("--json", action="store_true", help="print the raw status document")
    parser.add_argument(
        "--qr",
        action="store_true",
        help="print a QR code of the connection details (URLs, databases, certificate "
        "SHA-256) for a phone app to scan (payload: see fieldsync.pairing)",
    )
    parser.add_argument(
        "--watch",
        nargs="?",
        type=_positive_float,
        const=DEFAULT_WATCH_INTERVAL,
        metavar="SECONDS",
        help=f"refresh every SECONDS (default {DEFAULT_WATCH_INTERVAL:g}) until interrupted",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    socket_path = args.socket or default_socket_path()
    if args.qr:
        return show_qr(socket_path, out=sys.stdout, err=sys.stderr)
    if args.watch is None:
        return show_once(socket_path, as_json=args.json, out=sys.stdout, err=sys.stderr)
    return watch(socket_path, args.watch, as_json=args.json)


def default_socket_path(environ: dict[str, str] | None = None) -> str:
    """Where the agent's control socket is, when ``--socket`` is not given.

    ``$FIELDSYNC_CONTROL_SOCKET``, else ``control_socket`` from the agent's configuration file
    (``$FIELDSYNC_CONFIG`` or the default path) when that file can be read, else the default.
    """
    env = os.environ if environ is None else environ
    if env.get("FIELDSYNC_CONTROL_SOCKET"):
        return env["FIELDSYNC_CONTROL_SOCKET"]
    try:
        config = load_config(env.get("FIELDSYNC_CONFIG") or DEFAULT_CONFIG_PATH)
    except ConfigError:
        return str(DEFAULT_CONTROL_SOCKET)
    return str(config.control_socket)


def show_once(socket_path: str, *, as_json: bool, out: TextIO, err: TextIO) -> int:
    """Print the status once; returns the exit status."""
    try:
        document = query_status(socket_path)
    except ControlError as exc:
        print(exc.strerror or str(exc), file=err)
        return EXIT_UNREACHABLE
    if as_json:
        print(json.dumps(document, indent=2, sort_keys=True), file=out)
    else:
        out.write(format_status(document, colour=_use_colour(out)))
    reason = not_serving_reason(document)
    if reason:
        print(reason, file=err)
        return EXIT_NOT_SERVING
    return EXIT_SERVING


def show_qr(socket_path: str, *, out: TextIO, err: TextIO) -> int:
    """Print the pairing QR code of the running agent (and its payload); the exit status is
    that of :func:`show_once` (1 when it is not serving: the URLs may then be empty)."""
    from fieldsync.pairing import PairingError, encode, from_status, print_terminal

    try:
        document = query_status(socket_path)
    except ControlError as exc:
        print(exc.strerror or str(exc), file=err)
        return EXIT_UNREACHABLE
    try:
        payload = encode(from_status(document))
    except PairingError as exc:
        print(f"fieldsync status: cannot make a pairing code: {exc}", file=err)
        return EXIT_NOT_SERVING
    reason = not_serving_reason(document)
    if reason:
        print(reason, file=err)
    print_terminal(payload, out)
    return EXIT_NOT_SERVING if reason else EXIT_SERVING


def watch(socket_path: str, interval: float, *, as_json: bool) -> int:
    """Print the status every ``interval`` seconds until Ctrl-C or SIGTERM; returns the last
    exit status. The signals only set a flag, so an interruption never lands mid-write."""
    status = EXIT_UNREACHABLE
    clear = sys.stdout.isatty() and not as_json
    stop = threading.Event()
    previous = {
        signum: signal.signal(signum, lambda *_: stop.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        while not stop.is_set():
            if clear:
                sys.stdout.write("\x1b[H\x1b[2J")
            elif not as_json:
                print(f"--- {datetime.now().strftime('%H:%M:%S')}")
            status = show_once(socket_path, as_json=as_json, out=sys.stdout, err=sys.stdout)
            sys.stdout.flush()
            stop.wait(interval)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return status


def not_serving_reason(document: dict[str, Any]) -> str | None:
    """None when the agent serves, else one line saying why it does not."""
    state = document.get("state")
    if state == "serving":
        return None
    detail = document.get("detail") or ""
    text = f"fieldsync agent is {state or 'in an unknown state'}"
    return f"{text}: {detail}" if detail else text


def format_status(document: dict[str, Any], *, colour: bool = False) -> str:
    """A readable multi-line summary of a status document."""
    paint = _Painter(colour)
    lines: list[str] = []
    state = str(document.get("state", "unknown"))
    headline = f"fieldsync agent: {paint.state(state)}"
    if document.get("detail"):
        headline += f" ({document['detail']})"
    if document.get("uptime") is not None:
        headline += f", up {format_duration(float(document['uptime']))}"
    lines.append(headline)
    interface = document.get("interface") or "all interfaces"
    addresses = ", ".join(document.get("addresses") or []) or "no address"
    port = document.get("port")
    lines.append(f"  interface  {interface}: {addresses}" + (f", port {port}" if port else ""))
    for url in document.get("urls") or []:
        lines.append(f"  url        {url}")
    tls = document.get("tls")
    if tls:
        parts = [f"alias {tls.get('alias') or '-'}"]
        if tls.get("fingerprint"):
            parts.append(f"sha256 {tls['fingerprint']}")
        if tls.get("expires"):
            parts.append(f"expires {tls['expires']}")
        lines.append("  tls        " + ", ".join(parts))
        if tls.get("replaced"):
            lines.append("  tls        " + paint.error("REPLACED: " + str(tls["replaced"])))
    else:
        lines.append("  tls        off")
    mdns = document.get("mdns")
    if mdns and mdns.get("addresses"):
        lines.append(
            f'  mdns       "{mdns.get("name")}" {mdns.get("type")} on '
            + ", ".join(mdns["addresses"])
        )
    elif mdns and mdns.get("enabled", True):
        lines.append(f"  mdns       {mdns.get('type') or ''} not advertised now".rstrip())
    else:
        lines.append("  mdns       off")
    databases = document.get("databases") or []
    lines.append(f"  databases  {len(databases)}")
    for db in databases:
        docs = db.get("documents")
        seq = db.get("last_sequence")
        lines.append(
            f"    {db.get('name')}  {db.get('path')}  "
            f"{'?' if docs is None else docs} docs, last sequence {'?' if seq is None else seq}"
        )
        if "database_bytes" in db:
            lines.append(
                f"      storage  database {format_bytes(db.get('database_bytes'))}, "
                f"blobs {format_bytes(db.get('blob_bytes'))}, "
                f"free {format_bytes(db.get('free_bytes'))}"
            )
            last = db.get("last_maintenance") or "never run"
            if db.get("last_maintenance_ok") is False:
                last = paint.error(last)
            lines.append(f"      maintenance  {last}")
    maintenance = document.get("maintenance")
    if maintenance:
        if not maintenance.get("enabled", True):
            plan = "automatic maintenance off"
        else:
            plan = f"next compaction {maintenance.get('next_compaction') or 'on low space only'}"
        if maintenance.get("running"):
            plan += f", compacting {maintenance['running']} now"
        lines.append(f"  maintenance {plan}")
    connections = document.get("connections") or []
    lines.append(f"  connections {len(connections)}")
    for conn in connections:
        busy = paint.busy("busy") if conn.get("busy") else "idle"
        lines.append(
            f"    {conn.get('peer')}  {conn.get('user') or '-'}  since {conn.get('since')}  "
            f"in {_traffic(conn.get('docs_in'), conn.get('bytes_in'))}  "
            f"out {_traffic(conn.get('docs_out'), conn.get('bytes_out'))}  {busy}"
        )
    errors = document.get("recent_errors") or []
    if errors:
        lines.append(f"  recent errors {len(errors)}")
        for error in errors[-5:]:
            if isinstance(error, dict):
                lines.append(
                    f"    {error.get('time', '')}  {paint.error(error.get('message', ''))}"
                )
            else:
                lines.append(f"    {paint.error(str(error))}")
    return "\n".join(lines) + "\n"


def format_duration(seconds: float) -> str:
    """``3d04h``, ``2h05m``, ``4m07s``, ``12s``."""
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_bytes(count: Any) -> str:
    """``512 B``, ``1.5 kB``, ``3.2 MB`` (decimal units); ``?`` when unknown."""
    if count is None:
        return "?"
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def _traffic(docs: Any, size: Any) -> str:
    text = f"{docs or 0} docs"
    return text if size is None else f"{text}/{format_bytes(size)}"


def _use_colour(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class _Painter:
    _COLOURS = {"serving": "32", "degraded": "33", "stopping": "33"}

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def _wrap(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.enabled else text

    def state(self, state: str) -> str:
        return self._wrap(self._COLOURS.get(state, "31"), state)

    def busy(self, text: str) -> str:
        return self._wrap("36", text)

    def error(self, text: str) -> str:
        return self._wrap("31", text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the interval must be more than 0 seconds")
    return value
