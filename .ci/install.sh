#!/usr/bin/env bash
# Installs the tools the end-to-end tests use (listed with their commands in
# .ci/tools.txt): skopeo, umoci and oci-image-tool check what kiln writes; busybox-static
# and mmdebstrap make the test base images; buildah is the reference builder RUN results
# are compared with; docker-registry (the CNCF distribution registry) and apache2-utils
# (htpasswd) serve the registry tests; gcc and libc6-dev build the static escape probe the
# sandbox tests run inside RUN, and iproute2 checks the host's loopback after it; docker.io
# (dockerd and the docker client) runs kiln's images in the Docker acceptance test; git
# (ADD of git repositories, served by git daemon) and openssh-client (ssh-agent for RUN
# --mount=type=ssh); openssh-server (an sshd on loopback serving git over ssh); qemu-user-static
# runs RUN under arm64 in the multi-platform tests, and arch-test lets mmdebstrap make the arm64
# Debian base through it.
# Idempotent.
set -euo pipefail
cd "$(dirname "$0")"
need=()
for pkg in $(grep -v '^#' tools.txt | awk 'NF { print $2 }' | sort -u) libc6-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# Multi-platform tests: Debian's arm64 busybox-static (a base of a foreign architecture)
# at /opt/kiln-test/arm64/busybox, and qemu-user-static's aarch64 entry registered in
# binfmt_misc (with the F flag, as Debian's binfmt.d file has it) for RUN under arm64.
arm64_bb=/opt/kiln-test/arm64/busybox
if [ ! -x "$arm64_bb" ]; then
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
    apt-get update -qq
  fi
  tmp=$(mktemp -d)
  chmod 0755 "$tmp"
  (cd "$tmp" && { apt-get download -qq busybox-static:arm64 || { apt-get update -qq && apt-get download -qq busybox-static:arm64; }; })
  dpkg-deb -x "$tmp"/busybox-static_*_arm64.deb "$tmp/x"
  install -D -m 0755 "$tmp/x/bin/busybox" "$arm64_bb"
  rm -rf "$tmp"
fi
if [ -d /proc/sys/fs/binfmt_misc ] && ! [ -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true
fi
if [ -w /proc/sys/fs/binfmt_misc/register ] && ! [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] &&
  [ -f /usr/lib/binfmt.d/qemu-aarch64.conf ]; then
  cat /usr/lib/binfmt.d/qemu-aarch64.conf >/proc/sys/fs/binfmt_misc/register || true
fi
