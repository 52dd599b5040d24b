"""The boot-time agent: serve the configured databases on one interface, whatever it does.

:class:`Agent` composes the pieces of this package: it loads the configuration, opens the
databases, waits for the interface, starts a ``URLEndpointListener`` bound to it, advertises it
over mDNS, reports to systemd and answers ``fieldsync status`` on its control socket.

Its core is one reconcile step run whenever something changes (interface, configuration,
retry timer): it compares what is running with what should run and fixes the difference, so
every path (boot without wlan0, address change, link down/up, adapter unplugged and back,
SIGHUP) goes through the same code.

- interface missing → listener stopped, advertisement withdrawn, "waiting for interface wlan0";
- interface down or without address → advertisement withdrawn (the listener, bound to the
  device, stays);
- interface back with a new index → listener restarted (its socket was bound to the old one);
- addresses changed → URLs re-read, advertisement updated;
- SIGTERM → advertisement withdrawn, listener stopped (clients see WebSocket close 1001),
  databases closed, exit 0;
- SIGHUP → configuration re-read; only the parts that changed are restarted; an invalid file is
  reported and the running configuration kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fieldsync.agent import control
from fieldsync.agent.advertiser import ServiceAdvertiser, build_txt
from fieldsync.agent.config import AgentConfig, ConfigError, DatabaseConfig, load_config
from fieldsync.agent.control import ControlServer, empty_status
from fieldsync.agent.interfaces import InterfaceState, InterfaceWatcher
from fieldsync.agent.maintenance import MaintenanceScheduler
from fieldsync.agent.notify import SystemdNotifier
from fieldsync.errors import FieldsyncError
from fieldsync.listener import URLEndpointListener
from fieldsync.listener.assembly import (
    Assembly,
    AssemblyError,
    ServeSettings,
    assemble,
    open_keystore,
    resolve_identity,
    served_collections,
)
from fieldsync.store import Database
from fieldsync.tls.identity import ServerIdentity

log = logging.getLogger(__name__)

MAX_RECENT_ERRORS = 20
LISTENER_RETRY_DELAY = 5.0


class AgentError(FieldsyncError):
    """Something the agent cannot do with its configuration; the message says what to fix."""


class Agent:
    """Runs until SIGTERM/SIGINT (or :meth:`request_stop`); :meth:`run` returns the exit code."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        config_path: str | Path | None = None,
        notifier: SystemdNotifier | None = None,
        debounce: float = 0.25,
        retry_delay: float = LISTENER_RETRY_DELAY,
    ) -> None:
        self.config = config
        self.config_path = Path(config_path) if config_path else config.source
        self.notifier = notifier or SystemdNotifier()
        self.debounce = debounce
        self.retry_delay = retry_delay
        self.state = control.STARTING
        self.detail = "starting"
        self._started = time.monotonic()
        self._databases: dict[str, Database] = {}
        self._database_errors: dict[str, str] = {}
        self._listener: URLEndpointListener | None = None
        self._listener_index: int | None = None
        self._listener_error: str | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._tls: dict[str, Any] | None = None
        #: Why the anonymous TLS identity was replaced (shown by ``fieldsync status``).
        self._identity_replaced: str | None = None
        self._watcher: InterfaceWatcher | None = None
        self._advertiser: ServiceAdvertiser | None = None
        self._mdns_error: str | None = None
        self._control: ControlServer | None = None
        self._maintenance: MaintenanceScheduler | None = None
        self._errors: deque[dict[str, str]] = deque(maxlen=MAX_RECENT_ERRORS)
        self._wake = asyncio.Event()
        self._stop_requested = False
        self._reload_requested = False

    # ------------------------------------------------------------------ public API

    async def run(self) -> int:
        """Start everything, follow changes until asked to stop, shut down; the exit code."""
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for signum, handler in (
            (signal.SIGTERM, self.request_stop),
            (signal.SIGINT, self.request_stop),
            (signal.SIGHUP, self.request_reload),
        ):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, handler)
                installed.append(signum)
        try:
            try:
                await self._start()
            except AgentError as exc:
                log.error("cannot start: %s", exc)
                return 1
            self.notifier.ready(self._status_line())
            self.notifier.start_watchdog()
            while not self._stop_requested:
                await self._wake.wait()
                self._wake.clear()
                if self._stop_requested:
                    break
                if self._reload_requested:
                    self._reload_requested = False
                    await self._reload()
                await self._reconcile()
            return 0
        finally:
            await self._shutdown()
            for signum in installed:
                loop.remove_signal_handler(signum)

    def request_stop(self) -> None:
        """Begin an orderly shutdown (what SIGTERM does)."""
        log.info("stop requested")
        self._stop_requested = True
        self._wake.set()

    def request_reload(self) -> None:
        """Re-read the configuration file (what SIGHUP does)."""
        log.info("reload requested")
        self._reload_requested = True
        self._wake.set()

    def status(self) -> dict[str, Any]:
        """The status document served on the control socket."""
        document = empty_status()
        iface = self._watcher.latest if self._watcher is not None else None
        listener = self._listener
        settings = self.config.listener
        document.update(
            state=self.state,
            detail=self.detail,
            interface=settings.interface,
            addresses=list(iface.addresses) if iface is not None and iface.exists else [],
            port=listener.port if listener is not None else settings.port,
            urls=list(listener.urls) if listener is not None else [],
            tls=dict(self._tls) if self._tls else None,
            mdns=self._mdns_status(),
            connections=self._connection_status(),
            databases=self._database_status(),
            maintenance=self._maintenance.status() if self._maintenance is not None else None,
            uptime=round(time.monotonic() - self._started, 1),
            recent_errors=list(self._errors),
        )
        return document

    # ------------------------------------------------------------------ lifecycle

    async def _start(self) -> None:
        _apply_log_level(self.config.log_level)
        self._control = ControlServer(self.config.control_socket, self.status)
        try:
            await self._control.start()
        except control.ControlError as exc:
            self._control = None
            raise AgentError(exc.strerror or str(exc)) from None
        except OSError as exc:
            self._control = None
            raise AgentError(
                f"control socket {self.config.control_socket}: {exc.strerror or exc}"
            ) from None
        self._open_databases(self.config.databases)
        self._check_keystore()
        self._maintenance = MaintenanceScheduler(
            lambda: self._databases,
            self.config.maintenance,
            phones_connected=self._phones_connected,
        )
        await self._maintenance.start()
        try:
            await self._start_watcher()
        except OSError as exc:
            raise AgentError(f"cannot watch network interfaces (rtnetlink): {exc}") from None
        await self._reconcile()

    async def _shutdown(self) -> None:
        self._set_state(control.STOPPING, "stopping")
        self.notifier.stopping("stopping")
        if self._retry is not None:
            self._retry.cancel()
        if self._advertiser is not None:
            with contextlib.suppress(Exception):
                await self._advertiser.close()
            self._advertiser = None
        await self._stop_listener("shutting down")
        if self._maintenance is not None:
            await self._maintenance.stop()
            self._maintenance = None
        self._close_databases(list(self._databases))
        if self._watcher is not None:
            await self._watcher.close()
            self._watcher = None
        if self._control is not None:
            await self._control.close()
            self._control = None
        await self.notifier.close()
        log.info("agent stopped")

    async def _start_watcher(self) -> None:
        self._watcher = InterfaceWatcher(self.config.listener.interface, debounce=self.debounce)
        await self._watcher.start()
        self._watcher.add_callback(lambda _state: self._wake.set())

    # ------------------------------------------------------------------ the reconcile step

    async def _reconcile(self) -> None:
        assert self._watcher is not None
        iface = self._watcher.state
        label = self._interface_label
        if not self._databases:
            await self._stop_listener("no database")
            await self._withdraw()
            problems = "; ".join(self._database_errors.values()) or "no database configured"
            self._set_state(control.DEGRADED, f"no database could be opened: {problems}")
            return
        if not iface.exists:
            await self._withdraw()
            await self._stop_listener(f"interface {label} vanished")
            self._set_state(control.WAITING_FOR_INTERFACE, f"waiting for interface {label}")
            return
        if (
            self._listener is not None
            and self._binds_by_name
            and self._listener_index not in (None, iface.index)
        ):
            log.info("interface %s came back with a new index; restarting the listener", label)
            await self._stop_listener(f"interface {label} was replaced")
        if not iface.usable:
            await self._withdraw()
            why = "is down" if not iface.up else "has no address"
            self._set_state(
                control.WAITING_FOR_INTERFACE, f"waiting for interface {label} (it {why})"
            )
            return
        if self._listener is None:
            if self._retry is not None:
                return  # a retry is scheduled; keep the state that explains why
            if not await self._start_listener(iface):
                await self._withdraw()
                self._set_state(control.DEGRADED, f"listener not running: {self._listener_error}")
                return
        self._listener_index = iface.index
        self._set_serving_state()  # connections are accepted already; probing takes a while
        await self._advertise(iface)
        self._set_serving_state()

    def _set_serving_state(self) -> None:
        problems = list(self._database_errors.values())
        if self._identity_replaced:
            problems.append("TLS identity replaced (see recent errors)")
        if self._mdns_error:
            problems.append(f"mDNS: {self._mdns_error}")
        if problems:
            self._set_state(control.DEGRADED, "; ".join(problems))
        else:
            self._set_state(control.SERVING, "")

    # ------------------------------------------------------------------ listener

    async def _start_listener(self, iface: InterfaceState) -> bool:
        try:
            assembly = self._assemble()
            listener = URLEndpointListener(assembly.configuration)
            await listener.start()
        except (AgentError, AssemblyError, ConfigError) as exc:
            self._listener_error = str(exc)
            self._record_error(f"listener: {exc}")
            return False
        except Exception as exc:
            self._listener_error = f"{type(exc).__name__}: {exc}"
            self._record_error(f"listener failed to start on {self._interface_label}: {exc}")
            self._schedule_retry()
            return False
        self._listener = listener
        self._listener_index = iface.index
        self._listener_error = None
        self._tls = self._tls_status(listener, assembly.identity)
        log.info(
            "serving %s on %s: %s",
            ", ".join(self._databases),
            self._interface_label,
            ", ".join(listener.urls) or f"port {listener.port}",
        )
        return True

    async def _stop_listener(self, why: str) -> None:
        listener, self._listener = self._listener, None
        self._listener_index = None
        if listener is None:
            return
        log.info("stopping the listener (%s)", why)
        try:
            await listener.stop()
        except Exception as exc:
            self._record_error(f"stopping the listener failed: {exc}")

    def _schedule_retry(self) -> None:
        if self._retry is not None:
            self._retry.cancel()

        def retry() -> None:
            self._retry = None
            self._wake.set()

        self._retry = asyncio.get_running_loop().call_later(self.retry_delay, retry)

    def _serve_settings(self) -> ServeSettings:
        config = self.config
        settings = config.listener
        return ServeSettings(
            port=settings.port,
            interface=settings.interface,
            tls=settings.tls,
            identity=settings.identity,
            keystore=config.keystore,
            kek_file=config.kek_file,
            users=config.password_hashes(),
            client_ca=list(config.client_cert_roots),
            delta_sync=settings.delta_sync,
            read_only=settings.read_only,
            reserve_free_mb=settings.reserve_free_mb,
        )

    def _assemble(self) -> Assembly:
        collections = None
        if len(self._databases) == 1:
            ((name, database),) = self._databases.items()
            db_config = self.config.database(name)
            if db_config.collections is not None:
                collections = served_collections(database, db_config.collections)
        return assemble(self._databases, self._serve_settings(), collections=collections)

    def _check_keystore(self) -> None:
        """With TLS on, the keystore and the identity must be usable before the agent reports
        ready: an unsafe keystore is a reason not to start (exit 1), not a retry loop."""
        if not self.config.listener.tls:
            return
        settings = self._serve_settings()
        try:
            keystore = open_keystore(settings)
            found = resolve_identity(settings, keystore, list(self._databases))
        except AssemblyError as exc:
            raise AgentError(str(exc)) from None
        if found.replaced:
            self._record_error(found.replaced)
            self._identity_replaced = found.replaced

    def _tls_status(
        self, listener: URLEndpointListener, found: ServerIdentity | None
    ) -> dict[str, Any] | None:
        identity = listener.tls_identity
        if not self.config.listener.tls or identity is None:
            return None
        if found is not None and found.replaced:
            self._record_error(found.replaced)
            self._identity_replaced = found.replaced
        status: dict[str, Any] = {
            "alias": self.config.listener.identity,
            "fingerprint": identity.fingerprint_sha256,
            "expires": identity.expiration.isoformat(),
        }
        if self._identity_replaced:
            status["replaced"] = self._identity_replaced
        return status

    # ------------------------------------------------------------------ mDNS

    async def _advertise(self, iface: InterfaceState) -> None:
        mdns = self.config.mdns
        if not mdns.enabled or self._listener is None:
            await self._withdraw()
            return
        if self.config.listener.interface_is_address:
            addresses: tuple[str, ...] = (str(self.config.listener.interface),)
        else:
            addresses = iface.addresses
        fingerprint = (self._tls or {}).get("fingerprint")
        port = self._listener.port
        if port is None:  # stopped meanwhile
            await self._withdraw()
            return
        try:
            txt = build_txt(
                list(self._databases),
                tls=self.config.listener.tls,
                fingerprint=fingerprint,
                port=port,
            )
            if self._advertiser is None:
                self._advertiser = ServiceAdvertiser(
                    mdns.service_type,
                    mdns.instance_name,
                    interface=iface.name if iface.index else None,
                )
            if self._advertiser.advertising:
                await self._advertiser.update(addresses, port, txt)
            else:
                await self._advertiser.advertise(addresses, port, txt)
        except Exception as exc:
            if self._mdns_error != str(exc):
                self._record_error(f"mDNS advertisement failed: {exc}")
            self._mdns_error = str(exc)
            self._schedule_retry()
            return
        self._mdns_error = None

    async def _withdraw(self) -> None:
        if self._advertiser is not None and self._advertiser.advertising:
            await self._advertiser.withdraw()

    def _mdns_status(self) -> dict[str, Any]:
        mdns = self.config.mdns
        advertiser = self._advertiser
        return {
            "enabled": mdns.enabled,
            "name": advertiser.name if advertiser is not None else mdns.instance_name,
            "type": mdns.service_type,
            "addresses": list(advertiser.addresses) if advertiser is not None else [],
        }

    # ------------------------------------------------------------------ databases

    def _open_databases(self, configs: tuple[DatabaseConfig, ...] | list[DatabaseConfig]) -> None:
        for db_config in configs:
            self._database_errors.pop(db_config.name, None)
            try:
                database = Database.open(db_config.path, create=True)
                for full_name in db_config.collections or ():
                    database.collection(full_name, create=True)
            except Exception as exc:
                message = f"database {db_config.name} ({db_config.path}): {exc}"
                self._database_errors[db_config.name] = message
                self._record_error(message)
                continue
            self._databases[db_config.name] = database
            log.info("opened database %s at %s", db_config.name, db_config.path)

    def _close_databases(self, names: list[str]) -> None:
        for name in names:
            database = self._databases.pop(name, None)
            self._database_errors.pop(name, None)
            if database is None:
                continue
            try:
                database.close()
            except Exception as exc:
                self._record_error(f"closing database {name} failed: {exc}")

    def _database_status(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = []
        for db_config in self.config.databases:
            entry: dict[str, Any] = {
                "name": db_config.name,
                "path": str(db_config.path),
                "documents": None,
                "last_sequence": None,
            }
            database = self._databases.get(db_config.name)
            if database is None:
                entry["error"] = self._database_errors.get(db_config.name, "not open")
            else:
                try:
                    collections = [
                        c
                        for c in database.collections()
                        if db_config.collections is None or c.full_name in db_config.collections
                    ]
                    entry["collections"] = [c.full_name for c in collections]
                    entry["documents"] = sum(c.count() for c in collections)
                    entry["last_sequence"] = max((c.last_sequence for c in collections), default=0)
                except Exception as exc:
                    entry["error"] = str(exc)
                if self._maintenance is not None:  # sizes, free space, last maintenance
                    entry.update(self._maintenance.status()["databases"].get(db_config.name, {}))
            result.append(entry)
        return result

    def _phones_connected(self) -> int:
        """Open replication connections (the nightly compaction waits for none)."""
        return len(self._listener.connections()) if self._listener is not None else 0

    def _connection_status(self) -> list[dict[str, Any]]:
        if self._listener is None:
            return []
        result = []
        for info in self._listener.connections():
            stats = info.stats
            result.append(
                {
                    "peer": info.peer,
                    "user": info.user,
                    "database": info.database,
                    "since": datetime.fromtimestamp(info.connected_at, UTC).isoformat(
                        timespec="seconds"
                    ),
                    "docs_in": stats.docs_in,
                    "docs_out": stats.docs_out,
                    # byte counts appear once the listener's stats keep them
                    "bytes_in": getattr(stats, "bytes_in", None),
                    "bytes_out": getattr(stats, "bytes_out", None),
                    "busy": bool(info.busy),
                }
            )
        return result

    # ------------------------------------------------------------------ reload

    async def _reload(self) -> None:
        self.notifier.reloading("reloading configuration")
        if self.config_path is None:
            self._record_error("reload: this agent was not started from a configuration file")
            self.notifier.ready(self._status_line())
            return
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            self._record_error(f"reload failed, keeping the running configuration: {exc}")
            self.notifier.ready(self._status_line())
            return
        old, self.config = self.config, new
        log.info("configuration reloaded from %s", self.config_path)
        if self._maintenance is not None:
            self._maintenance.update_settings(new.maintenance)
        _apply_log_level(new.log_level)
        if new.control_socket != old.control_socket:
            await self._restart_control_server()
        old_dbs = {db.name: db for db in old.databases}
        new_dbs = {db.name: db for db in new.databases}
        changed = {n for n in old_dbs.keys() | new_dbs.keys() if old_dbs.get(n) != new_dbs.get(n)}
        retrying = {n for n in new_dbs if n not in self._databases}
        restart_listener = bool(changed) or (
            (old.listener, old.users, old.client_cert_roots, old.keystore)
            != (new.listener, new.users, new.client_cert_roots, new.keystore)
        )
        if restart_listener or retrying:
            await self._stop_listener("configuration changed")
            if self._retry is not None:
                self._retry.cancel()
                self._retry = None
            self._close_databases(sorted(changed & self._databases.keys()))
            self._database_errors = {n: e for n, e in self._database_errors.items() if n in new_dbs}
            self._open_databases(
                [new_dbs[n] for n in sorted((changed | retrying) & new_dbs.keys())]
            )
        if new.listener.interface != old.listener.interface:
            await self._withdraw()
            if self._watcher is not None:
                await self._watcher.close()
            await self._start_watcher()
        replace_advertiser = (
            new.mdns != old.mdns or new.listener.interface != old.listener.interface
        )
        if replace_advertiser and self._advertiser is not None:
            await self._advertiser.close()
            self._advertiser = None
        self.notifier.ready(self._status_line())

    async def _restart_control_server(self) -> None:
        if self._control is not None:
            await self._control.close()
        self._control = ControlServer(self.config.control_socket, self.status)
        try:
            await self._control.start()
        except (OSError, control.ControlError) as exc:
            self._record_error(f"control socket {self.config.control_socket}: {exc}")
            self._control = None

    # ------------------------------------------------------------------ helpers

    @property
    def _interface_label(self) -> str:
        return self.config.listener.interface or "all interfaces"

    @property
    def _binds_by_name(self) -> bool:
        settings = self.config.listener
        return settings.interface is not None and not settings.interface_is_address

    def _set_state(self, state: str, detail: str) -> None:
        if (state, detail) == (self.state, self.detail):
            return
        self.state, self.detail = state, detail
        log.info("state: %s%s", state, f" ({detail})" if detail else "")
        self.notifier.status(self._status_line())

    def _status_line(self) -> str:
        if self.state == control.SERVING and self._listener is not None:
            urls = self._listener.urls
            return f"serving on {self._interface_label}: " + (", ".join(urls) or "no address")
        return f"{self.state}: {self.detail}" if self.detail else self.state

    def _record_error(self, message: str) -> None:
        log.error("%s", message)
        self._errors.append(
            {"time": datetime.now(UTC).isoformat(timespec="seconds"), "message": message}
        )


def _apply_log_level(level: str) -> None:
    logging.getLogger("fieldsync").setLevel(level.upper())


async def run_agent(config_path: str | Path, *, debounce: float = 0.25) -> int:
    """Load ``config_path`` and run an :class:`Agent` until it is stopped; the exit code."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    return await Agent(config, config_path=config_path, debounce=debounce).run()
