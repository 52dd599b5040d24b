#!/usr/bin/python3
"""First boot of a fieldsync device, and the operator's settings from the boot partition.

Installed as ``/usr/lib/fieldsync/firstboot.py`` (Debian package ``fieldsync``) and run by
``fieldsync-firstboot.service`` before the network, SSH and the agent start. Standard library
only (it runs with the system's ``python3``, on the Debian image and on Raspberry Pi OS alike).

Once per card (until the stamp file exists):

1. grow the root partition and its file system to the end of the card (only when root is the
   last partition, as on the fieldsync image: boot, keystore, root);
2. generate this card's SSH host keys;
3. set a unique host name from the board serial number (fallback: the machine id);
4. check that the keystore sits on its own mounted partition, give it to the agent user with
   mode 0700, and create the device's TLS identity in it (never in the image).

Every boot where ``fieldsync-settings.toml`` (or ``.txt``) or ``fieldsync.toml`` is on the boot
partition: validate and apply the operator's settings (host name, SSH key, Wi-Fi client or access
point, the agent's configuration), then delete those files from the FAT partition (they hold a
Wi-Fi passphrase) and leave ``fieldsync-settings.log`` there saying what was done.

On a system that was already running when the package was installed (``install``, run by the
package's postinst): only the keystore and the TLS identity, and the stamp, so that the card
steps above never run on it. Without a secured partition in ``/etc/fstab`` the keystore is a
directory on the root file system (0700, owner ``fieldsync``).

Commands: ``run`` (the unit), ``install`` (postinst), ``check SETTINGS`` (validate a settings
file, e.g. before flashing), ``render SETTINGS --root DIR [--backend networkd|networkmanager]``
(write the files the settings would produce under DIR, for review and for the tests).
"""

from __future__ import annotations

import argparse
import datetime
import grp
import hashlib
import ipaddress
import os
import pwd
import re
import socket
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

SETTINGS_NAMES = ("fieldsync-settings.toml", "fieldsync-settings.txt")
AGENT_CONFIG_NAME = "fieldsync.toml"
SETTINGS_LOG_NAME = "fieldsync-settings.log"
BOOT_DIR = Path("/boot/firmware")
STAMP = Path("/var/lib/fieldsync/firstboot.done")
AGENT_CONFIG = Path("/etc/fieldsync/fieldsync.toml")
SECURED_KEYSTORE = Path("/var/lib/fieldsync/keys")
AGENT_USER = "fieldsync"
FIELDSYNC = "/usr/bin/fieldsync"
FSTAB = Path("/etc/fstab")
DEFAULT_ALIAS = "fieldsync"
DEFAULT_SSH_USER = "admin"
HOSTNAME_PREFIX = "fieldsync-"
MIN_GROW_BYTES = 16 << 20
#: Validity of the device's self-signed certificate: a field device is not re-keyed yearly, and
#: phones that pinned the certificate would lose it when it expired.
IDENTITY_DAYS = 3650

_HOSTNAME = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_USERNAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_SSH_KEY = re.compile(
    r"^(?:ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)|sk-ssh-ed25519@openssh\.com|"
    r"sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}(?: [^\r\n]*)?$"
)
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
#: 2.4 GHz channels hostapd is configured for (hw_mode=g); 5 GHz needs DFS rules per country.
_AP_CHANNELS = range(1, 14)
DEFAULT_AP_ADDRESS = ipaddress.IPv4Interface("192.168.4.1/24")


class SettingsError(ValueError):
    """An invalid settings file; ``key`` is the dotted path of the offending setting."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}" if key else problem)


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class WifiClient:
    """Join an existing Wi-Fi network on wlan0 (DHCP)."""

    country: str
    ssid: str
    passphrase: str | None  # None: an open network


@dataclass(frozen=True)
class AccessPoint:
    """Run a Wi-Fi access point on wlan0 with a static address and a DHCP server."""

    country: str
    ssid: str
    passphrase: str
    channel: int = 6
    address: ipaddress.IPv4Interface = DEFAULT_AP_ADDRESS


@dataclass(frozen=True)
class Settings:
    """The operator's settings, as read from ``fieldsync-settings.toml``."""

    hostname: str | None = None
    ssh_user: str = DEFAULT_SSH_USER
    ssh_keys: tuple[str, ...] = ()
    wifi: WifiClient | AccessPoint | None = None
    timezone: str | None = None
    agent_config: str | None = field(default=None, repr=False)  # fieldsync.toml text


