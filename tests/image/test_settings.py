"""The operator's settings (fieldsync-settings.toml) and the files generated from them.

No Wi-Fi adapter exists here: these tests prove what is written (wpa_supplicant, hostapd,
systemd-networkd, NetworkManager files), not that a radio accepts it.
"""

from __future__ import annotations

import configparser
import hashlib
import stat
import subprocess
import sys
from pathlib import Path

import pytest

BOARD = Path(__file__).resolve().parents[2] / "board"


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHnCWSn6F3wAHjJz1Ir0mZLkWf5PXbVtQSfHdwtNnbv9 op@laptop"


def files_of(actions, firstboot):
    return {a.path: a for a in actions if isinstance(a, firstboot.File)}


def test_wpa_psk_matches_the_ieee_802_11i_test_vector(firstboot):
    # IEEE 802.11i-2004, H.4.1: passphrase "password", SSID "IEEE"
    assert firstboot.wpa_psk("IEEE", "password") == (
        "f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e"
    )
    assert firstboot.wpa_psk("x", "AB" * 32) == "ab" * 32  # a 64-hex PSK is used as it is


def test_the_example_file_is_valid(firstboot):
    settings = firstboot.parse_settings((BOARD / "fieldsync-settings.toml.example").read_text())
    assert settings.hostname == "field-unit-01"
    assert settings.ssh_user == "admin" and len(settings.ssh_keys) == 1
    assert settings.wifi == firstboot.WifiClient("DE", "FarmNet", "correct horse battery staple")


def test_wifi_client_files(firstboot):
    settings = firstboot.parse_settings(
        'hostname = "Unit-7"\n[wifi]\ncountry = "de"\nssid = "Farm Net"\n'
        'passphrase = "s3cret-pass"\n'
    )
    assert settings.hostname == "unit-7"
    actions = firstboot.render_settings(settings)
    files = files_of(actions, firstboot)
    wpa = files[firstboot.WPA_CONF]
    assert wpa.mode == 0o600
    lines = wpa.content.splitlines()
    assert "country=DE" in lines
    assert f"\tssid={b'Farm Net'.hex()}" in lines
    assert f"\tpsk={firstboot.wpa_psk('Farm Net', 's3cret-pass')}" in lines
    assert "\tkey_mgmt=WPA-PSK" in lines
    for action in files.values():
        assert "s3cret-pass" not in action.content  # only the derived PSK is stored
    network = configparser.ConfigParser()
    network.read_string(files[firstboot.WLAN_NETWORK].content)
    assert network["Match"]["Name"] == "wlan0" and network["Network"]["DHCP"] == "yes"
    assert files[firstboot.REGDOM_CONF].content.endswith("ieee80211_regdom=DE\n")
    assert firstboot.Link(firstboot.WPA_UNIT_LINK, firstboot.WPA_UNIT) in actions
    assert firstboot.Remove(firstboot.HOSTAPD_UNIT_LINK) in actions
    assert files["/etc/hostname"].content == "unit-7\n"


def test_open_wifi_network(firstboot):
    settings = firstboot.parse_settings('[wifi]\ncountry = "US"\nssid = "cafe"\n')
    wpa = files_of(firstboot.render_settings(settings), firstboot)[firstboot.WPA_CONF]
    assert "\tkey_mgmt=NONE" in wpa.content.splitlines() and "psk=" not in wpa.content


