"""The agent's control socket: a Unix stream socket answering ``status`` with a JSON document.

Protocol: the client connects, sends one request line (``status\\n``) and reads one JSON line
back; the server then closes. The socket is mode 0660 and, when a group ``fieldsync`` exists,
owned by that group, so operators in it can run ``fieldsync status`` without root.

The status document (see :func:`empty_status`) holds: ``state`` (one of :data:`STATES`),
``detail``, ``interface``, ``addresses``, ``port``, ``urls``, ``tls`` {alias, fingerprint,
expires}, ``mdns`` {enabled, name, type, addresses}, ``connections`` [{peer, user, since, docs_in,
docs_out, bytes_in, bytes_out, busy}], ``databases`` [{name, path, documents, last_sequence}],
``uptime`` (seconds), ``recent_errors`` [{time, message}], ``pid`` and ``version``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import inspect
import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any

from fieldsync import __version__
from fieldsync.errors import FieldsyncError

log = logging.getLogger(__name__)

STARTING = "starting"
WAITING_FOR_INTERFACE = "waiting-for-interface"
SERVING = "serving"
DEGRADED = "degraded"
STOPPING = "stopping"
STATES = (STARTING, WAITING_FOR_INTERFACE, SERVING, DEGRADED, STOPPING)

SOCKET_MODE = 0o660
SOCKET_GROUP = "fieldsync"
_MAX_REQUEST = 1024

StatusProvider = Callable[[], "dict[str, Any] | Awaitable[dict[str, Any]]"]


class ControlError(FieldsyncError, OSError):
    """The control socket could not be reached or gave no usable answer."""


class AgentNotRunning(ControlError):
    """Nothing is listening on the control socket."""


def empty_status() -> dict[str, Any]:
    """A status document with every field present and nothing known yet."""
    return {
        "state": STARTING,
        "detail": "",
        "interface": None,
        "addresses": [],
        "port": None,
        "urls": [],
        "tls": None,
        "mdns": None,
        "connections": [],
        "databases": [],
        "maintenance": None,
        "uptime": 0.0,
        "recent_errors": [],
        "pid": os.getpid(),
        "version": _version(),
    }


class ControlServer:
    """Serves the document returned by ``provider`` (sync or async) to each client."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        provider: StatusProvider,
        *,
        mode: int = SOCKET_MODE,
        group: str | None = SOCKET_GROUP,
    ) -> None:
        self.path = Path(path)
        self.provider = provider
        self.mode = mode
        self.group = group
        self._server: asyncio.AbstractServer | None = None
        self._inode: tuple[int, int] | None = None

    @property
    def serving(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Create the socket (replacing a stale one); ControlError if another agent owns it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._remove_stale_socket()
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.path))
        os.chmod(self.path, self.mode)
        gid = _group_id(self.group)
        if gid is not None:
            try:
                os.chown(self.path, -1, gid)
            except OSError as exc:
                log.warning("cannot give %s to group %s: %s", self.path, self.group, exc)
        info = self.path.stat()
        self._inode = (info.st_dev, info.st_ino)
        log.info("control socket at %s", self.path)

    async def close(self) -> None:
        """Stop serving and remove the socket file (only if it is still ours)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2.0)
        with contextlib.suppress(OSError):
            info = self.path.stat()
            if (info.st_dev, info.st_ino) == self._inode:
                self.path.unlink()

    async def _remove_stale_socket(self) -> None:
        try:
            info = self.path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode):
            raise ControlError(
                errno.EEXIST, f"{self.path} exists and is not a socket; refusing to replace it"
            )
        try:
            _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(self.path)), 1.0)
        except (ConnectionRefusedError, FileNotFoundError, TimeoutError):
            log.info("removing stale control socket %s", self.path)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        writer.close()
        raise ControlError(
            errno.EADDRINUSE, f"another fieldsync agent is already serving {self.path}"
        )

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), 5.0)
            except (TimeoutError, ValueError):
                line = b""
            command = line[:_MAX_REQUEST].decode("utf-8", "replace").strip()
            if command in ("status", ""):
                try:
                    document = self.provider()
                    if inspect.isawaitable(document):
                        document = await document
                    response: dict[str, Any] = document
                except Exception as exc:
                    log.exception("status provider failed")
                    response = {"error": f"status unavailable: {exc}"}
            else:
                response = {"error": f"unknown request {command!r}; the only request is 'status'"}
            writer.write(json.dumps(response, default=_json_default).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def query_status(path: str | os.PathLike[str], *, timeout: float = 5.0) -> dict[str, Any]:
    """Ask the agent listening on ``path`` for its status document (blocking).

    Raises :class:`AgentNotRunning` when nothing listens there and :class:`ControlError` for any
    other failure; messages are one line meant for an operator.
    """
    where = os.fspath(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(where)
        except FileNotFoundError:
            raise AgentNotRunning(
                errno.ENOENT, f"fieldsync agent is not running (no control socket at {where})"
            ) from None
        except ConnectionRefusedError:
            raise AgentNotRunning(
                errno.ECONNREFUSED,
                f"fieldsync agent is not running (stale control socket at {where})",
            ) from None
        except PermissionError:
            raise ControlError(
                errno.EACCES,
                f"permission denied on {where}: run as root or as a member of group {SOCKET_GROUP}",
            ) from None
        except TimeoutError:
            raise ControlError(errno.ETIMEDOUT, f"no answer from {where}") from None
        except OSError as exc:
            raise ControlError(exc.errno, f"cannot connect to {where}: {exc.strerror}") from None
        try:
            sock.sendall(b"status\n")
            data = _read_line(sock)
        except TimeoutError:
            raise ControlError(
                errno.ETIMEDOUT, f"the agent at {where} did not answer within {timeout:g} s"
            ) from None
        except OSError as exc:
            raise ControlError(exc.errno, f"reading from {where} failed: {exc}") from None
    try:
        document = json.loads(data)
    except ValueError:
        raise ControlError(
            errno.EPROTO, f"the agent at {where} sent an unreadable answer"
        ) from None
    if not isinstance(document, dict):
        raise ControlError(errno.EPROTO, f"the agent at {where} sent an unexpected answer")
    if "error" in document and "state" not in document:
        raise ControlError(errno.EPROTO, f"the agent at {where} said: {document['error']}")
    return document


def _read_line(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            break
    data = b"".join(chunks)
    if not data:
        raise ConnectionResetError(errno.ECONNRESET, "the agent closed the connection")
    return data


def _group_id(name: str | None) -> int | None:
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def _version() -> str:
    return __version__