def parse_settings(text: str) -> Settings:
    """Parse and validate a settings file (TOML); raises SettingsError naming the key."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError("", f"not valid TOML: {exc}") from None
    _only_keys(doc, "", {"hostname", "timezone", "ssh", "wifi"})
    hostname = _opt_str(doc, "hostname", "")
    if hostname is not None:
        hostname = hostname.strip().lower()
        if not _HOSTNAME.match(hostname):
            raise SettingsError(
                "hostname",
                f"{hostname!r} is not a host name (letters, digits and '-', at most 63, "
                "not starting or ending with '-')",
            )
    timezone = _opt_str(doc, "timezone", "")
    if timezone is not None and (
        not re.fullmatch(r"[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*", timezone) or ".." in timezone
    ):
        raise SettingsError("timezone", f"{timezone!r} is not a zone name like Europe/Berlin")
    ssh = _table(doc, "ssh", "")
    _only_keys(ssh, "ssh.", {"user", "authorized_keys"})
    user = _opt_str(ssh, "user", "ssh.") or DEFAULT_SSH_USER
    if not _USERNAME.match(user) or user in ("root", AGENT_USER):
        raise SettingsError(
            "ssh.user", f"{user!r} is not a usable login name (lower case, not root or fieldsync)"
        )
    keys = ssh.get("authorized_keys", [])
    if isinstance(keys, str):
        keys = [keys]
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise SettingsError("ssh.authorized_keys", "must be a list of public key lines")
    keys = [k.strip() for k in keys if k.strip()]
    for index, key in enumerate(keys):
        if not _SSH_KEY.match(key):
            raise SettingsError(
                f"ssh.authorized_keys[{index}]",
                "is not an OpenSSH public key line (ssh-ed25519 AAAA... comment)",
            )
    wifi = _parse_wifi(_table(doc, "wifi", "")) if "wifi" in doc else None
    return Settings(hostname, user, tuple(keys), wifi, timezone)


def _parse_wifi(table: dict) -> WifiClient | AccessPoint:
    mode = _opt_str(table, "mode", "wifi.") or "client"
    if mode not in ("client", "access-point"):
        raise SettingsError("wifi.mode", f'must be "client" or "access-point", not {mode!r}')
    allowed = {"mode", "country", "ssid", "passphrase"}
    if mode == "access-point":
        allowed |= {"channel", "address"}
    _only_keys(table, "wifi.", allowed)
    country = (_opt_str(table, "country", "wifi.") or "").upper()
    if not _COUNTRY.match(country):
        raise SettingsError(
            "wifi.country", "is required: the two-letter country code (ISO 3166), e.g. DE or US"
        )
    ssid = _opt_str(table, "ssid", "wifi.")
    if not ssid or len(ssid.encode()) > 32:
        raise SettingsError("wifi.ssid", "is required and at most 32 bytes")
    passphrase = _opt_str(table, "passphrase", "wifi.")
    if passphrase is not None:
        _check_passphrase(passphrase)
    if mode == "client":
        return WifiClient(country, ssid, passphrase or None)
    if not passphrase:
        raise SettingsError(
            "wifi.passphrase", "is required for an access point (8 to 63 characters)"
        )
    channel = table.get("channel", 6)
    if isinstance(channel, bool) or not isinstance(channel, int) or channel not in _AP_CHANNELS:
        raise SettingsError("wifi.channel", "must be a 2.4 GHz channel number, 1 to 13")
    address_text = _opt_str(table, "address", "wifi.") or "192.168.4.1/24"
    try:
        address = ipaddress.IPv4Interface(address_text)
    except ValueError:
        raise SettingsError(
            "wifi.address", f"{address_text!r} is not an IPv4 address with a prefix length"
        ) from None
    net = address.network
    if net.prefixlen > 28 or address.ip in (net.network_address, net.broadcast_address):
        raise SettingsError("wifi.address", "needs a host address in a /28 or larger network")
    if not address.ip.is_private:
        raise SettingsError("wifi.address", "must be a private address (e.g. 192.168.4.1/24)")
    return AccessPoint(country, ssid, passphrase, channel, address)


def _check_passphrase(passphrase: str) -> None:
    if _HEX64.match(passphrase):
        return
    if not 8 <= len(passphrase) <= 63 or not all(32 <= ord(c) <= 126 for c in passphrase):
        raise SettingsError(
            "wifi.passphrase", "must be 8 to 63 printable ASCII characters (WPA2-PSK)"
        )


def _only_keys(table: dict, prefix: str, allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            raise SettingsError(
                prefix + key, f"unknown setting (expected one of: {', '.join(sorted(allowed))})"
            )


def _table(doc: dict, name: str, prefix: str) -> dict:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise SettingsError(prefix + name, f"must be a table [{prefix}{name}]")
    return value


def _opt_str(table: dict, name: str, prefix: str) -> str | None:
    value = table.get(name)
    if value is not None and not isinstance(value, str):
        raise SettingsError(prefix + name, "must be a string")
    return value


def check_agent_config(text: str) -> str:
    """Validate an operator's fieldsync.toml (TOML, keystore on the secured partition).

    Returns the text to install: when it names no ``keystore``, a line putting the keystore on
    the secured partition is added at the top (the agent's default may differ).
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(AGENT_CONFIG_NAME, f"not valid TOML: {exc}") from None
    if "keystore" not in doc:
        return (
            "# keystore on the secured partition (added by fieldsync first boot)\n"
            f'keystore = "{SECURED_KEYSTORE}"\n\n{text}'
        )
    return text


# --------------------------------------------------------------------------- file plans


@dataclass(frozen=True)
class File:
    """A file to write: ``path`` is absolute (on the device)."""

    path: str
    content: str
    mode: int = 0o644


@dataclass(frozen=True)
class Link:
    """A symbolic link ``path`` → ``target`` (enabling a systemd unit)."""

    path: str
    target: str


@dataclass(frozen=True)
class Remove:
    """A file or link to remove if present (disabling the other Wi-Fi mode)."""

    path: str


Action = File | Link | Remove

WPA_CONF = "/etc/wpa_supplicant/wpa_supplicant-wlan0.conf"
HOSTAPD_CONF = "/etc/hostapd/wlan0.conf"
WLAN_NETWORK = "/etc/systemd/network/30-fieldsync-wlan0.network"
NM_CONNECTION = "/etc/NetworkManager/system-connections/fieldsync-wlan0.nmconnection"
REGDOM_CONF = "/etc/modprobe.d/fieldsync-wifi-country.conf"
_WANTS = "/etc/systemd/system/multi-user.target.wants"
WPA_UNIT_LINK = f"{_WANTS}/wpa_supplicant@wlan0.service"
HOSTAPD_UNIT_LINK = f"{_WANTS}/hostapd@wlan0.service"
WPA_UNIT = "/lib/systemd/system/wpa_supplicant@.service"
HOSTAPD_UNIT = "/lib/systemd/system/hostapd@.service"


def wpa_psk(ssid: str, passphrase: str) -> str:
    """The WPA2 pre-shared key (PBKDF2-SHA1, 4096 rounds) as 64 hex digits, like wpa_passphrase."""
    if _HEX64.match(passphrase):
        return passphrase.lower()
    return hashlib.pbkdf2_hmac("sha1", passphrase.encode(), ssid.encode(), 4096, 32).hex()


def render_wifi(wifi: WifiClient | AccessPoint, backend: str = "networkd") -> list[Action]:
    """The files that configure wlan0; the passphrase itself is never written, only the PSK."""
    regdom = File(
        REGDOM_CONF,
        "# Wi-Fi regulatory domain (fieldsync settings)\n"
        f"options cfg80211 ieee80211_regdom={wifi.country}\n",
    )
    if backend == "networkmanager":
        return [regdom, _render_nm(wifi)]
    if backend != "networkd":
        raise ValueError(f"unknown network backend {backend!r}")
    if isinstance(wifi, WifiClient):
        lines = [
            "# wlan0 as a Wi-Fi client (fieldsync settings)",
            "ctrl_interface=DIR=/run/wpa_supplicant GROUP=netdev",
            "update_config=0",
            f"country={wifi.country}",
            "",
            "network={",
            f"\tssid={wifi.ssid.encode().hex()}",
            "\tscan_ssid=1",
        ]
        if wifi.passphrase is None:
            lines.append("\tkey_mgmt=NONE")
        else:
            lines += ["\tkey_mgmt=WPA-PSK", f"\tpsk={wpa_psk(wifi.ssid, wifi.passphrase)}"]
        lines.append("}")
        network = (
            "# wlan0 as a Wi-Fi client: address by DHCP (fieldsync settings)\n"
            "[Match]\nName=wlan0\n\n[Network]\nDHCP=yes\nLinkLocalAddressing=yes\n"
            "\n[DHCPv4]\nRouteMetric=600\n"
        )
        return [
            regdom,
            File(WPA_CONF, "\n".join(lines) + "\n", 0o600),
            File(WLAN_NETWORK, network),
            Link(WPA_UNIT_LINK, WPA_UNIT),
            Remove(HOSTAPD_UNIT_LINK),
            Remove(HOSTAPD_CONF),
        ]
    hostapd = "\n".join(
        [
            "# wlan0 as a Wi-Fi access point (fieldsync settings)",
            "interface=wlan0",
            "driver=nl80211",
            f"ssid2={wifi.ssid.encode().hex()}",
            f"country_code={wifi.country}",
            "ieee80211d=1",
            "hw_mode=g",
            f"channel={wifi.channel}",
            "ieee80211n=1",
            "wmm_enabled=1",
            "auth_algs=1",
            "wpa=2",
            "wpa_key_mgmt=WPA-PSK",
            "rsn_pairwise=CCMP",
            f"wpa_psk={wpa_psk(wifi.ssid, wifi.passphrase)}",
            "",
        ]
    )
    net = wifi.address.network
    hosts = net.num_addresses - 2
    offset = 10 if hosts > 40 else 2
    size = max(1, min(200, hosts - offset))
    network = (
        "# wlan0 as an access point: static address and a DHCP server (fieldsync settings).\n"
        "# No router and no DNS are announced: phones keep their mobile data for the Internet.\n"
        "[Match]\nName=wlan0\n\n[Link]\nRequiredForOnline=no\n\n"
        f"[Network]\nAddress={wifi.address.with_prefixlen}\nDHCPServer=yes\n"
        "ConfigureWithoutCarrier=yes\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n\n"
        f"[DHCPServer]\nPoolOffset={offset}\nPoolSize={size}\nEmitDNS=no\nEmitRouter=no\n"
        "DefaultLeaseTimeSec=3600\n"
    )
    return [
        regdom,
        File(HOSTAPD_CONF, hostapd, 0o600),
        File(WLAN_NETWORK, network),
        Link(HOSTAPD_UNIT_LINK, HOSTAPD_UNIT),
        Remove(WPA_UNIT_LINK),
        Remove(WPA_CONF),
    ]


def _nm_ssid(ssid: str) -> str:
    """An SSID as NetworkManager's keyfile writes it: plain, or a list of byte values."""
    plain = (
        all(32 <= ord(c) < 127 and c not in ";\\#=" for c in ssid.strip()) and ssid == ssid.strip()
    )
    return ssid if plain else "".join(f"{b};" for b in ssid.encode())


def _render_nm(wifi: WifiClient | AccessPoint) -> File:
    ssid = _nm_ssid(wifi.ssid)
    lines = [
        "# wlan0 (fieldsync settings)",
        "[connection]",
        "id=fieldsync-wlan0",
        "type=wifi",
        "interface-name=wlan0",
        "autoconnect=true",
        "",
        "[wifi]",
        f"mode={'infrastructure' if isinstance(wifi, WifiClient) else 'ap'}",
        f"ssid={ssid}",
    ]
    if isinstance(wifi, AccessPoint):
        lines += ["band=bg", f"channel={wifi.channel}"]
    if wifi.passphrase is not None:
        lines += ["", "[wifi-security]", "key-mgmt=wpa-psk"]
        lines.append(f"psk={wpa_psk(wifi.ssid, wifi.passphrase)}")
        if isinstance(wifi, AccessPoint):
            lines += ["proto=rsn", "pairwise=ccmp", "group=ccmp"]
    if isinstance(wifi, WifiClient):
        lines += ["", "[ipv4]", "method=auto", "", "[ipv6]", "method=auto"]
    else:
        lines += [
            "",
            "[ipv4]",
            "method=shared",
            f"address1={wifi.address.with_prefixlen}",
            "",
            "[ipv6]",
            "method=disabled",
        ]
    return File(NM_CONNECTION, "\n".join(lines) + "\n", 0o600)


def render_settings(settings: Settings, backend: str = "networkd") -> list[Action]:
    """Every file the settings produce (users and keys are added by :func:`apply_settings`)."""
    actions: list[Action] = []
    if settings.wifi is not None:
        actions += render_wifi(settings.wifi, backend)
    if settings.hostname:
        actions.append(File("/etc/hostname", settings.hostname + "\n"))
    if settings.ssh_keys:
        actions.append(
            File(
                f"/etc/sudoers.d/fieldsync-{settings.ssh_user}",
                f"# SSH key login of the operator (fieldsync settings)\n"
                f"{settings.ssh_user} ALL=(ALL) NOPASSWD: ALL\n",
                0o440,
            )
        )
    if settings.agent_config is not None:
        actions.append(File(str(AGENT_CONFIG), settings.agent_config, 0o644))
    return actions


def apply_actions(actions: Iterable[Action], root: Path) -> list[str]:
    """Carry out ``actions`` under ``root`` (``/`` on the device); returns what was done."""
    done: list[str] = []
    for action in actions:
        target = root / action.path.lstrip("/")
        if isinstance(action, File):
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.fieldsync-tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(action.content)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, action.mode)
            os.replace(tmp, target)
            done.append(f"wrote {action.path}")
        elif isinstance(action, Link):
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.exists():
                target.unlink()
            target.symlink_to(action.target)
            done.append(f"enabled {Path(action.path).name}")
        else:
            if target.is_symlink() or target.exists():
                target.unlink()
                done.append(f"removed {action.path}")
    return done