def test_access_point_files(firstboot):
    settings = firstboot.parse_settings(
        '[wifi]\nmode = "access-point"\ncountry = "GB"\nssid = "fieldsync"\n'
        'passphrase = "harvest-2024"\nchannel = 11\naddress = "10.42.0.1/24"\n'
    )
    actions = firstboot.render_settings(settings)
    files = files_of(actions, firstboot)
    hostapd = dict(
        line.split("=", 1)
        for line in files[firstboot.HOSTAPD_CONF].content.splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert files[firstboot.HOSTAPD_CONF].mode == 0o600
    assert hostapd["interface"] == "wlan0" and hostapd["driver"] == "nl80211"
    assert bytes.fromhex(hostapd["ssid2"]) == b"fieldsync"
    assert hostapd["country_code"] == "GB" and hostapd["channel"] == "11"
    assert hostapd["wpa"] == "2" and hostapd["rsn_pairwise"] == "CCMP"
    assert (
        hostapd["wpa_psk"]
        == hashlib.pbkdf2_hmac("sha1", b"harvest-2024", b"fieldsync", 4096, 32).hex()
    )
    network = configparser.ConfigParser()
    network.optionxform = str
    network.read_string(files[firstboot.WLAN_NETWORK].content)
    assert network["Network"]["Address"] == "10.42.0.1/24"
    assert network["Network"]["DHCPServer"] == "yes"
    assert network["DHCPServer"]["EmitRouter"] == "no"
    offset, size = int(network["DHCPServer"]["PoolOffset"]), int(network["DHCPServer"]["PoolSize"])
    assert offset > 1 and offset + size < 255  # the pool stays inside 10.42.0.0/24
    assert firstboot.Link(firstboot.HOSTAPD_UNIT_LINK, firstboot.HOSTAPD_UNIT) in actions
    assert firstboot.Remove(firstboot.WPA_UNIT_LINK) in actions
    assert firstboot.Remove(firstboot.WPA_CONF) in actions


def test_small_access_point_network_pool_fits(firstboot):
    settings = firstboot.parse_settings(
        '[wifi]\nmode = "access-point"\ncountry = "DE"\nssid = "s"\npassphrase = "12345678"\n'
        'address = "192.168.7.1/28"\n'
    )
    content = files_of(firstboot.render_settings(settings), firstboot)[firstboot.WLAN_NETWORK]
    network = configparser.ConfigParser()
    network.optionxform = str
    network.read_string(content.content)
    offset, size = int(network["DHCPServer"]["PoolOffset"]), int(network["DHCPServer"]["PoolSize"])
    assert offset + size <= 15  # /28: hosts .1-.14


def test_networkmanager_backend(firstboot):
    client = firstboot.parse_settings(
        '[wifi]\ncountry = "FR"\nssid = "a;b"\npassphrase = "password1"\n'
    )
    nm = files_of(firstboot.render_settings(client, "networkmanager"), firstboot)
    keyfile = nm[firstboot.NM_CONNECTION]
    assert keyfile.mode == 0o600
    parsed = configparser.ConfigParser(interpolation=None)
    parsed.read_string(keyfile.content)
    assert parsed["wifi"]["mode"] == "infrastructure"
    assert parsed["wifi"]["ssid"] == "97;59;98;"  # bytes of "a;b": ';' cannot be written plain
    assert parsed["wifi-security"]["psk"] == firstboot.wpa_psk("a;b", "password1")
    assert parsed["ipv4"]["method"] == "auto"
    assert firstboot.WPA_CONF not in nm
    ap = firstboot.parse_settings(
        '[wifi]\nmode = "access-point"\ncountry = "FR"\nssid = "Field AP"\n'
        'passphrase = "password1"\n'
    )
    parsed = configparser.ConfigParser(interpolation=None)
    parsed.read_string(
        files_of(firstboot.render_settings(ap, "networkmanager"), firstboot)[
            firstboot.NM_CONNECTION
        ].content
    )
    assert parsed["wifi"]["mode"] == "ap" and parsed["wifi"]["ssid"] == "Field AP"
    assert parsed["ipv4"]["method"] == "shared"
    assert parsed["ipv4"]["address1"] == "192.168.4.1/24"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("wifi_ssid = 'x'", "wifi_ssid"),
        ("hostname = '-bad-'", "hostname"),
        ("hostname = 'a_b'", "hostname"),
        ("[wifi]\nssid = 'x'", "wifi.country"),
        ("[wifi]\ncountry = 'Germany'\nssid = 'x'", "wifi.country"),
        ("[wifi]\ncountry = 'DE'", "wifi.ssid"),
        ("[wifi]\ncountry = 'DE'\nssid = '" + "x" * 33 + "'", "wifi.ssid"),
        ("[wifi]\ncountry = 'DE'\nssid = 'x'\npassphrase = 'short'", "wifi.passphrase"),
        ("[wifi]\ncountry = 'DE'\nssid = 'x'\nchannel = 6", "wifi.channel"),
        ("[wifi]\nmode = 'mesh'\ncountry = 'DE'\nssid = 'x'", "wifi.mode"),
        ("[wifi]\nmode = 'access-point'\ncountry = 'DE'\nssid = 'x'", "wifi.passphrase"),
        (
            "[wifi]\nmode = 'access-point'\ncountry = 'DE'\nssid = 'x'\npassphrase = '12345678'\n"
            "channel = 36",
            "wifi.channel",
        ),
        (
            "[wifi]\nmode = 'access-point'\ncountry = 'DE'\nssid = 'x'\npassphrase = '12345678'\n"
            "address = '8.8.8.1/24'",
            "wifi.address",
        ),
        (
            "[wifi]\nmode = 'access-point'\ncountry = 'DE'\nssid = 'x'\npassphrase = '12345678'\n"
            "address = '192.168.4.0/24'",
            "wifi.address",
        ),
        ("[ssh]\nuser = 'root'\nauthorized_keys = []", "ssh.user"),
        ("[ssh]\nauthorized_keys = ['not a key']", "ssh.authorized_keys[0]"),
        ("[ssh]\npassword = 'x'", "ssh.password"),
        ("timezone = '../../etc/passwd'", "timezone"),
        ("this is = not toml", ""),
    ],
)
def test_invalid_settings_name_the_key(firstboot, text, key):
    with pytest.raises(firstboot.SettingsError) as caught:
        firstboot.parse_settings(text)
    assert caught.value.key == key


