#!/bin/sh
# Install upgradectl's initramfs-tools hook and boot script into an OS tree (an image being built, or
# / on a machine converted to loop-booted images). See docs/initramfs.md.
#
#   install.sh [ROOT]     ROOT defaults to /
#
# It only copies two files (with the modes initramfs-tools needs: a boot script that is not executable
# is silently left out of the initramfs). Rebuild the initramfs afterwards, inside ROOT:
#   chroot ROOT update-initramfs -u -k all        (or on the running system: update-initramfs -u -k all)
set -eu

root=${1:-/}
here=$(cd "$(dirname "$0")" && pwd)

if [ ! -d "${root}/usr/share/initramfs-tools" ]; then
	echo "install.sh: ${root} has no initramfs-tools (apt-get install initramfs-tools in it first)" >&2
	exit 1
fi
for tool in sbin/losetup sbin/e2fsck sbin/fsck sbin/logsave; do
	if [ ! -x "${root}/${tool}" ]; then
		echo "install.sh: ${root} has no /${tool}; the hook needs util-linux and e2fsprogs installed there" >&2
		exit 1
	fi
done

install -D -m 0755 "${here}/hooks/upgradectl" "${root}/etc/initramfs-tools/hooks/upgradectl"
install -D -m 0755 "${here}/scripts/local-bottom/upgradectl" "${root}/etc/initramfs-tools/scripts/local-bottom/upgradectl"
echo "installed the upgradectl initramfs hook into ${root}/etc/initramfs-tools; now rebuild the initramfs:"
if [ "${root}" = / ]; then
	echo "  update-initramfs -u -k all"
else
	echo "  chroot ${root} update-initramfs -u -k all"
fi