def set_hosts_entry(hosts_text: str, hostname: str) -> str:
    """/etc/hosts with the 127.0.1.1 line naming ``hostname`` (replaced or added)."""
    lines = [line for line in hosts_text.splitlines() if not line.startswith("127.0.1.1")]
    out, added = [], False
    for line in lines:
        out.append(line)
        if not added and line.startswith("127.0.0.1"):
            out.append(f"127.0.1.1\t{hostname}")
            added = True
    if not added:
        out.insert(0, f"127.0.1.1\t{hostname}")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- the device


def log(message: str) -> None:
    print(f"fieldsync-firstboot: {message}", flush=True)


def run(*cmd: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, input=input, text=True, capture_output=True)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()[-500:]}"
        )
    return result


def board_serial() -> str | None:
    """The board serial number (Raspberry Pi: device tree or /proc/cpuinfo), hex, or None."""
    try:
        raw = Path("/sys/firmware/devicetree/base/serial-number").read_bytes()
        serial = raw.rstrip(b"\0").decode("ascii", "replace").strip()
        if serial.strip("0"):
            return serial.lower()
    except OSError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Serial" and value.strip().strip("0"):
                return value.strip().lower()
    except OSError:
        pass
    return None


def default_hostname(serial: str | None, machine_id: str) -> str:
    """``fieldsync-`` and the last 8 hex digits of the board serial (else of the machine id)."""
    source = re.sub(r"[^0-9a-f]", "", (serial or "").lower()) or machine_id.strip().lower()
    suffix = re.sub(r"[^0-9a-f]", "", source)[-8:]
    return HOSTNAME_PREFIX + (suffix or "device")


