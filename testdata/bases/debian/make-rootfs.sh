#!/usr/bin/env bash
# Makes a Debian bookworm minbase root filesystem tarball with mmdebstrap (about a minute
# with a reachable Debian mirror). Usage: make-rootfs.sh DEST.tar [MIRROR]
set -euo pipefail
dest=${1:?usage: make-rootfs.sh DEST.tar [MIRROR]}
mirror=${2:-http://deb.debian.org/debian}
command -v mmdebstrap >/dev/null || { echo "mmdebstrap is not installed (apt-get install mmdebstrap)" >&2; exit 1; }
# /dev is left out: the sandbox brings its own, and a base image has no device nodes.
timeout 900 mmdebstrap --variant=minbase --mode=root --format=tar \
  --skip=output/dev --dpkgopt='path-exclude=/usr/share/man/*' \
  bookworm "$dest" "$mirror"
