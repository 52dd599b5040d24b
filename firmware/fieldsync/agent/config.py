"""The agent's configuration file (``/etc/fieldsync/fieldsync.toml``), parsed and validated.

Every problem raises :class:`ConfigError` naming the offending key as a dotted path
(``listener.port``, ``databases.inventory.collections[1]``) and saying what is wrong, so an
operator can fix the file without reading code. Unknown keys are errors too: a typo must not
silently fall back to a default.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fieldsync.agent.advertiser import DEFAULT_SERVICE_TYPE
from fieldsync.errors import FieldsyncError
from fieldsync.listener.config import DEFAULT_PORT
from fieldsync.listener.passwords import describe_password_hash_problem
from fieldsync.store.names import is_valid_collection_name
from fieldsync.tls import DEFAULT_SERVER_ALIAS
from fieldsync.tls.keystore import DEVICE_KEYSTORE, validate_alias

DEFAULT_CONFIG_PATH = Path("/etc/fieldsync/fieldsync.toml")
DEFAULT_CONTROL_SOCKET = Path("/run/fieldsync/control.sock")
DEFAULT_KEYSTORE = DEVICE_KEYSTORE
DEFAULT_IDENTITY_ALIAS = DEFAULT_SERVER_ALIAS
LOG_LEVELS = ("debug", "info", "warning", "error")

_DB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_$()+\-]{0,99}$")
_SERVICE_TYPE = re.compile(r"^_[A-Za-z0-9](?:[A-Za-z0-9\-]{0,13}[A-Za-z0-9])?\._(?:tcp|udp)$")
_IFNAME_MAX = 15  # IFNAMSIZ - 1
_SUN_PATH_MAX = 107


class ConfigError(FieldsyncError, ValueError):
    """An invalid configuration: ``key`` is the dotted path, ``problem`` what is wrong with it."""

    def __init__(self, key: str, problem: str, *, source: Path | None = None) -> None:
        self.key = key
        self.problem = problem
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {problem}" if key else f"{where}{problem}")


@dataclass(frozen=True)
class DatabaseConfig:
    """One database served at ``/<name>``: its ``collections`` (``scope.name``), or all (None)."""

    name: str
    path: Path
    collections: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ListenerSettings:
    """How the listener listens; ``interface``: an interface name, an IP address or None (all)."""

    interface: str | None = None
    port: int = DEFAULT_PORT
    tls: bool = True
    identity: str = DEFAULT_IDENTITY_ALIAS
    delta_sync: bool = False
    read_only: bool = False
    reserve_free_mb: int | None = None  # None: the listener's default reserve

    @property
    def interface_is_address(self) -> bool:
        """True when ``interface`` names an IP address rather than an interface."""
        return self.interface is not None and _is_ip_address(self.interface)


@dataclass(frozen=True)
class UserConfig:
    """A user allowed to replicate, with a salted password hash (never the password)."""

    name: str
    password_hash: str = field(repr=False)


@dataclass(frozen=True)
class MdnsSettings:
    """DNS-SD advertisement of the listener."""

    enabled: bool = True
    service_type: str = DEFAULT_SERVICE_TYPE
    instance_name: str = ""

    @property
    def qualified_type(self) -> str:
        """The service type as DNS-SD writes it: ``_fieldsync._tcp.local.``."""
        return f"{self.service_type}.local."


@dataclass(frozen=True)
class MaintenanceSettings:
    """When the agent compacts its databases by itself (``[maintenance]``, issue 14).

    ``compact_at`` is a local ``HH:MM`` (None = no schedule); the scheduled run waits while a
    phone is connected when ``only_when_idle``, but at most ``max_delay_hours``. Below
    ``min_free_mb`` free on a database's file system it compacts early (at most once an hour).
    """

    enabled: bool = True
    compact_at: tuple[int, int] | None = (3, 30)
    only_when_idle: bool = True
    max_delay_hours: float = 6.0
    min_free_mb: int = 256
    check_minutes: float = 10.0
    tombstone_purge_days: float = 30.0
    peer_retention_days: float = 90.0


@dataclass(frozen=True)
class AgentConfig:
    """Everything ``fieldsync agent`` needs, as read from one TOML file."""

    databases: tuple[DatabaseConfig, ...]
    listener: ListenerSettings = ListenerSettings()
    users: tuple[UserConfig, ...] = ()
    client_cert_roots: tuple[Path, ...] = ()
    keystore: Path = DEFAULT_KEYSTORE
    #: Key-encryption-key file for identities stored encrypted (``fieldsync identity
    #: --kek-file``); None: keys are stored in clear (mode 0600).
    kek_file: Path | None = None
    mdns: MdnsSettings = MdnsSettings()
    log_level: str = "info"
    control_socket: Path = DEFAULT_CONTROL_SOCKET
    maintenance: MaintenanceSettings = MaintenanceSettings()
    source: Path | None = field(default=None, compare=False)

    def password_hashes(self) -> dict[str, str]:
        """User name → salted password hash."""
        return {user.name: user.password_hash for user in self.users}

    def database(self, name: str) -> DatabaseConfig:
        """The database called ``name`` (KeyError when there is none)."""
        for database in self.databases:
            if database.name == name:
                return database
        raise KeyError(name)


def load_config(path: str | Path = DEFAULT_CONFIG_PATH) -> AgentConfig:
    """Read and validate the configuration file at ``path``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("", f"configuration file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError("", f"cannot read configuration file {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"{path} is not UTF-8 text ({exc.reason})", source=path) from None
    try:
        return parse_config(text, base_dir=path.parent, source=path)
    except ConfigError as exc:
        if exc.source is None:
            raise ConfigError(exc.key, exc.problem, source=path) from None
        raise


def parse_config(
    text: str, *, base_dir: Path | None = None, source: Path | None = None
) -> AgentConfig:
    """Parse configuration TOML; relative paths are taken relative to ``base_dir``."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"not valid TOML: {exc}", source=source) from None
    return _Parser(base_dir or Path.cwd(), source).parse(document)


class _Parser:
    def __init__(self, base_dir: Path, source: Path | None) -> None:
        self.base_dir = base_dir
        self.source = source

    def parse(self, doc: dict[str, Any]) -> AgentConfig:
        _check_keys(
            doc,
            "",
            {
                "log_level",
                "control_socket",
                "keystore",
                "kek_file",
                "client_cert_roots",
                "listener",
                "databases",
                "users",
                "mdns",
                "maintenance",
            },
        )
        log_level = _string(doc, "log_level", "", default="info").lower()
        if log_level not in LOG_LEVELS:
            raise ConfigError(
                "log_level", f"must be one of {', '.join(LOG_LEVELS)}, not {log_level!r}"
            )
        control_socket = self._path(doc, "control_socket", "", DEFAULT_CONTROL_SOCKET)
        if len(str(control_socket).encode()) > _SUN_PATH_MAX:
            raise ConfigError(
                "control_socket", f"path is longer than {_SUN_PATH_MAX} bytes (a Unix socket limit)"
            )
        keystore = self._path(doc, "keystore", "", DEFAULT_KEYSTORE)
        kek_file = self._path(doc, "kek_file", "", None) if "kek_file" in doc else None
        roots = self._path_list(doc, "client_cert_roots", "")
        listener = self._listener(_table(doc, "listener", ""))
        users = self._users(_table(doc, "users", ""))
        if users and roots:
            raise ConfigError(
                "client_cert_roots",
                "a listener has one authenticator: configure either [users] (passwords) or "
                "client_cert_roots (client certificates), not both",
            )
        if roots and not listener.tls:
            raise ConfigError("client_cert_roots", "client certificates need listener.tls = true")
        return AgentConfig(
            databases=self._databases(doc),
            listener=listener,
            users=users,
            client_cert_roots=roots,
            keystore=keystore,
            kek_file=kek_file,
            mdns=self._mdns(_table(doc, "mdns", "")),
            log_level=log_level,
            control_socket=control_socket,
            maintenance=self._maintenance(_table(doc, "maintenance", "")),
            source=self.source,
        )

    def _maintenance(self, table: dict[str, Any]) -> MaintenanceSettings:
        prefix = "maintenance."
        defaults = MaintenanceSettings()
        _check_keys(
            table,
            prefix,
            {
                "enabled",
                "compact_at",
                "only_when_idle",
                "max_delay_hours",
                "min_free_mb",
                "check_minutes",
                "tombstone_purge_days",
                "peer_retention_days",
            },
        )
        compact_at: tuple[int, int] | None = defaults.compact_at
        if "compact_at" in table:
            text = _string(table, "compact_at", prefix, default=None)
            match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", text.strip())
            if text.strip().lower() in ("", "never", "off"):
                compact_at = None
            elif match is None:
                raise ConfigError(
                    "maintenance.compact_at",
                    f'must be a local time "HH:MM" (e.g. "03:30") or "off", not {text!r}',
                )
            else:
                compact_at = (int(match.group(1)), int(match.group(2)))

        def number(name: str, default: float, minimum: float) -> float:
            value = table.get(name, default)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(prefix + name, f"must be a number, not {_describe(value)}")
            if value < minimum:
                raise ConfigError(prefix + name, f"must be at least {minimum}, not {value}")
            return float(value)

        return MaintenanceSettings(
            enabled=_bool(table, "enabled", prefix, default=defaults.enabled),
            compact_at=compact_at,
            only_when_idle=_bool(table, "only_when_idle", prefix, default=defaults.only_when_idle),
            max_delay_hours=number("max_delay_hours", defaults.max_delay_hours, 0),
            min_free_mb=int(number("min_free_mb", defaults.min_free_mb, 0)),
            check_minutes=number("check_minutes", defaults.check_minutes, 0.1),
            tombstone_purge_days=number("tombstone_purge_days", defaults.tombstone_purge_days, 0),
            peer_retention_days=number("peer_retention_days", defaults.peer_retention_days, 0),
        )

    def _listener(self, table: dict[str, Any]) -> ListenerSettings:
        prefix = "listener."
        _check_keys(
            table,
            prefix,
            {"interface", "port", "tls", "identity", "delta_sync", "read_only", "reserve_free_mb"},
        )
        interface = _string(table, "interface", prefix, default=None)
        if interface is not None:
            interface = interface.strip()
            if not interface:
                raise ConfigError(
                    "listener.interface",
                    "is empty; name an interface (wlan0), an IP address, or leave it out",
                )
            if not _is_ip_address(interface):
                problem = _interface_name_problem(interface)
                if problem:
                    raise ConfigError("listener.interface", problem)
        port = table.get("port", DEFAULT_PORT)
        if isinstance(port, bool) or not isinstance(port, int):
            raise ConfigError("listener.port", f"must be an integer, not {_describe(port)}")
        if not 1 <= port <= 65535:
            raise ConfigError("listener.port", f"must be between 1 and 65535, not {port}")
        identity = _string(table, "identity", prefix, default=DEFAULT_IDENTITY_ALIAS)
        if not _is_alias(identity):
            raise ConfigError(
                "listener.identity",
                f"{identity!r} is not a keystore alias (1-128 characters from A-Z a-z 0-9 "
                ". _ @ + -, starting with a letter or digit)",
            )
        return ListenerSettings(
            interface=interface,
            port=port,
            tls=_bool(table, "tls", prefix, default=True),
            identity=identity,
            delta_sync=_bool(table, "delta_sync", prefix, default=False),
            read_only=_bool(table, "read_only", prefix, default=False),
            reserve_free_mb=_reserve_free_mb(table.get("reserve_free_mb")),
        )

    def _databases(self, doc: dict[str, Any]) -> tuple[DatabaseConfig, ...]:
        if "databases" not in doc:
            raise ConfigError(
                "databases", "no database configured; add a [databases.<name>] table with a path"
            )
        table = _table(doc, "databases", "")
        if not table:
            raise ConfigError("databases", "is empty; add a [databases.<name>] table with a path")
        result: list[DatabaseConfig] = []
        seen_paths: dict[Path, str] = {}
        for name, entry in table.items():
            key = f"databases.{_key_text(name)}"
            if not _DB_NAME.match(name):
                raise ConfigError(
                    key,
                    "database names are letters, digits and _$()+- , start with a letter or digit "
                    "and are at most 100 characters (they become the URL path)",
                )
            if not isinstance(entry, dict):
                raise ConfigError(key, f"must be a table with a path, not {_describe(entry)}")
            _check_keys(entry, key + ".", {"path", "collections"})
            if "path" not in entry:
                raise ConfigError(key + ".path", "is missing; say where the database file lives")
            path = self._path(entry, "path", key + ".", None)
            if path in seen_paths:
                raise ConfigError(
                    key + ".path", f"is the same file as databases.{seen_paths[path]}.path"
                )
            seen_paths[path] = name
            collections = self._collections(entry, key + ".collections")
            result.append(DatabaseConfig(name=name, path=path, collections=collections))
        if len(result) > 1:
            for db in result:
                if db.collections is not None:
                    raise ConfigError(
                        f"databases.{db.name}.collections",
                        "choosing collections works only when serving one database; with several "
                        "databases each is served whole (remove collections)",
                    )
        return tuple(result)

    def _collections(self, entry: dict[str, Any], key: str) -> tuple[str, ...] | None:
        if "collections" not in entry:
            return None
        value = entry["collections"]
        if not isinstance(value, list):
            raise ConfigError(
                key, f'must be a list of "scope.name" strings, not {_describe(value)}'
            )
        if not value:
            raise ConfigError(key, 'is empty; list at least one "scope.name" or leave it out')
        seen: set[str] = set()
        for index, item in enumerate(value):
            item_key = f"{key}[{index}]"
            if not isinstance(item, str):
                raise ConfigError(item_key, f'must be a "scope.name" string, not {_describe(item)}')
            problem = _collection_problem(item)
            if problem:
                raise ConfigError(item_key, problem)
            if item in seen:
                raise ConfigError(item_key, f"{item!r} is listed twice")
            seen.add(item)
        return tuple(value)

    def _users(self, table: dict[str, Any]) -> tuple[UserConfig, ...]:
        users: list[UserConfig] = []
        for name, value in table.items():
            key = f"users.{_key_text(name)}"
            if not name or name != name.strip() or ":" in name:
                raise ConfigError(key, "user names cannot be empty, contain ':' or edge spaces")
            if not isinstance(value, str):
                raise ConfigError(
                    key, f"must be a salted password hash string, not {_describe(value)}"
                )
            problem = describe_password_hash_problem(value)
            if problem:
                raise ConfigError(key, problem)
            users.append(UserConfig(name=name, password_hash=value))
        return tuple(sorted(users, key=lambda u: u.name))

    def _mdns(self, table: dict[str, Any]) -> MdnsSettings:
        prefix = "mdns."
        _check_keys(table, prefix, {"enabled", "service_type", "instance_name"})
        service_type = _string(table, "service_type", prefix, default=DEFAULT_SERVICE_TYPE)
        service_type = service_type.removesuffix(".").removesuffix(".local")
        if not _SERVICE_TYPE.match(service_type):
            raise ConfigError(
                "mdns.service_type",
                f"{service_type!r} is not a DNS-SD service type like {DEFAULT_SERVICE_TYPE!r} "
                "(underscore, 1-15 letters/digits/hyphens, then ._tcp or ._udp)",
            )
        instance = _string(table, "instance_name", prefix, default="") or default_instance_name()
        if len(instance.encode()) > 63:
            raise ConfigError("mdns.instance_name", "is longer than 63 bytes (a DNS label limit)")
        if any(ord(c) < 0x20 for c in instance):
            raise ConfigError("mdns.instance_name", "contains control characters")
        return MdnsSettings(
            enabled=_bool(table, "enabled", prefix, default=True),
            service_type=service_type,
            instance_name=instance,
        )

    def _path(self, table: dict[str, Any], name: str, prefix: str, default: Path | None) -> Path:
        value = table.get(name)
        if value is None:
            assert default is not None
            return default
        if not isinstance(value, str):
            raise ConfigError(prefix + name, f"must be a path string, not {_describe(value)}")
        if not value.strip():
            raise ConfigError(prefix + name, "is empty")
        if "\0" in value:
            raise ConfigError(prefix + name, "contains a NUL character")
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def _path_list(self, table: dict[str, Any], name: str, prefix: str) -> tuple[Path, ...]:
        value = table.get(name, [])
        if not isinstance(value, list):
            raise ConfigError(prefix + name, f"must be a list of paths, not {_describe(value)}")
        paths: list[Path] = []
        for index, item in enumerate(value):
            item_key = f"{prefix}{name}[{index}]"
            if not isinstance(item, str):
                raise ConfigError(item_key, f"must be a path string, not {_describe(item)}")
            paths.append(self._path({item_key: item}, item_key, "", None))
        return tuple(paths)


def default_instance_name() -> str:
    """The DNS-SD instance name used when none is configured: the host name."""
    name = socket.gethostname().split(".")[0] or "fieldsync"
    return name[:63]


def _check_keys(table: Mapping[str, Any], prefix: str, allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            hint = ", ".join(sorted(allowed))
            raise ConfigError(
                f"{prefix}{_key_text(key)}", f"unknown setting (expected one of: {hint})"
            )


def _table(table: Mapping[str, Any], name: str, prefix: str) -> dict[str, Any]:
    value = table.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(
            prefix + name, f"must be a table ([{prefix}{name}]), not {_describe(value)}"
        )
    return value


def _string(table: Mapping[str, Any], name: str, prefix: str, *, default: Any) -> Any:
    value = table.get(name, default)
    if value is not default and not isinstance(value, str):
        raise ConfigError(prefix + name, f"must be a string, not {_describe(value)}")
    return value


def _bool(table: Mapping[str, Any], name: str, prefix: str, *, default: bool) -> bool:
    value = table.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(prefix + name, f"must be true or false, not {_describe(value)}")
    return value


def _describe(value: Any) -> str:
    kind = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)
    shown = repr(value)
    return f"{kind} ({shown if len(shown) <= 40 else shown[:37] + '...'})"


def _key_text(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_\-]+", key) else f'"{key}"'


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _reserve_free_mb(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError("listener.reserve_free_mb", f"must be an integer, not {_describe(value)}")
    if value < 0:
        raise ConfigError("listener.reserve_free_mb", f"must be 0 or more (MiB), not {value}")
    return value


def _interface_name_problem(name: str) -> str | None:
    if len(name.encode()) > _IFNAME_MAX:
        return f"{name!r} is not an interface name or IP address (names are at most 15 bytes)"
    if name in (".", "..") or any(c in name for c in "/:") or any(c.isspace() for c in name):
        return f"{name!r} is not an interface name or IP address"
    return None


def _is_alias(text: str) -> bool:
    try:
        validate_alias(text)
    except ValueError:
        return False
    return True


def _collection_problem(text: str) -> str | None:
    parts = text.split(".")
    if len(parts) != 2:
        return f'{text!r} is not "scope.name" (e.g. "_default._default" or "inventory.items")'
    for part in parts:
        if not is_valid_collection_name(part):
            return (
                f"{text!r}: {part!r} is not a valid scope or collection name (letters, digits, "
                "'_', '-', '%', not starting with '_' or '%', at most 251 characters)"
            )
    return None
