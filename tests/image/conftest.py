"""Shared helpers of the image tests: the board's first-boot module, loaded from its file."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BOARD = REPO / "board"


def load_firstboot():
    """board/firstboot.py as a module (it is installed as a script, not as a package)."""
    name = "fieldsync_board_firstboot"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BOARD / "firstboot.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def firstboot():
    return load_firstboot()


def _require_tools(*commands: str, packages: dict[str, str] | None = None) -> None:
    """Skip unless the commands exist. Tests never install packages: .ci/run installs what
    .ci/system-packages lists (TOOL_PACKAGES names the package of each command)."""
    import shutil

    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        names = sorted({(packages or {}).get(c, TOOL_PACKAGES.get(c, c)) for c in missing})
        pytest.skip(
            f"needs {', '.join(missing)} (apt-get install {' '.join(names)}; "
            "listed in .ci/system-packages)"
        )


TOOL_PACKAGES = {
    "sfdisk": "fdisk",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mtype": "mtools",
    "mdir": "mtools",
    "zstd": "zstd",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "losetup": "mount",
    "qemu-system-aarch64": "qemu-system-arm",
    "qemu-img": "qemu-utils",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}


@pytest.fixture(scope="session")
def require_tools():
    """``require_tools("cmd", ...)``: skip unless present (see .ci/system-packages)."""
    return _require_tools


class BuiltImage:
    """The image built by image/build for this test session."""

    def __init__(self, raw: Path, seconds: float | None) -> None:
        import json
        import subprocess

        self.raw = raw
        self.zst = raw.with_name(raw.name + ".zst")
        self.seconds = seconds
        table = json.loads(
            subprocess.run(
                ["sfdisk", "--json", str(raw)], capture_output=True, text=True, check=True
            ).stdout
        )["partitiontable"]
        self.table = table
        self.sector = table.get("sectorsize", 512)
        self.partitions = table["partitions"]

    def offset(self, number: int) -> int:
        return self.partitions[number - 1]["start"] * self.sector

    def spec(self, number: int) -> str:
        """``IMG?offset=N`` for e2fsprogs, naming partition ``number`` inside the image file."""
        return f"{self.raw}?offset={self.offset(number)}"


IMAGE_TOOLS = ("sfdisk", "mkfs.vfat", "mcopy", "mdir", "mtype", "zstd", "debugfs", "e2fsck")


@pytest.fixture(scope="session")
def built_image(require_tools) -> BuiltImage:
    """Build the image once per session (image/build --raw; its base root file system is cached
    under image/cache). FIELDSYNC_IMAGE=path/to/fieldsync-*.img uses an existing raw image."""
    import subprocess
    import time

    given = os.environ.get("FIELDSYNC_IMAGE")
    if given:
        require_tools("sfdisk", "mdir", "mtype", "debugfs", "e2fsck")
        return BuiltImage(Path(given).resolve(), None)
    if os.geteuid() != 0:
        pytest.skip("building the image needs root (chroot, binfmt_misc, device nodes)")
    require_tools(*IMAGE_TOOLS)
    out = REPO / "image" / "out"
    log = out / "build.log"
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with log.open("w") as sink:
        result = subprocess.run(
            [str(REPO / "image" / "build"), "--raw", "--out", str(out)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=45 * 60,
        )
    seconds = time.monotonic() - start
    if result.returncode != 0:
        pytest.fail(f"image/build failed ({result.returncode}):\n{log.read_text()[-4000:]}")
    images = sorted(out.glob("fieldsync-*-arm64.img"), key=lambda p: p.stat().st_mtime)
    assert images, f"image/build left no image in {out}"
    print(f"\nimage/build took {seconds:.0f} s", file=sys.stderr)
    return BuiltImage(images[-1], seconds)
