#!/usr/bin/env bash
# Makes an arm64 busybox root filesystem from Debian's busybox-static:arm64 (fetched by
# .ci/install.sh to /opt/kiln-test/arm64/busybox, or $KILN_ARM64_BUSYBOX), as
# ../busybox/make-rootfs.sh does for the host's: one link per applet (listed by the
# host's busybox, the same Debian version, so that no emulator is needed here).
# Usage: make-rootfs.sh DEST
set -euo pipefail
dest=${1:?usage: make-rootfs.sh DEST}
src=${KILN_ARM64_BUSYBOX:-/opt/kiln-test/arm64/busybox}
[ -f "$src" ] || { echo "no arm64 busybox at $src (run .ci/install.sh as root)" >&2; exit 1; }
host_bb=$(command -v busybox || true)
[ -n "$host_bb" ] || { echo "busybox-static is not installed (apt-get install busybox-static)" >&2; exit 1; }
mkdir -p "$dest"/{bin,etc,tmp,root,proc,sys,dev}
cp "$src" "$dest/bin/busybox"
chmod 0755 "$dest/bin/busybox"
for applet in $("$host_bb" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$dest/bin/$applet"
done
chmod 1777 "$dest/tmp"
echo 'root:x:0:0:root:/root:/bin/sh' >"$dest/etc/passwd"
echo 'root:x:0:' >"$dest/etc/group"