def set_hostname(name: str) -> None:
    Path("/etc/hostname").write_text(name + "\n")
    hosts = Path("/etc/hosts")
    hosts.write_text(set_hosts_entry(hosts.read_text() if hosts.exists() else "", name))
    Path("/proc/sys/kernel/hostname").write_text(name)
    log(f"host name {name}")


def grow_root() -> str:
    """Grow the root partition and file system to the end of the disk, when root is last."""
    source = run("findmnt", "-n", "-o", "SOURCE", "/").stdout.strip()
    name = Path(os.path.realpath(source)).name
    sys_part = Path("/sys/class/block") / name
    if not (sys_part / "partition").exists():
        return f"root {source} is not a partition; not grown"
    disk = Path(os.path.realpath(sys_part)).parent.name
    number = int((sys_part / "partition").read_text())
    start = int((sys_part / "start").read_text())
    size = int((sys_part / "size").read_text())
    disk_sectors = int(Path(f"/sys/block/{disk}/size").read_text())
    for other in Path(f"/sys/block/{disk}").glob(f"{disk}*"):
        other_start = other / "start"
        if other.name != name and other_start.exists() and int(other_start.read_text()) > start:
            return f"root {source} is not the last partition; not grown"
    free = (disk_sectors - start - size) * 512
    if free < MIN_GROW_BYTES:
        return f"root {source} already fills the disk"
    run(
        "sfdisk",
        "--force",
        "--no-reread",
        "--no-tell-kernel",
        "-N",
        str(number),
        f"/dev/{disk}",
        input=",+\n",
    )
    run("partx", "-u", "--nr", str(number), f"/dev/{disk}")
    run("resize2fs", f"/dev/{name}")
    new_size = int((sys_part / "size").read_text()) * 512
    return f"grew root {source} from {size * 512 >> 20} MiB to {new_size >> 20} MiB"


