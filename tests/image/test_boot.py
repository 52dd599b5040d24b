"""Boot the image under QEMU (virt board, the image's own kernel, initramfs and root file system).

Slow (about 3-6 minutes under software emulation): the card is "flashed" with scripts/flash onto
a file with operator settings (an SSH key, a host name, Wi-Fi client settings, a fieldsync.toml
binding the agent to eth0), made 512 MiB larger than the image (a bigger card), booted, inspected
over SSH through a forwarded port, reached by a WebSocket client on the host, rebooted and
inspected again. Not exercised: the Pi's boot firmware (config.txt, start*.elf), Wi-Fi, the SD
controller drivers (QEMU's disk is virtio).
"""

from __future__ import annotations

import hashlib
import re
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MIB = 1 << 20
GROW = 512 * MIB
HOSTNAME = "field-test-01"
DATABASE = "farm"
BLIP_PROTOCOL = "BLIP_3+CBMobile_3"
AGENT_CONFIG = f"""
log_level = "info"
[listener]
interface = "eth0"
port = 4984
[databases.{DATABASE}]
path = "/var/lib/fieldsync/db/{DATABASE}.sqlite"
"""
BOOT_TIMEOUT = 15 * 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class VM:
    """One QEMU virt machine booting the card file; SSH and the agent's port forwarded."""

    def __init__(self, card: Path, kernel: Path, initrd: Path, cmdline: str, work: Path):
        self.card, self.kernel, self.initrd, self.cmdline, self.work = (
            card,
            kernel,
            initrd,
            cmdline,
            work,
        )
        self.key = work / "id_ed25519"
        self.known_hosts = work / "known_hosts"
        self.proc: subprocess.Popen | None = None
        self.boots = 0
        self.timings: list[str] = []

    def start(self) -> None:
        self.ssh_port, self.agent_port = free_port(), free_port()
        self.boots += 1
        self.console = self.work / f"console-{self.boots}.log"
        forwards = (
            f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22,"
            f"hostfwd=tcp:127.0.0.1:{self.agent_port}-:4984"
        )
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [
                "qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "2",
                "-m", "1024", "-display", "none", "-monitor", "none",
                "-serial", f"file:{self.console}", "-no-reboot",
                "-kernel", str(self.kernel), "-initrd", str(self.initrd),
                "-append", self.cmdline,
                "-drive", f"file={self.card},format=raw,if=virtio",
                "-netdev", f"user,id=n0,{forwards}",
                "-device", "virtio-net-pci,netdev=n0,romfile=",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(self.work / f"qemu-{self.boots}.log").open("w"),
        )  # fmt: skip

    def ssh_options(self, strict: bool) -> list[str]:
        return [
            "-p", str(self.ssh_port), "-i", str(self.key),
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            # one host key entry whatever the forwarded port (it changes at every boot)
            "-o", "HostKeyAlias=fieldsync-test-vm", "-o", "HashKnownHosts=no",
            "-o", f"StrictHostKeyChecking={'yes' if strict else 'accept-new'}",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR",
        ]  # fmt: skip

    def ssh(self, command: str, check: bool = True, timeout: float = 120):
        result = subprocess.run(
            ["ssh", *self.ssh_options(strict=True), "admin@127.0.0.1", command],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(
                f"guest command {command!r} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def wait_for_ssh(self, strict: bool) -> float:
        deadline = self.started + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"QEMU exited during boot:\n{self.console_tail()}")
            result = subprocess.run(
                ["ssh", *self.ssh_options(strict), "admin@127.0.0.1", "true"],
                capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            if result.returncode == 0:
                seconds = time.monotonic() - self.started
                self.timings.append(f"boot {self.boots}: SSH after {seconds:.0f} s")
                return seconds
            if "Host key verification failed" in result.stderr or "CHANGED" in result.stderr:
                raise AssertionError(f"the SSH host key changed: {result.stderr}")
            time.sleep(5)
        raise AssertionError(f"no SSH within {BOOT_TIMEOUT} s:\n{self.console_tail()}")

    def wait_for_agent(self) -> float:
        deadline = time.monotonic() + 10 * 60
        state = ""
        while time.monotonic() < deadline:
            state = self.ssh(
                "systemctl show -p ActiveState -p SubState -p StatusText fieldsync-agent",
                check=False,
            ).stdout
            if "ActiveState=active" in state:  # Type=notify: active only after READY=1
                seconds = time.monotonic() - self.started
                self.timings.append(f"boot {self.boots}: agent READY after {seconds:.0f} s")
                return seconds
            if "ActiveState=failed" in state:
                break
            time.sleep(5)
        journal = self.ssh("sudo journalctl -b -u fieldsync-agent --no-pager | tail -40",
                           check=False).stdout  # fmt: skip
        raise AssertionError(f"the agent did not become ready:\n{state}\n{journal}")

    def shutdown(self, command: str = "sudo systemctl poweroff") -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.ssh(command, check=False, timeout=30).returncode not in (0, 255):
            self.proc.kill()  # the guest refused: do not wait for a shutdown that never comes
        try:
            self.proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def console_tail(self) -> str:
        try:
            return self.console.read_text(errors="replace")[-5000:]
        except OSError:
            return "(no console output)"


def guest_file_hash(vm: VM, path: str) -> str:
    return vm.ssh(f"sudo sha256sum {path}").stdout.split()[0]


def blip_handshake(port: int) -> tuple[str, str]:
    """WebSocket upgrade to /<db>/_blipsync over TLS: (sub-protocol, SHA-256 of the server cert)."""
    from websockets.sync.client import connect

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # a self-signed device identity: compared below instead
    with connect(
        f"wss://127.0.0.1:{port}/{DATABASE}/_blipsync",
        ssl=context,
        subprotocols=[BLIP_PROTOCOL],
        open_timeout=60,
    ) as ws:
        assert ws.response.status_code == 101
        der = ws.socket.getpeercert(binary_form=True)
        return ws.subprotocol, hashlib.sha256(der).hexdigest()


@pytest.fixture(scope="module")
def vm(built_image, tmp_path_factory, require_tools):
    require_tools("qemu-system-aarch64", "ssh", "ssh-keygen", "mcopy", "mtype", "zstd")
    work = tmp_path_factory.mktemp("boot")
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    public = (work / "id_ed25519.pub").read_text().strip()
    settings = work / "fieldsync-settings.toml"
    settings.write_text(
        f'hostname = "{HOSTNAME}"\n'
        f'[ssh]\nuser = "admin"\nauthorized_keys = ["{public}"]\n'
        '[wifi]\ncountry = "DE"\nssid = "FarmNet"\npassphrase = "correct horse"\n'
    )
    agent_config = work / "fieldsync.toml"
    agent_config.write_text(AGENT_CONFIG)
    card = work / "card.img"
    card.touch()
    image = built_image.zst if built_image.zst.exists() else built_image.raw
    flashed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "flash"), str(image), str(card), "--yes",
         "--force", "--settings", str(settings), "--agent-config", str(agent_config)],
        capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert flashed.returncode == 0, flashed.stderr
    assert "verified" in flashed.stderr
    with card.open("r+b") as f:
        f.truncate(card.stat().st_size + GROW)  # a card larger than the image
    spec = f"{card}@@{built_image.offset(1)}"
    config_txt = subprocess.run(
        ["mtype", "-i", spec, "::/config.txt"], capture_output=True, text=True, check=True
    ).stdout
    kernel_name = re.search(r"^kernel=(\S+)", config_txt, re.M).group(1)
    initrd_name = re.search(r"^initramfs (\S+)", config_txt, re.M).group(1)
    kernel, initrd = work / "vmlinuz", work / "initrd.img"
    for name, dest in ((kernel_name, kernel), (initrd_name, initrd)):
        subprocess.run(["mcopy", "-n", "-i", spec, f"::/{name}", str(dest)], check=True)
    cmdline_txt = subprocess.run(
        ["mtype", "-i", spec, "::/cmdline.txt"], capture_output=True, text=True, check=True
    ).stdout
    # the card's own kernel command line, with QEMU's serial port instead of the Pi's
    args = [a for a in cmdline_txt.split() if not a.startswith("console=")]
    machine = VM(card, kernel, initrd, " ".join(["console=ttyAMA0", *args]), work)
    machine.start()
    try:
        machine.wait_for_ssh(strict=False)
        yield machine
    finally:
        if machine.proc and machine.proc.poll() is None:
            machine.shutdown()
        print("\n" + "\n".join(machine.timings), file=sys.stderr)


