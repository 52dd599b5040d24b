"""Configuration parsing: the example file, defaults, and every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldsync.agent.config import (
    DEFAULT_CONTROL_SOCKET,
    DEFAULT_PORT,
    ConfigError,
    load_config,
    parse_config,
)
from fieldsync.agent.passwords import hash_password

EXAMPLE = Path(__file__).resolve().parents[2] / "board" / "fieldsync.toml.example"
MINIMAL = '[databases.inventory]\npath = "/data/inventory"\n'
GOOD_HASH = hash_password("secret")
SALT = "c2FsdHNhbHRzYWx0c2FsdA"


def test_example_file_parses() -> None:
    config = load_config(EXAMPLE)
    assert config.listener.interface == "wlan0"
    assert config.listener.port == 4984
    assert config.listener.tls is True
    assert [db.name for db in config.databases] == ["inventory"]
    assert config.databases[0].collections == ("_default._default", "field.readings")
    assert config.mdns.service_type == "_fieldsync._tcp"
    assert config.source == EXAMPLE


def test_example_file_with_a_user_uncommented_parses() -> None:
    text = EXAMPLE.read_text().replace(
        '# surveyor = "scrypt$16384$8$1$<salt>$<hash>"', f'surveyor = "{GOOD_HASH}"'
    )
    assert 'surveyor = "scrypt$' in text
    config = parse_config(text)
    assert [user.name for user in config.users] == ["surveyor"]


def test_defaults() -> None:
    config = parse_config(MINIMAL, base_dir=Path("/etc/fieldsync"))
    assert config.listener.interface is None
    assert config.listener.port == DEFAULT_PORT == 4984
    assert config.listener.tls is True
    assert config.listener.delta_sync is False
    assert config.listener.read_only is False
    assert config.listener.reserve_free_mb is None  # the listener's default reserve
    assert config.control_socket == DEFAULT_CONTROL_SOCKET
    assert config.mdns.enabled is True
    assert config.mdns.service_type == "_fieldsync._tcp"
    assert config.mdns.instance_name  # the host name
    assert config.databases[0].collections is None
    assert config.users == ()
    assert config.log_level == "info"


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "fieldsync.toml"
    path.write_text('keystore = "keys"\n[databases.a]\npath = "db/a"\n')
    config = load_config(path)
    assert config.databases[0].path == tmp_path / "db" / "a"
    assert config.keystore == tmp_path / "keys"


def test_interface_may_be_an_ip_address() -> None:
    config = parse_config(MINIMAL + '[listener]\ninterface = "192.168.4.1"\n')
    assert config.listener.interface_is_address
    config = parse_config(MINIMAL + '[listener]\ninterface = "wlan0"\n')
    assert not config.listener.interface_is_address


def test_configs_compare_by_value() -> None:
    assert parse_config(MINIMAL) == parse_config(MINIMAL)
    assert parse_config(MINIMAL) != parse_config(MINIMAL + "[listener]\nport = 5000\n")


def test_service_type_accepts_trailing_local() -> None:
    config = parse_config(MINIMAL + '[mdns]\nservice_type = "_cbl._tcp.local."\n')
    assert config.mdns.service_type == "_cbl._tcp"
    assert config.mdns.qualified_type == "_cbl._tcp.local."


BAD_CASES = [
    # (extra TOML, expected key, a word the problem must contain)
    ("[listener]\nport = 0\n", "listener.port", "between 1 and 65535"),
    ("[listener]\nport = 70000\n", "listener.port", "between 1 and 65535"),
    ('[listener]\nport = "4984"\n', "listener.port", "integer"),
    ("[listener]\nport = 4984.0\n", "listener.port", "integer"),
    ("[listener]\nport = true\n", "listener.port", "integer"),
    ('[listener]\ntls = "yes"\n', "listener.tls", "true or false"),
    ("[listener]\ndelta_sync = 1\n", "listener.delta_sync", "true or false"),
    ('[listener]\nread_only = "no"\n', "listener.read_only", "true or false"),
    ('[listener]\nreserve_free_mb = "64"\n', "listener.reserve_free_mb", "integer"),
    ("[listener]\nreserve_free_mb = -1\n", "listener.reserve_free_mb", "0 or more"),
    ('[listener]\ninterface = ""\n', "listener.interface", "empty"),
    ('[listener]\ninterface = "a-very-long-interface-name"\n', "listener.interface", "15"),
    ('[listener]\ninterface = "wl an0"\n', "listener.interface", "not an interface"),
    ('[listener]\ninterface = "eth0/1"\n', "listener.interface", "not an interface"),
    ("[listener]\ninterface = 3\n", "listener.interface", "string"),
    ('[listener]\nidentity = "no spaces allowed"\n', "listener.identity", "alias"),
    ("[listener]\nprot = 4984\n", "listener.prot", "unknown setting"),
    ('listener = "wlan0"\n', "listener", "table"),
    ('colour = "red"\n', "colour", "unknown setting"),
    ('log_level = "verbose"\n', "log_level", "one of"),
    ("log_level = 10\n", "log_level", "string"),
    ('control_socket = "/run/' + "x" * 120 + '.sock"\n', "control_socket", "107 bytes"),
    ("control_socket = 5\n", "control_socket", "path"),
    ('keystore = ""\n', "keystore", "empty"),
    ('client_cert_roots = "/etc/ca.pem"\n', "client_cert_roots", "list"),
    ("client_cert_roots = [1]\n", "client_cert_roots[0]", "path"),
    ('[users]\nalice = "hunter2"\n', "users.alice", "plaintext"),
    ('[users]\nalice = "correct horse battery staple"\n', "users.alice", "plaintext"),
    ("[users]\nalice = 1234\n", "users.alice", "hash"),
    ('[users]\nalice = "$2b$12$abcdefghijklmnopqrstuv"\n', "users.alice", "scrypt$n$r$p"),
    ('[users]\nalice = "scrypt$16384$8$1$c2FsdA$' + "A" * 43 + '"\n', "users.alice", "salt"),
    (
        '[users]\nalice = "scrypt$100$8$1$' + SALT + "$" + "A" * 43 + '"\n',
        "users.alice",
        "power of two",
    ),
    ('[users]\n"bad:name" = "' + GOOD_HASH + '"\n', 'users."bad:name"', "':'"),
    (
        'client_cert_roots = ["/etc/ca.pem"]\n[users]\nalice = "' + GOOD_HASH + '"\n',
        "client_cert_roots",
        "either",
    ),
    (
        'client_cert_roots = ["/etc/ca.pem"]\n[listener]\ntls = false\n',
        "client_cert_roots",
        "tls = true",
    ),
    ('[mdns]\nservice_type = "fieldsync"\n', "mdns.service_type", "service type"),
    ('[mdns]\nservice_type = "_this-is-far-too-long._tcp"\n', "mdns.service_type", "1-15"),
    ('[mdns]\nservice_type = "_fieldsync._sctp"\n', "mdns.service_type", "_tcp"),
    ('[mdns]\ninstance_name = "' + "x" * 64 + '"\n', "mdns.instance_name", "63 bytes"),
    ('[mdns]\nenabled = "true"\n', "mdns.enabled", "true or false"),
    ('[mdns]\nname = "x"\n', "mdns.name", "unknown setting"),
]


@pytest.mark.parametrize(("extra", "key", "word"), BAD_CASES, ids=[c[1] for c in BAD_CASES])
def test_invalid_settings_name_the_key(extra: str, key: str, word: str) -> None:
    # top-level keys must precede the first table, so the database goes last
    with pytest.raises(ConfigError) as caught:
        parse_config(extra + MINIMAL)
    assert caught.value.key == key
    assert word in caught.value.problem
    assert str(caught.value).startswith(f"{key}: ")


BAD_DATABASES = [
    ("", "databases", "no database"),
    ("[databases]\n", "databases", "empty"),
    ('databases = ["a"]\n', "databases", "table"),
    ("[databases.inventory]\n", "databases.inventory.path", "missing"),
    ("[databases.inventory]\npath = 5\n", "databases.inventory.path", "path string"),
    (
        '[databases.inventory]\npath = "/d/i"\nfile = "x"\n',
        "databases.inventory.file",
        "unknown setting",
    ),
    ('[databases."in ventory"]\npath = "/d/i"\n', 'databases."in ventory"', "database names"),
    ('[databases._private]\npath = "/d/i"\n', "databases._private", "database names"),
    (
        '[databases.inventory]\npath = "/d/i"\ncollections = "items"\n',
        "databases.inventory.collections",
        "list",
    ),
    (
        '[databases.inventory]\npath = "/d/i"\ncollections = []\n',
        "databases.inventory.collections",
        "empty",
    ),
    (
        '[databases.inventory]\npath = "/d/i"\ncollections = ["items"]\n',
        "databases.inventory.collections[0]",
        "scope.name",
    ),
    (
        '[databases.inventory]\npath = "/d/i"\ncollections = ["a.b.c"]\n',
        "databases.inventory.collections[0]",
        "scope.name",
    ),
    (
        '[databases.inventory]\npath = "/d/i"\ncollections = ["_default._default", 3]\n',
        "databases.inventory.collections[1]",
        "string",
    ),
    (
        '[databases.inventory]\npath = "/d/i"\ncollections = ["_secret.items"]\n',
        "databases.inventory.collections[0]",
        "not a valid scope",
    ),
    (
        '[databases.inventory]\npath = "/d/i"\ncollections = ["s.x", "s.x"]\n',
        "databases.inventory.collections[1]",
        "twice",
    ),
    (
        '[databases.a]\npath = "/d/a"\n[databases.b]\npath = "/d/a"\n',
        "databases.b.path",
        "same file",
    ),
    (
        '[databases.a]\npath = "/d/a"\ncollections = ["s.x"]\n[databases.b]\npath = "/d/b"\n',
        "databases.a.collections",
        "one database",
    ),
    (
        '[databases.a]\npath = "/d/a"\n[databases.b]\npath = "/d/b"\ncollections = ["s.x"]\n',
        "databases.b.collections",
        "one database",
    ),
]


@pytest.mark.parametrize(("text", "key", "word"), BAD_DATABASES, ids=[c[1] for c in BAD_DATABASES])
def test_invalid_databases_name_the_key(text: str, key: str, word: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert caught.value.key == key
    assert word in caught.value.problem


def test_toml_syntax_error_is_reported() -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_config("[listener\nport = 1\n")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_errors_from_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "fieldsync.toml"
    path.write_text(MINIMAL + "[listener]\nport = -1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.source == path
    assert str(caught.value) == f"{path}: listener.port: must be between 1 and 65535, not -1"


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "fieldsync.toml"
    path.write_bytes(b'log_level = "\xff"\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(path)


def test_the_hash_is_kept_out_of_repr() -> None:
    config = parse_config(f'[users]\nalice = "{GOOD_HASH}"\n' + MINIMAL)
    assert GOOD_HASH not in repr(config)
    assert config.password_hashes() == {"alice": GOOD_HASH}