def ssh_host_keys() -> str:
    run("ssh-keygen", "-A")
    return "SSH host keys ready"


def agent_ids() -> tuple[int, int]:
    return pwd.getpwnam(AGENT_USER).pw_uid, grp.getgrnam(AGENT_USER).gr_gid


def configured_identity() -> tuple[Path, str]:
    """The keystore path and identity alias named by /etc/fieldsync/fieldsync.toml."""
    keystore, alias = SECURED_KEYSTORE, DEFAULT_ALIAS
    try:
        doc = tomllib.loads(AGENT_CONFIG.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        log(f"cannot read {AGENT_CONFIG} ({exc}); using {keystore} and alias {alias}")
        return keystore, alias
    if isinstance(doc.get("keystore"), str):
        keystore = Path(doc["keystore"])
    listener = doc.get("listener")
    if isinstance(listener, dict) and isinstance(listener.get("identity"), str):
        alias = listener["identity"]
    return keystore, alias


def fstab_mounts(path: Path, fstab_text: str) -> bool:
    """True when ``fstab_text`` mounts a file system at ``path`` (the secured partition)."""
    for line in fstab_text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith("#") and Path(fields[1]) == path:
            return True
    return False


def prepare_keystore(keystore: Path) -> str:
    """The keystore directory, owned by the agent, mode 0700: on its own partition when
    /etc/fstab names one for it (and then only once it is mounted), else a plain directory."""
    try:
        secured = fstab_mounts(keystore, FSTAB.read_text())
    except OSError:
        secured = False
    if secured and not os.path.ismount(keystore):
        raise RuntimeError(
            f"the secured partition is not mounted at {keystore}: refusing to create keys on "
            "the root file system"
        )
    if not secured:
        log(
            f"no partition for {keystore} in {FSTAB}: the keystore is a directory on the root "
            "file system (mode 0700, owner fieldsync)"
        )
    elif keystore != SECURED_KEYSTORE:
        log(
            f"warning: {AGENT_CONFIG} puts the keystore at {keystore}, not on the secured "
            f"partition ({SECURED_KEYSTORE})"
        )
    uid, gid = agent_ids()
    keystore.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chown(keystore, uid, gid)
    os.chmod(keystore, 0o700)
    return f"keystore {keystore} ready (owner {AGENT_USER}, mode 0700)"


def create_identity(keystore: Path, alias: str, hostname: str) -> str:
    """Create the device's TLS identity in the keystore, unless it already holds one."""
    entry = keystore / f"{alias}.pem"
    if entry.exists():
        return f"identity {alias!r} already in {keystore}; kept"
    run(
        "runuser",
        "-u",
        AGENT_USER,
        "--",
        FIELDSYNC,
        "identity",
        "create",
        "--keystore",
        str(keystore),
        "--alias",
        alias,
        "--cn",
        hostname,
        "--dns",
        hostname,
        "--dns",
        f"{hostname}.local",
        "--days",
        str(IDENTITY_DAYS),
    )
    uid, _ = agent_ids()
    for path in keystore.iterdir():
        st = path.lstat()
        if stat.S_ISREG(st.st_mode) and st.st_uid == uid and st.st_mode & 0o077:
            os.chmod(path, 0o600)
    if not entry.exists():
        raise RuntimeError(f"fieldsync identity create left no {entry}")
    return f"created TLS identity {alias!r} in {keystore}"


def network_backend() -> str:
    """NetworkManager on Raspberry Pi OS, systemd-networkd on the fieldsync image."""
    nm = Path("/usr/sbin/NetworkManager")
    enabled = Path("/etc/systemd/system/multi-user.target.wants/NetworkManager.service")
    return "networkmanager" if nm.exists() and enabled.exists() else "networkd"


def ensure_ssh_user(user: str, keys: tuple[str, ...]) -> None:
    try:
        pwd.getpwnam(user)
    except KeyError:
        groups = [g for g in ("sudo", AGENT_USER, "netdev", "adm") if _group_exists(g)]
        run("useradd", "--create-home", "--shell", "/bin/bash", "--groups", ",".join(groups), user)
        log(f"created user {user} (no password: SSH key only)")
    entry = pwd.getpwnam(user)
    ssh_dir = Path(entry.pw_dir) / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    authorized = ssh_dir / "authorized_keys"
    existing = authorized.read_text().splitlines() if authorized.exists() else []
    merged = existing + [k for k in keys if k not in existing]
    authorized.write_text("\n".join(merged) + "\n")
    for path, mode in ((ssh_dir, 0o700), (authorized, 0o600)):
        os.chown(path, entry.pw_uid, entry.pw_gid)
        os.chmod(path, mode)


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


@dataclass
class SettingsFiles:
    settings: Path | None
    agent_config: Path | None

    def __bool__(self) -> bool:
        return bool(self.settings or self.agent_config)


def find_settings(boot: Path) -> SettingsFiles:
    settings = next((boot / n for n in SETTINGS_NAMES if (boot / n).is_file()), None)
    agent = boot / AGENT_CONFIG_NAME
    return SettingsFiles(settings, agent if agent.is_file() else None)


def load_settings(files: SettingsFiles) -> Settings:
    settings = Settings()
    if files.settings:
        settings = parse_settings(files.settings.read_text(encoding="utf-8-sig"))
    if files.agent_config:
        text = check_agent_config(files.agent_config.read_text(encoding="utf-8-sig"))
        settings = Settings(**{**settings.__dict__, "agent_config": text})
    return settings


def apply_settings(settings: Settings, boot: Path) -> list[str]:
    """Apply validated settings on the running device."""
    done = apply_actions(render_settings(settings, network_backend()), Path("/"))
    if settings.hostname:
        set_hostname(settings.hostname)
    if settings.timezone:
        zone = Path("/usr/share/zoneinfo") / settings.timezone
        if not zone.is_file():
            raise SettingsError("timezone", f"{settings.timezone!r} is not a known time zone")
        localtime = Path("/etc/localtime")
        localtime.unlink(missing_ok=True)
        localtime.symlink_to(zone)
        Path("/etc/timezone").write_text(settings.timezone + "\n")
        done.append(f"time zone {settings.timezone}")
    if settings.ssh_keys:
        ensure_ssh_user(settings.ssh_user, settings.ssh_keys)
        done.append(f"SSH key login for {settings.ssh_user} ({len(settings.ssh_keys)} key(s))")
    if settings.wifi is not None:
        run("rfkill", "unblock", "wlan", check=False)
    return done


def write_boot_log(boot: Path, lines: list[str]) -> None:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    try:
        with (boot / SETTINGS_LOG_NAME).open("a", encoding="utf-8") as out:
            out.write(f"[{stamp}]\n" + "".join(f"  {line}\n" for line in lines))
    except OSError as exc:
        log(f"cannot write {boot / SETTINGS_LOG_NAME}: {exc}")


def command_run(boot: Path) -> int:
    failures: list[str] = []

    def step(what: str, fn, *args) -> object:
        try:
            result = fn(*args)
        except Exception as exc:  # every step is reported; the next still runs
            failures.append(f"{what}: {exc}")
            log(f"FAILED {what}: {exc}")
            return None
        if isinstance(result, str):
            log(result)
        return result

    first = not STAMP.exists()
    if first:
        step("grow root", grow_root)
        step("SSH host keys", ssh_host_keys)
        machine_id = Path("/etc/machine-id").read_text() if Path("/etc/machine-id").exists() else ""
        step("host name", set_hostname, default_hostname(board_serial(), machine_id))

    files = find_settings(boot)
    if files:
        try:
            settings = load_settings(files)
        except (SettingsError, OSError, UnicodeDecodeError) as exc:
            failures.append(f"settings: {exc}")
            log(f"settings NOT applied: {exc}")
            write_boot_log(
                boot,
                [f"settings NOT applied: {exc}", "nothing was changed; fix the file and reboot"],
            )
        else:
            done = step("settings", apply_settings, settings, boot)
            if done is not None:
                for path in (files.settings, files.agent_config):
                    if path:
                        path.unlink()
                write_boot_log(boot, [*done, "applied; the settings files were removed"])
                log("settings applied: " + "; ".join(done))

    if first:
        keystore, alias = configured_identity()
        if step("keystore", prepare_keystore, keystore) is not None:
            hostname = Path("/etc/hostname").read_text().strip()
            step("TLS identity", create_identity, keystore, alias, hostname)
        if not failures:
            STAMP.parent.mkdir(parents=True, exist_ok=True)
            STAMP.write_text(datetime.datetime.now(datetime.UTC).isoformat() + "\n")
            log("first boot complete")
    for failure in failures:
        log(f"failed: {failure}")
    return 1 if failures else 0


def command_install() -> int:
    """The package installed on a running system: keystore and TLS identity (an existing one is
    kept, so an upgrade or a reinstall keeps the device's certificate), then the stamp, so the
    card-only first-boot steps (grow root, SSH host keys, host name) never run here."""
    keystore, alias = configured_identity()
    try:
        log(prepare_keystore(keystore))
        log(create_identity(keystore, alias, socket.gethostname()))
    except (OSError, RuntimeError, KeyError, subprocess.CalledProcessError) as exc:
        log(f"FAILED keystore / TLS identity: {exc}")
        return 1
    if not STAMP.exists():
        STAMP.parent.mkdir(parents=True, exist_ok=True)
        STAMP.write_text(datetime.datetime.now(datetime.UTC).isoformat() + " (package installed)\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fieldsync-firstboot", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="first boot and settings (the systemd unit)")
    p_run.add_argument("--boot", type=Path, default=BOOT_DIR)
    sub.add_parser("install", help="keystore and TLS identity on a running system (postinst)")
    p_check = sub.add_parser("check", help="validate a settings file (and fieldsync.toml)")
    p_check.add_argument("settings", type=Path)
    p_check.add_argument("--agent-config", type=Path)
    p_render = sub.add_parser("render", help="write the files a settings file produces")
    p_render.add_argument("settings", type=Path)
    p_render.add_argument("--root", type=Path, required=True)
    p_render.add_argument("--backend", choices=("networkd", "networkmanager"), default="networkd")
    args = parser.parse_args(argv)
    if args.command == "run":
        return command_run(args.boot)
    if args.command == "install":
        return command_install()
    try:
        settings = load_settings(SettingsFiles(args.settings, getattr(args, "agent_config", None)))
    except (SettingsError, OSError, UnicodeDecodeError) as exc:
        print(f"{args.settings}: {exc}", file=sys.stderr)
        return 1
    if args.command == "check":
        print(f"{args.settings}: ok")
        return 0
    for line in apply_actions(render_settings(settings, args.backend), args.root):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
