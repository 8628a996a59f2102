#!/usr/bin/env bash
# Makes a busybox root filesystem from Debian's busybox-static: /bin/busybox, one link per
# applet, and minimal /etc files. Usage: make-rootfs.sh DEST
set -euo pipefail
dest=${1:?usage: make-rootfs.sh DEST}
bb=$(command -v busybox || true)
[ -n "$bb" ] && "$bb" --list >/dev/null 2>&1 || { echo "busybox-static is not installed (apt-get install busybox-static)" >&2; exit 1; }
mkdir -p "$dest"/{bin,etc,tmp,root,home/app,proc,sys,dev}
cp "$bb" "$dest/bin/busybox"
for applet in $("$dest/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$dest/bin/$applet"
done
chmod 1777 "$dest/tmp"
cat > "$dest/etc/passwd" <<'P'
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
P
cat > "$dest/etc/group" <<'G'
root:x:0:
app:x:1000:
staff:x:50:app
nogroup:x:65534:
G
chown -R 1000:1000 "$dest/home/app" 2>/dev/null || true