def test_kernel_command_line_comes_from_the_card(vm):
    cmdline = vm.ssh("cat /proc/cmdline").stdout
    assert "root=LABEL=FS-ROOT" in cmdline
    assert vm.ssh("findmnt -no SOURCE /").stdout.strip() == "/dev/vda3"


def test_first_boot_ran_once_and_succeeded(vm):
    state = vm.ssh("systemctl show -p ActiveState -p Result fieldsync-firstboot").stdout
    assert "ActiveState=active" in state and "Result=success" in state, state
    vm.ssh("test -s /var/lib/fieldsync/firstboot.done")
    journal = vm.ssh("sudo journalctl -b -u fieldsync-firstboot --no-pager").stdout
    assert "created TLS identity" in journal, journal
    assert "first boot complete" in journal, journal


def test_root_grew_to_the_card(vm, built_image):
    image_root = built_image.partitions[2]["size"] * built_image.sector
    size = int(vm.ssh("lsblk -bno SIZE /dev/vda3").stdout)
    disk = int(vm.ssh("lsblk -bdno SIZE /dev/vda").stdout)
    assert size >= image_root + GROW - 2 * MIB
    assert built_image.offset(3) + size == disk  # root now ends at the end of the card
    fs_size = int(vm.ssh("df -B1 --output=size / | tail -1").stdout)
    assert fs_size > image_root * 0.9 + GROW * 0.9  # the file system grew too


