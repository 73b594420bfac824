#!/usr/bin/env bash
# System packages upgradectl's tests and demo use, on Debian 12. Run as root; prints the apt-get line
# and stops when not root. One list, used by CI (.ci/run), the demo and by hand.
set -euo pipefail
PACKAGES=(
  e2fsprogs util-linux fdisk      # mke2fs, e2fsck, debugfs, losetup, mount, sfdisk
  grub-common grub-pc-bin         # grub-editenv, grub-script-check, grub-mkimage and i386-pc modules
  lz4 curl                        # the reference tools the payload format and benchmarks are held to
  qemu-system-x86                 # boot tests (TCG)
  ovmf grub-efi-amd64-bin         # UEFI boot tests: OVMF firmware, GRUB x86_64-efi for the ESP
  mtools dosfstools               # the ESP's FAT filesystem, made in a file (mkfs.vfat, mmd, mcopy)
  zstd                            # initramfs compression; image build from .tar.zst
  linux-image-amd64 initramfs-tools busybox-static kmod cpio   # the kernel and initramfs booted in QEMU
  dropbear-bin openssh-client     # SSH into the RAM flasher (test/flasher/initrd.test.ts logs in with ssh)
  debootstrap                     # a realistic Debian tree for migration and boot tests
  acl attr                        # ACLs and xattrs carried by migration
  openssl                         # the boot tests' HTTPS release server certificate
  btrfs-progs                     # a host filesystem where GRUB cannot save_env: commit must refuse it
  systemd python3-minimal         # systemd-notify, systemd-analyze; a NOTIFY_SOCKET listener for the daemon tests
  g++ make python3                # npm ci compiles the zstd-napi addon (node-gyp, against the installed Node headers)
  binutils                        # readelf: the .deb's binaries checked against Ubuntu 22.04's glibc and libstdc++
)
if [ "$(id -u)" != 0 ]; then
  echo "run as root, or install by hand: apt-get install -y --no-install-recommends ${PACKAGES[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
# The Secure Boot boot test's signed shim and GRUB: downloaded into the test cache, never installed
# (shim-signed's postinst runs grub-install on a UEFI host). test/boot/secure-boot.ts unpacks them.
sb_debs="${UPGRADECTL_TEST_CACHE:-/var/cache/upgradectl-test}/sb-debs"
mkdir -p "$sb_debs"
(cd "$sb_debs" && apt-get download -q shim-signed grub-efi-amd64-signed)
