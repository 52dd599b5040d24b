# shellcheck shell=bash
# Functions of image/build (sourced). Needs $here, $repo, $work, $cache_dir, $out_dir set.

# Partition labels and sizes (MiB). Layout on the card (MBR):
#   p1  FS-BOOT  FAT32  boot firmware, kernel, initrd, config.txt, cmdline.txt, operator settings
#   p2  FS-KEYS  ext4   the secured keystore, mounted nosuid,nodev,noexec at /var/lib/fieldsync/keys
#   p3  FS-ROOT  ext4   the root file system; last, so first boot can grow it to the card
BOOT_LABEL=FS-BOOT
KEYS_LABEL=FS-KEYS
ROOT_LABEL=FS-ROOT
BOOT_START_MIB=4
BOOT_MIB=256
KEYS_MIB=16
SUITE=bookworm
KEYSTORE_DIR=/var/lib/fieldsync/keys
log() {
	local since=
	[ -n "${t0:-}" ] && since=" +$(( $(date +%s) - t0 ))s"
	printf '[image/build %s%s] %s\n' "$(date +%T)" "$since" "$*" >&2
}
# A numbered stage of the build ("[2/7] ..."), so a long build shows where it is:
# stage N TEXT (numbered explicitly: some stages run in command-substitution subshells).
stage() { log "[$1/${STAGES:-?}] ${*:2}"; }
die() { printf 'image/build: error: %s\n' "$*" >&2; exit 1; }