def test_settings_applied_and_removed_from_the_boot_partition(vm):
    assert vm.ssh("hostname").stdout.strip() == HOSTNAME
    listing = vm.ssh("sudo ls /boot/firmware").stdout.split()
    assert "fieldsync-settings.toml" not in listing and "fieldsync.toml" not in listing
    assert "fieldsync-settings.log" in listing
    config = vm.ssh("cat /etc/fieldsync/fieldsync.toml").stdout
    assert 'interface = "eth0"' in config and 'keystore = "/var/lib/fieldsync/keys"' in config
    wpa = vm.ssh("sudo stat -c '%a %U' /etc/wpa_supplicant/wpa_supplicant-wlan0.conf").stdout
    assert wpa.split() == ["600", "root"]
    enabled = vm.ssh("systemctl is-enabled wpa_supplicant@wlan0.service", check=False).stdout
    assert enabled.strip() == "enabled"
    assert "correct horse" not in vm.ssh("sudo cat /etc/wpa_supplicant/*.conf").stdout


def test_ssh_accepts_keys_only(vm):
    config = vm.ssh("sudo sshd -T").stdout.lower()
    assert "passwordauthentication no" in config
    assert "kbdinteractiveauthentication no" in config
    assert "permitrootlogin no" in config


def test_keystore_on_the_secured_partition(vm):
    source, fstype, options = vm.ssh(
        "findmnt -no SOURCE,FSTYPE,OPTIONS /var/lib/fieldsync/keys"
    ).stdout.split()
    assert source == "/dev/vda2" and fstype == "ext4"
    assert {"nosuid", "nodev", "noexec"} <= set(options.split(","))
    assert vm.ssh(f"sudo blkid -s LABEL -o value {source}").stdout.strip() == "FS-KEYS"
    modes = vm.ssh(
        "sudo stat -c '%n %U %G %a' /var/lib/fieldsync/keys /var/lib/fieldsync/keys/fieldsync.pem"
    ).stdout.splitlines()
    assert modes == [
        "/var/lib/fieldsync/keys fieldsync fieldsync 700",
        "/var/lib/fieldsync/keys/fieldsync.pem fieldsync fieldsync 600",
    ]


