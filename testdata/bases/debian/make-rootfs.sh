#!/usr/bin/env bash
# Makes a Debian bookworm minbase root filesystem tarball with mmdebstrap (about a minute
# with a reachable Debian mirror for the host's architecture; about five for arm64 on an
# amd64 host, whose packages' scripts run through qemu-user-static, which needs the
# arch-test package too). Usage: make-rootfs.sh DEST.tar [MIRROR] [ARCH]
#
# Tarballs are cached between runs in $KILN_TEST_CACHE (default /var/cache/kiln-test,
# used when it can be created and written), keyed by architecture and UTC date: a day's
# first run makes it (written aside, then renamed, so a killed run leaves nothing half
# made) and removes older days' for that architecture; later runs copy it.
set -euo pipefail
dest=${1:?usage: make-rootfs.sh DEST.tar [MIRROR] [ARCH]}
mirror=${2:-http://deb.debian.org/debian}
command -v mmdebstrap >/dev/null || { echo "mmdebstrap is not installed (apt-get install mmdebstrap)" >&2; exit 1; }
arch=${3:-$(dpkg --print-architecture)}
if [ "$arch" != "$(dpkg --print-architecture)" ]; then
  command -v arch-test >/dev/null || { echo "mmdebstrap --arch=$arch needs arch-test (apt-get install arch-test)" >&2; exit 1; }
fi
make() {
  # /dev is left out: the sandbox brings its own, and a base image has no device nodes.
  timeout 900 mmdebstrap --variant=minbase --mode=root --format=tar --arch="$arch" \
    --skip=output/dev --dpkgopt='path-exclude=/usr/share/man/*' \
    bookworm "$1" "$mirror"
}
cache=${KILN_TEST_CACHE:-/var/cache/kiln-test}
if mkdir -p "$cache" 2>/dev/null && [ -w "$cache" ]; then
  key="$cache/debian-bookworm-minbase-$arch-$(date -u +%Y%m%d).tar"
  if [ ! -f "$key" ]; then
    # Older days' (and their leftovers); today's may be being made by another run.
    find "$cache" -maxdepth 1 -name "debian-bookworm-minbase-$arch-*.tar*" \
      ! -name "${key##*/}*" -delete
    make "$key.tmp.$$"
    mv -f "$key.tmp.$$" "$key"
  else
    echo "make-rootfs.sh: using the cached $key" >&2
  fi
  cp --reflink=auto "$key" "$dest"
else
  make "$dest"
fi