# Install the host tools this script needs, when missing (Debian).
ensure_tools() {
	local need=() cmd pkg
	while read -r cmd pkg; do
		command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
	done <<-'LIST'
	sfdisk fdisk
	mkfs.vfat dosfstools
	mcopy mtools
	mmdebstrap mmdebstrap
	qemu-aarch64-static qemu-user-static
	update-binfmts binfmt-support
	mkfs.ext4 e2fsprogs
	debugfs e2fsprogs
	zstd zstd
	arch-test arch-test
	qemu-img qemu-utils
	aarch64-linux-gnu-strip binutils-aarch64-linux-gnu
	dpkg-deb dpkg
	LIST
	python3 -c 'import tomllib' 2>/dev/null || need+=(python3)
	python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
	if [ ${#need[@]} -gt 0 ]; then
		command -v apt-get >/dev/null || die "missing tools (${need[*]}) and no apt-get"
		log "installing host tools: ${need[*]}"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
	fi
}

# Make the kernel run arm64 ELF binaries through qemu-user (for the chroot steps).
ensure_binfmt() {
	if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
		mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
	fi
	[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
	[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || die "could not register qemu-aarch64 with binfmt_misc"
}

project_version() {
	python3 - "$repo/pyproject.toml" <<-'PY'
	import sys, tomllib
	with open(sys.argv[1], "rb") as f:
	    print(tomllib.load(f)["project"]["version"])
	PY
}

# The package list as one comma-separated string.
package_list() { grep -v '^[[:space:]]*\(#\|$\)' "$here/packages.list" | sort -u | paste -sd, -; }

mmdebstrap_options() {
	local mirror=${FIELDSYNC_DEBIAN_MIRROR:-http://deb.debian.org/debian}
	local security=${FIELDSYNC_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
	printf '%s\n' --arch=arm64 --variant=minbase --mode=root --format=tar \
		"--include=$(package_list)" \
		--aptopt='Acquire::Retries "3"' \
		--dpkgopt='path-exclude=/usr/share/man/*' \
		--dpkgopt='path-exclude=/usr/share/info/*' \
		--dpkgopt='path-exclude=/usr/share/locale/*' \
		--dpkgopt='path-include=/usr/share/locale/locale.alias' \
		--dpkgopt='path-exclude=/usr/share/doc/*' \
		--dpkgopt='path-include=/usr/share/doc/*/copyright' \
		"--setup-hook=\"$here/rootfs/setup-hook\" \"\$1\"" \
		"--customize-hook=\"$here/rootfs/customize-hook\" \"\$1\"" \
		"$SUITE" - \
		"deb $mirror $SUITE main non-free-firmware" \
		"deb $mirror $SUITE-updates main non-free-firmware" \
		"deb $security $SUITE-security main non-free-firmware"
}

# Print the path of the cached base root file system tarball, building it when needed.
# Key: the mmdebstrap options (which contain the package list) and the hook files.
base_rootfs() {
	local key tar opts=()
	mapfile -t opts < <(mmdebstrap_options)
	key=$( { printf '%s\n' "${opts[@]}" | sed "s|$here|IMAGE|g"; cat "$here"/rootfs/*; } \
		| sha256sum | cut -c1-16)
	tar=$cache_dir/rootfs-$key.tar
	if [ -s "$tar" ] && [ "$refresh" = 0 ]; then
		stage 1 "base root file system: cached ($tar)"
		echo "$tar"; return
	fi
	stage 1 "base root file system: building with mmdebstrap (key $key; several minutes)"
	local t=$(date +%s)
	# the tarball goes to stdout ("-" as target): written to a temporary name, then renamed
	nice -n 10 mmdebstrap "${opts[@]}" >"$tar.part" 2>"$work/mmdebstrap.log" || {
		tail -n 40 "$work/mmdebstrap.log" >&2; rm -f "$tar.part"; die "mmdebstrap failed"; }
	mv "$tar.part" "$tar"
	log "base root file system: built in $(( $(date +%s) - t )) s ($(du -h "$tar" | cut -f1))"
	# keep only the newest two base tarballs
	ls -1t "$cache_dir"/rootfs-*.tar 2>/dev/null | tail -n +3 | xargs -r rm -f
	echo "$tar"
}

# ----------------------------------------------------------------------------- fieldsync package

# Build the arm64 Debian package from the checkout (image/deb); prints its path. The image
# installs this same package: there is one installation route for cards and running systems.
build_package() {
	stage "$PACKAGE_STAGE" "package: building fieldsync_${version}_arm64.deb (image/deb)"
	"$here/deb" --arch arm64 --out "$work/deb" || die "image/deb failed"
}

# Stage the package's files under $2 as dpkg would leave them on a card whose postinst has not
# run (the --base route, where nothing runs inside the base image): the data, the units enabled,
# the byte code compiled ahead (the host is CPython 3.11, as the target is), and the package
# registered in the base's dpkg database ($3: a copy of its /var/lib/dpkg/status, or empty when
# it has none) so that apt can upgrade or remove it later. The agent's user and directories come
# from its sysusers.d / tmpfiles.d entries at boot.
stage_package_files() {
	local deb=$1 payload=$2 status=$3 info py
	dpkg-deb -x "$deb" "$payload"
	local wants=$payload/etc/systemd/system/multi-user.target.wants
	install -d "$wants"
	ln -sf /usr/lib/systemd/system/fieldsync-agent.service "$wants/fieldsync-agent.service"
	ln -sf /usr/lib/systemd/system/fieldsync-firstboot.service "$wants/fieldsync-firstboot.service"
	py=$(host_python)
	if [ "$("$py" -c 'import sys; print(sys.version_info[:2] == (3, 11))')" = True ]; then
		"$py" -m compileall -q -j 2 --invalidation-mode unchecked-hash -s "$payload" -p / \
			"$payload/opt/fieldsync/lib" >/dev/null
	fi
	if [ -s "$status" ]; then
		info=$payload/var/lib/dpkg/info
		install -d "$info"
		dpkg-deb -e "$deb" "$work/control"
		local f
		for f in postinst prerm postrm md5sums conffiles; do
			[ -e "$work/control/$f" ] && install -m "$([ -x "$work/control/$f" ] && echo 0755 || echo 0644)" \
				"$work/control/$f" "$info/fieldsync.$f"
		done
		dpkg-deb -c "$deb" | awk '{ sub(/^\./, "", $6); print ($6 == "/" ? "/." : $6) }' \
			| sed 's|/$||; s|^$|/.|' >"$info/fieldsync.list"
		# the status stanza: the control fields, "installed", and the conffiles' hashes
		python3 - "$work/control/control" "$payload" "$status" >"$payload/var/lib/dpkg/status" <<-'PY'
		import hashlib, re, sys
		control, root, status = sys.argv[1:]
		text = open(status).read()
		stanzas = [s for s in re.split(r"\n\s*\n", text.strip()) if not s.startswith("Package: fieldsync\n")]
		fields = open(control).read().strip().splitlines()
		stanza = [fields[0], "Status: install ok installed"] + fields[1:]
		conffiles = []
		try:
		    conffiles = [l.strip() for l in open(control.rsplit("/", 1)[0] + "/conffiles") if l.strip()]
		except OSError:
		    pass
		if conffiles:
		    stanza.append("Conffiles:")
		    for path in conffiles:
		        digest = hashlib.md5(open(root + path, "rb").read()).hexdigest()
		        stanza.append(f" {path} {digest}")
		print("\n\n".join(stanzas + ["\n".join(stanza)]) + "\n")
		PY
	else
		log "base: no dpkg database in the base image: fieldsync's files are added unregistered"
	fi
	find "$payload" -type d -exec chmod 0755 {} +
	chown -R 0:0 "$payload"
}

# A Python with pip on the host (the project's .venv when there is one).
host_python() {
	if [ -x "$repo/.venv/bin/python" ] && "$repo/.venv/bin/python" -m pip --version >/dev/null 2>&1; then
		echo "$repo/.venv/bin/python"
	else
		echo python3
	fi
}

# The fstab lines fieldsync needs (boot partition, secured keystore).
fstab_lines() {
	cat <<-FSTAB
	# the secured keystore partition: own file system, no devices, no set-uid, nothing executable;
	# nofail so the device still boots (and can be repaired) without it: the agent's unit has
	# RequiresMountsFor= and does not start then
	LABEL=$KEYS_LABEL  $KEYSTORE_DIR  ext4  rw,noatime,nosuid,nodev,noexec,nofail,x-systemd.device-timeout=3min  0  2
	FSTAB
}

# Run a command inside the arm64 root file system $1 (qemu-user), with /proc and /dev mounted in
# a private mount namespace (gone when the command ends).
in_chroot() {
	local root=$1; shift
	unshare --mount --propagation private sh -c '
		root=$1; shift
		mount -t proc proc "$root/proc" && mount --rbind /dev "$root/dev" && exec chroot "$root" "$@"
	' in_chroot "$root" "$@"
}

# ----------------------------------------------------------------------------- the full image

build_full() {
	local rootfs_tar=$1 rootfs=$work/rootfs bootfs=$work/bootfs deb
	deb=$(build_package)
	stage 3 "root file system: unpacking the base"
	mkdir -p "$rootfs" "$bootfs"
	tar --numeric-owner --xattrs --xattrs-include='*' -xpf "$rootfs_tar" -C "$rootfs"
	# fstab before the package: the card's keystore is its own partition (the package's postinst
	# creates no keys here: no systemd runs in the chroot; the card's first boot does it)
	cat >"$rootfs/etc/fstab" <<-FSTAB
	# fieldsync image: partitions found by label (boot FAT32, keystore, root last so it can grow)
	LABEL=$ROOT_LABEL  /  ext4  rw,noatime,errors=remount-ro  0  1
	LABEL=$BOOT_LABEL  /boot/firmware  vfat  rw,noatime,umask=0077,nofail,x-systemd.device-timeout=3min  0  2
	FSTAB
	fstab_lines >>"$rootfs/etc/fstab"
	stage 4 "root file system: installing $(basename "$deb") (dpkg under qemu-user)"
	install -m 0644 "$deb" "$rootfs/tmp/fieldsync.deb"
	in_chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive dpkg -i /tmp/fieldsync.deb >"$work/dpkg.log" 2>&1 \
		|| { cat "$work/dpkg.log" >&2; die "dpkg -i fieldsync failed in the image"; }
	rm -f "$rootfs/tmp/fieldsync.deb"
	log "root file system: the Debian image's defaults (board/debian)"
	cp -a "$repo/board/debian/." "$rootfs/"
	chown -R 0:0 "$rootfs/etc/systemd" "$rootfs/etc/ssh/sshd_config.d"
	echo fieldsync >"$rootfs/etc/hostname"
	printf '127.0.0.1\tlocalhost\n127.0.1.1\tfieldsync\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' \
		>"$rootfs/etc/hosts"
	# the clock starts no earlier than the build (no RTC on a Pi; the TLS identity made at first
	# boot must not be dated 1970)
	touch "$rootfs/usr/lib/clock-epoch"
	in_chroot "$rootfs" systemctl enable -q systemd-networkd.service systemd-timesyncd.service \
		systemd-resolved.service ssh.service
	# the Wi-Fi mode is chosen by the operator's settings; no daily apt runs on a field device
	in_chroot "$rootfs" systemctl disable -q wpa_supplicant.service hostapd.service \
		apt-daily.timer apt-daily-upgrade.timer 2>/dev/null || true
	stage 5 "root file system: checking that fieldsync imports under aarch64 (qemu-user)"
	in_chroot "$rootfs" /opt/fieldsync/bin/python3 -I -c '
import platform, fieldsync, cryptography, websockets, zeroconf, netifaces, pyudev, uvloop, segno
assert platform.machine() == "aarch64", platform.machine()
print("fieldsync", fieldsync.__version__, "imports on", platform.machine())' >&2
	in_chroot "$rootfs" /usr/bin/fieldsync --version >&2
	# the boot partition's content comes out of the root file system
	cp -a "$rootfs/boot/firmware/." "$bootfs/"
	find "$rootfs/boot/firmware" -mindepth 1 -delete
	install -m 0644 "$repo/board/fieldsync-settings.toml.example" "$bootfs/fieldsync-settings.toml.example"
	assemble_image "$rootfs" "$bootfs"
}

# Assemble boot (FAT32), keystore and root (ext4) into a partitioned image, without mounting.
assemble_image() {
	local rootfs=$1 bootfs=$2 img=$work/fieldsync.img
	local used_mib root_mib keys_start root_start total
	used_mib=$(( $(du -s --block-size=1M "$rootfs" | cut -f1) ))
	root_mib=$(( (used_mib * 5 / 4 + 320 + 3) / 4 * 4 ))
	stage 6 "image: root file system ${used_mib} MiB used -> ${root_mib} MiB partition"
	mkfs.ext4 -q -F -L "$ROOT_LABEL" -d "$rootfs" -E root_owner=0:0 "$work/root.ext4" "${root_mib}M" >/dev/null
	mkfs.ext4 -q -F -L "$KEYS_LABEL" -m 0 -E root_owner=0:0 "$work/keys.ext4" "${KEYS_MIB}M" >/dev/null
	debugfs -w -R 'set_inode_field / mode 040700' "$work/keys.ext4" >/dev/null 2>&1
	rm -f "$work/boot.vfat"
	mkfs.vfat -F 32 -n "$BOOT_LABEL" -C "$work/boot.vfat" $(( BOOT_MIB * 1024 )) >/dev/null
	mcopy -i "$work/boot.vfat" -s -p -m "$bootfs"/* ::/
	keys_start=$(( BOOT_START_MIB + BOOT_MIB ))
	root_start=$(( keys_start + KEYS_MIB ))
	total=$(( root_start + root_mib ))
	rm -f "$img"
	truncate -s "${total}M" "$img"
	sfdisk -q "$img" <<-TABLE
	label: dos
	unit: sectors
	start=$(( BOOT_START_MIB * 2048 )), size=$(( BOOT_MIB * 2048 )), type=c, bootable
	start=$(( keys_start * 2048 )), size=$(( KEYS_MIB * 2048 )), type=83
	start=$(( root_start * 2048 )), size=$(( root_mib * 2048 )), type=83
	TABLE
	dd if="$work/boot.vfat" of="$img" bs=1M seek="$BOOT_START_MIB" conv=notrunc,sparse status=none
	dd if="$work/keys.ext4" of="$img" bs=1M seek="$keys_start" conv=notrunc,sparse status=none
	dd if="$work/root.ext4" of="$img" bs=1M seek="$root_start" conv=notrunc,sparse status=none
	publish_image "$img" "fieldsync-$version-arm64"
}

# Move the image to $out_dir as NAME.img.zst (+ .sha256), and/or NAME.img.
publish_image() {
	local img=$1 name=$2
	rm -f "$out_dir/$name".img*
	if [ "$compress" = 1 ]; then
		stage "$STAGES" "image: compressing (zstd)"
		nice -n 10 zstd -q -T2 -12 -o "$out_dir/$name.img.zst" "$img"
		(cd "$out_dir" && sha256sum "$name.img.zst" >"$name.img.zst.sha256")
	fi
	if [ "$keep_raw" = 1 ]; then
		mv "$img" "$out_dir/$name.img"
		(cd "$out_dir" && sha256sum "$name.img" >"$name.img.sha256")
	fi
	log "image: done in $(( $(date +%s) - t0 )) s:"
	ls -ls "$out_dir/$name".img* >&2
}

# ----------------------------------------------------------------------------- --base (Pi 5 route)

# Add fieldsync to a Raspberry Pi OS image: the payload written into its root file system with
# debugfs, the keystore partition appended after root (sfdisk --append), an fstab line added.
# The boot partition and everything else of the base stay as they are. Raspberry Pi OS's own
# first boot skips growing root when root is not the last partition, so root is grown here by
# $root_grow_mib (image/build --root-grow) before the keystore partition is appended.
build_on_base() {
	local base=$1 img=$work/fieldsync.img name
	name=fieldsync-$version-$(basename "$base" | sed -E 's/\.(xz|zst)$//; s/\.img$//')
	[ -f "$base" ] || die "--base: $base is not a file"
	case $base in
	*.zst) log "base: decompressing $base"; zstd -dcq "$base" >"$img" ;;
	*.xz) log "base: decompressing $base"; xz -dc "$base" >"$img" ;;
	*) cp --sparse=always "$base" "$img" ;;
	esac
	local table parts boot_type root_start root_size root_num sector
	table=$(sfdisk --json "$img") || die "--base: $base has no partition table"
	parts=$(python3 -c '
import json, sys
t = json.loads(sys.argv[1])["partitiontable"]
if t.get("label") != "dos":
    sys.exit("the base image must have an MBR (dos) partition table")
ps = sorted(t["partitions"], key=lambda p: p["start"])
if len(ps) != 2:
    sys.exit(f"expected 2 partitions (boot, root), found {len(ps)}")
root = ps[-1]
print(ps[0]["type"], root["start"], root["size"], root["node"][-1], t.get("sectorsize", 512))
' "$table") || die "--base: $base is not a Raspberry Pi OS image ($parts)"
	read -r boot_type root_start root_size root_num sector <<<"$parts"
	case $boot_type in b|c|e) ;; *) die "--base: the first partition is not FAT (type $boot_type)" ;; esac
	local root_off=$(( root_start * sector ))
	blkid -p -O "$root_off" "$img" | grep -q 'TYPE="ext4"' || die "--base: the root partition is not ext4"
	local deb
	deb=$(build_package)
	log "base: root partition $root_num at $(( root_off >> 20 )) MiB, $(( root_size * sector >> 20 )) MiB"
	dd if="$img" of="$work/root.ext4" bs=1M iflag=skip_bytes,count_bytes skip="$root_off" \
		count=$(( root_size * sector )) conv=sparse status=none
	if [ "$root_grow_mib" -gt 0 ]; then
		stage 2 "base: growing the root file system by $root_grow_mib MiB"
		e2fsck -fp "$work/root.ext4" >/dev/null || [ $? -le 1 ] || die "--base: the root file system has errors"
		truncate -s +"${root_grow_mib}M" "$work/root.ext4"
		resize2fs -p "$work/root.ext4" >/dev/null 2>&1 || die "--base: resize2fs failed"
	fi
	debugfs -R 'cat /var/lib/dpkg/status' "$work/root.ext4" 2>/dev/null >"$work/dpkg-status" || true
	stage_package_files "$deb" "$work/payload" "$work/dpkg-status"
	stage 3 "base: writing fieldsync into the root file system (debugfs)"
	"$here/debugfs-tree" "$work/payload" "$work/root.ext4" >"$work/payload.debugfs"
	debugfs -R 'cat /etc/fstab' "$work/root.ext4" 2>/dev/null >"$work/fstab"
	grep -q "$KEYSTORE_DIR" "$work/fstab" || fstab_lines >>"$work/fstab"
	printf 'rm /etc/fstab\nwrite %s /etc/fstab\nset_inode_field /etc/fstab mode 0100644\n' \
		"$work/fstab" >>"$work/payload.debugfs"
	debugfs -w -f "$work/payload.debugfs" "$work/root.ext4" >"$work/debugfs.log" 2>&1
	if grep -E -v '^debugfs|^rm: File not found|^mkdir: .*already exists' "$work/debugfs.log" \
		| grep -E -i 'error|not found|cannot|could not' >&2; then
		die "--base: debugfs reported errors (above)"
	fi
	e2fsck -fn "$work/root.ext4" >/dev/null || die "--base: the edited root file system is not clean"
	# the new layout: root (grown) in place, then the keystore partition, appended
	local new_root_sectors=$(( $(stat -c %s "$work/root.ext4") / sector ))
	local keys_start=$(( (root_start + new_root_sectors + 2047) / 2048 * 2048 ))
	local total=$(( keys_start * sector + KEYS_MIB * 1048576 ))
	truncate -s "$total" "$img"
	echo ", $new_root_sectors" | sfdisk -q --no-reread -N "$root_num" "$img" >/dev/null
	echo "start=$keys_start, size=$(( KEYS_MIB * 1048576 / sector )), type=83" \
		| sfdisk -q --no-reread --append "$img" >/dev/null
	mkfs.ext4 -q -F -L "$KEYS_LABEL" -m 0 -E root_owner=0:0 "$work/keys.ext4" "${KEYS_MIB}M" >/dev/null
	debugfs -w -R 'set_inode_field / mode 040700' "$work/keys.ext4" >/dev/null 2>&1
	dd if="$work/root.ext4" of="$img" bs=1M oflag=seek_bytes seek="$root_off" conv=notrunc,sparse status=none
	dd if="$work/keys.ext4" of="$img" bs=1M oflag=seek_bytes seek=$(( keys_start * sector )) \
		conv=notrunc,sparse status=none
	publish_image "$img" "$name"
}
