#!/usr/bin/env bash
# Installs the tools the end-to-end tests use (listed with their commands in
# .ci/tools.txt): skopeo, umoci and oci-image-tool check what kiln writes; busybox-static
# and mmdebstrap make the test base images; buildah is the reference builder RUN results
# are compared with; docker-registry (the CNCF distribution registry) and apache2-utils
# (htpasswd) serve the registry tests; gcc and libc6-dev build the static escape probe the
# sandbox tests run inside RUN, and iproute2 checks the host's loopback after it; docker.io
# (dockerd and the docker client) runs kiln's images in the Docker acceptance test; git
# (ADD of git repositories, served by git daemon) and openssh-client (ssh-agent for RUN
# --mount=type=ssh).
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