def test_agent_config_gets_the_secured_keystore(firstboot):
    text = firstboot.check_agent_config('[databases.farm]\npath = "/var/lib/fieldsync/db/f"\n')
    import tomllib

    assert tomllib.loads(text)["keystore"] == "/var/lib/fieldsync/keys"
    kept = 'keystore = "/srv/k"\n[databases.farm]\npath = "x"\n'
    assert firstboot.check_agent_config(kept) == kept
    with pytest.raises(firstboot.SettingsError):
        firstboot.check_agent_config("[databases\n")


def test_apply_actions_writes_links_and_removes(firstboot, tmp_path):
    settings = firstboot.parse_settings(
        f'[ssh]\nauthorized_keys = ["{KEY}"]\n[wifi]\ncountry = "DE"\nssid = "a"\n'
        'passphrase = "12345678"\n'
    )
    stale = tmp_path / firstboot.HOSTAPD_UNIT_LINK.lstrip("/")
    stale.parent.mkdir(parents=True)
    stale.symlink_to("/lib/systemd/system/hostapd@.service")
    done = firstboot.apply_actions(firstboot.render_settings(settings), tmp_path)
    wpa = tmp_path / firstboot.WPA_CONF.lstrip("/")
    assert stat.S_IMODE(wpa.stat().st_mode) == 0o600
    link = tmp_path / firstboot.WPA_UNIT_LINK.lstrip("/")
    assert link.is_symlink() and str(link.readlink()) == firstboot.WPA_UNIT
    assert not stale.is_symlink()
    sudoers = tmp_path / "etc/sudoers.d/fieldsync-admin"
    assert stat.S_IMODE(sudoers.stat().st_mode) == 0o440
    assert sudoers.read_text().endswith("admin ALL=(ALL) NOPASSWD: ALL\n")
    assert f"removed {firstboot.HOSTAPD_UNIT_LINK}" in done
    assert not list(tmp_path.rglob("*.fieldsync-tmp"))


def test_hosts_entry(firstboot):
    hosts = "127.0.0.1\tlocalhost\n127.0.1.1\told\n::1\tlocalhost\n"
    assert firstboot.set_hosts_entry(hosts, "new") == (
        "127.0.0.1\tlocalhost\n127.0.1.1\tnew\n::1\tlocalhost\n"
    )
    assert firstboot.set_hosts_entry("", "n") == "127.0.1.1\tn\n"


def test_default_hostname(firstboot):
    assert firstboot.default_hostname("10000000abcdef01", "x") == "fieldsync-abcdef01"
    assert firstboot.default_hostname(None, "0123456789abcdef0123456789abcdef\n") == (
        "fieldsync-89abcdef"
    )


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BOARD / "firstboot.py"), *args], capture_output=True, text=True
    )


def test_cli_check_and_render(tmp_path):
    good = tmp_path / "fieldsync-settings.toml"
    good.write_text(
        '[wifi]\nmode = "access-point"\ncountry = "DE"\nssid = "x"\npassphrase = "12345678"\n'
    )
    assert run_cli("check", str(good)).returncode == 0
    root = tmp_path / "root"
    result = run_cli("render", str(good), "--root", str(root))
    assert result.returncode == 0, result.stderr
    assert (root / "etc/hostapd/wlan0.conf").is_file()
    bad = tmp_path / "bad.toml"
    bad.write_text('[wifi]\ncountry = "DE"\nssid = "x"\npassphrase = "short"\n')
    result = run_cli("check", str(bad))
    assert result.returncode == 1 and "wifi.passphrase" in result.stderr
    agent = tmp_path / "fieldsync.toml"
    agent.write_text("[broken\n")
    result = run_cli("check", str(good), "--agent-config", str(agent))
    assert result.returncode == 1 and "fieldsync.toml" in result.stderr
