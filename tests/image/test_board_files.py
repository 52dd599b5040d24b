"""The board's static files: the image's agent configuration and the systemd units."""

from __future__ import annotations

import configparser
from pathlib import Path

from fieldsync.agent.config import load_config

BOARD = Path(__file__).resolve().parents[2] / "board"


UNITS = BOARD / "rootfs/usr/lib/systemd/system"


def read_unit(name: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(UNITS / name)
    return unit


def words(unit: configparser.ConfigParser, section: str, key: str) -> set[str]:
    return set(unit[section].get(key, "").split())


def test_image_agent_config_is_valid_and_uses_the_secured_keystore():
    config = load_config(BOARD / "rootfs/etc/fieldsync/fieldsync.toml")
    assert config.listener.interface == "wlan0"
    assert config.keystore == Path("/var/lib/fieldsync/keys")
    assert config.listener.tls
    for database in config.databases:
        assert database.path.is_relative_to("/var/lib/fieldsync/db")


def test_agent_unit_hardening():
    unit = read_unit("fieldsync-agent.service")
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["User"] == "fieldsync" and service["Group"] == "fieldsync"
    assert int(service["WatchdogSec"]) > 0
    assert service["Restart"] == "on-failure"
    caps = {"CAP_NET_BIND_SERVICE", "CAP_NET_RAW"}
    assert words(unit, "Service", "AmbientCapabilities") == caps
    assert words(unit, "Service", "CapabilityBoundingSet") == caps
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["RuntimeDirectory"] == "fieldsync"
    config = load_config(BOARD / "rootfs/etc/fieldsync/fieldsync.toml")
    writable = words(unit, "Service", "ReadWritePaths")
    assert str(config.keystore) in writable
    assert str(config.control_socket.parent) == "/run/" + service["RuntimeDirectory"]
    needed = words(unit, "Unit", "RequiresMountsFor")
    assert str(config.keystore) in needed
    for database in config.databases:
        assert any(database.path.is_relative_to(p) for p in writable)
        assert any(database.path.is_relative_to(p) for p in needed)
    assert service["ExecStart"].split()[:4] == [
        "/usr/bin/fieldsync",
        "agent",
        "--config",
        "/etc/fieldsync/fieldsync.toml",
    ]
    assert "fieldsync-firstboot.service" in words(unit, "Unit", "After")


def test_firstboot_unit_runs_before_network_ssh_and_agent_and_only_when_needed():
    unit = read_unit("fieldsync-firstboot.service")
    before = words(unit, "Unit", "Before")
    assert {
        "ssh.service",
        "fieldsync-agent.service",
        "systemd-networkd.service",
        "network-pre.target",
        "wpa_supplicant@wlan0.service",
        "hostapd@wlan0.service",
    } <= before
    assert "/var/lib/fieldsync/keys" in words(unit, "Unit", "RequiresMountsFor")
    text = (UNITS / "fieldsync-firstboot.service").read_text()
    # triggering conditions (OR-ed with '|'): not yet stamped, or settings on the boot partition
    assert "ConditionPathExists=|!/var/lib/fieldsync/firstboot.done" in text
    assert "ConditionPathExists=|/boot/firmware/fieldsync-settings.toml" in text
    assert unit["Service"]["ExecStart"].endswith("/usr/lib/fieldsync/firstboot.py run")


def test_firstboot_knows_when_the_keystore_has_its_own_partition(firstboot):
    """A keystore named in /etc/fstab must be mounted before keys are made (the card); without
    such a line (the package on a running system) a plain 0700 directory is the fallback."""
    keys = Path("/var/lib/fieldsync/keys")
    card = (
        "LABEL=FS-ROOT  /  ext4  rw  0  1\n"
        "# LABEL=OLD  /var/lib/fieldsync/keys  ext4  rw  0  2\n"
        "LABEL=FS-KEYS  /var/lib/fieldsync/keys/  ext4  rw,nosuid,nodev,noexec,nofail  0  2\n"
    )
    assert firstboot.fstab_mounts(keys, card)
    assert not firstboot.fstab_mounts(keys, card.splitlines(keepends=True)[0])
    assert not firstboot.fstab_mounts(keys, "# LABEL=OLD /var/lib/fieldsync/keys ext4 rw 0 2\n")
    assert not firstboot.fstab_mounts(keys, "")
