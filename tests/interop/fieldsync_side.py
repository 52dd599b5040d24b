"""Shared helpers for interop tests: fieldsync's listener on one side, LiteCore on the other.

Imported by the ``test_*_interop.py`` files next to it as ``tests.interop.fieldsync_side``.
It only imports fieldsync lazily, so a missing ``fieldsync.listener`` still lets
each test file skip through ``pytest.importorskip``.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.interop.litecore import LiteReplicator, ReplicatorStatus

#: Generous ceiling for one replication on a loaded 2-core machine (seconds).
TIMEOUT = 60.0


def url(server: Any, name: str = "device", scheme: str = "ws", port: int | None = None) -> str:
    """The URL a phone uses for ``/<name>`` on the listener (loopback, IPv4)."""
    return f"{scheme}://127.0.0.1:{port or server.port}/{name}"


async def run(repl: LiteReplicator, until: str = "stopped") -> ReplicatorStatus:
    """Start a LiteCore replicator and wait without blocking the listener's event loop."""
    repl.start()
    return await repl.wait_async(until, timeout=TIMEOUT)


def device_docs(collection: Any) -> dict[str, tuple[str, dict[str, Any]]]:
    """``{doc_id: (revID, body)}`` of the live documents of a fieldsync collection."""
    result: dict[str, tuple[str, dict[str, Any]]] = {}
    for change in collection.changes_since(0):
        doc = collection.get_document(change.doc_id)
        if doc is not None:
            result[doc.doc_id] = (doc.rev_id, doc.body)
    return result


def phone_docs(phone: Any, collection: str = "_default._default") -> dict[str, tuple[str, dict]]:
    """``{doc_id: (revID, body)}`` of the live documents of a LiteCore collection."""
    result: dict[str, tuple[str, dict[str, Any]]] = {}
    for doc_id in phone.all_docs(collection):
        doc = phone.get(doc_id, collection)
        if doc is not None and not doc["deleted"]:
            result[doc_id] = (doc["revID"], doc["body"])
    return result


async def wait_for(
    predicate: Callable[[], bool], timeout: float = TIMEOUT, what: str = "condition"
) -> None:
    """Poll ``predicate`` (every 20 ms) without blocking the loop; AssertionError on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.02)


class ConnectionRecorder:
    """Every ``ConnectionInfo`` a listener creates, in order (open or already closed).

    ``URLEndpointListener.connections()`` lists only open connections; a short one-shot
    replication can come and go between two polls. This hooks the listener module's
    ``ConnectionInfo`` class (through pytest's ``monkeypatch``) so each connection's info, and
    its ``stats`` (which keep counting until the connection ends), is kept here.
    """

    def __init__(self, monkeypatch: Any) -> None:
        import fieldsync.listener.listener as listener_module

        self.infos: list[Any] = []
        recorder = self
        base = listener_module.ConnectionInfo

        class RecordedConnectionInfo(base):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                recorder.infos.append(self)

        monkeypatch.setattr(listener_module, "ConnectionInfo", RecordedConnectionInfo)

    def mark(self) -> int:
        """A position to pass to ``totals(since=...)``: counts only later connections."""
        return len(self.infos)

    def totals(self, since: int = 0) -> dict[str, int]:
        """Summed ``docs_in``/``docs_out``/``blobs_in``/``blobs_out``/``errors``/bytes."""
        keys = ("docs_in", "docs_out", "blobs_in", "blobs_out", "errors", "bytes_in", "bytes_out")
        infos = self.infos[since:]
        result = {k: sum(getattr(i.stats, k) for i in infos) for k in keys}
        result["connections"] = len(infos)
        return result


def log_size(path: Path | None) -> int:
    return path.stat().st_size if path is not None and path.is_file() else 0


_ENTRY_START = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} ", re.M)
_BLIP_HEAD = re.compile(r"BLIPMessages\|\w+: (RECEIVED|SENDING): (REQ|RES|ERR) #(\d+) ?(\S*) \{")


@dataclass(frozen=True)
class LoggedMessage:
    """One BLIP message as LiteCore's ``BLIPMessages`` log (level info) dumps it."""

    direction: str  # "RECEIVED" or "SENDING", from LiteCore's point of view
    kind: str  # "REQ", "RES" or "ERR"
    number: int
    flags: str  # e.g. "UZ" (urgent, compressed), "N" (no reply)
    properties: dict[str, str]

    @property
    def profile(self) -> str | None:
        return self.properties.get("Profile")


def logged_messages(path: Path | None, start: int = 0) -> list[LoggedMessage]:
    """Every BLIP message in LiteCore's log after byte offset ``start``, in log order."""
    if path is None or not path.is_file():
        return []
    with path.open("rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    starts = [m.start() for m in _ENTRY_START.finditer(text)] + [len(text)]
    messages = []
    for begin, end in itertools.pairwise(starts):
        entry = text[begin:end]
        head = _BLIP_HEAD.search(entry.split("\n", 1)[0])
        if head is None:
            continue
        properties = {}
        for line in entry.splitlines()[1:]:
            key, sep, value = line.strip().partition(": ")
            if sep and key != "BODY":
                properties[key] = value
        direction, kind, number, flags = head.groups()
        messages.append(LoggedMessage(direction, kind, int(number), flags, properties))
    return messages