def test_agent_ready_and_status_over_ssh(vm):
    vm.wait_for_agent()
    result = subprocess.run(
        [str(REPO / "scripts" / "ssh-status"), "admin@127.0.0.1", *vm.ssh_options(strict=True)],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    caps = vm.ssh("grep -E '^Cap(Eff|Bnd|Amb)' /proc/$(systemctl show -p MainPID --value "
                  "fieldsync-agent)/status").stdout  # fmt: skip
    values = dict(line.split(":") for line in caps.splitlines())
    # CAP_NET_BIND_SERVICE (10) and CAP_NET_RAW (13) only
    assert {k: int(v, 16) for k, v in values.items()} == {
        "CapEff": (1 << 10) | (1 << 13),
        "CapBnd": (1 << 10) | (1 << 13),
        "CapAmb": (1 << 10) | (1 << 13),
    }
    user = vm.ssh("ps -o user= -p $(systemctl show -p MainPID --value fieldsync-agent)").stdout
    assert user.strip() == "fieldsync"


def fingerprint_in_keystore(vm: VM) -> str:
    from cryptography import x509

    pem = vm.ssh(
        "sudo sed -n '/BEGIN CERTIFICATE/,/END CERTIFICATE/p' /var/lib/fieldsync/keys/fieldsync.pem"
    ).stdout
    leaf = x509.load_pem_x509_certificates(pem.encode())[0]
    from cryptography.hazmat.primitives.serialization import Encoding

    return hashlib.sha256(leaf.public_bytes(Encoding.DER)).hexdigest()


def test_listener_reached_from_the_host(vm):
    vm.wait_for_agent()
    protocol, fingerprint = blip_handshake(vm.agent_port)
    assert protocol == BLIP_PROTOCOL
    # the listener presents the identity made at first boot on the secured partition
    assert fingerprint == fingerprint_in_keystore(vm)
    vm.first_fingerprint = fingerprint
    # the pairing code a phone scans names the same certificate (fieldsync.pairing payload)
    from fieldsync.pairing import decode

    payload = decode(vm.ssh("fieldsync status --qr").stdout.strip().splitlines()[-1])
    assert payload.sha256 == fingerprint
    assert payload.urls and all(url.startswith("wss://") for url in payload.urls)


def test_reboot_keeps_identity_host_keys_and_skips_first_boot(vm):
    entry_hash = guest_file_hash(vm, "/var/lib/fieldsync/keys/fieldsync.pem")
    fingerprint = getattr(vm, "first_fingerprint", None) or blip_handshake(vm.agent_port)[1]
    vm.shutdown("sudo systemctl reboot")  # -no-reboot: QEMU exits; start it again
    vm.start()
    vm.wait_for_ssh(strict=True)  # the SSH host key is the one of the first boot
    result = vm.ssh("systemctl show -p ConditionResult -p ActiveState fieldsync-firstboot").stdout
    assert "ConditionResult=no" in result, result  # nothing to do: stamped, no settings
    assert vm.ssh("hostname").stdout.strip() == HOSTNAME
    assert guest_file_hash(vm, "/var/lib/fieldsync/keys/fieldsync.pem") == entry_hash
    vm.wait_for_agent()
    protocol, again = blip_handshake(vm.agent_port)
    assert protocol == BLIP_PROTOCOL
    assert again == fingerprint
