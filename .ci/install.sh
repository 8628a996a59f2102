#!/usr/bin/env bash
# Installs the tools the end-to-end tests use: skopeo, umoci and oci-image-tool check what
# kiln writes; busybox-static and mmdebstrap make the test base images; buildah is the
# reference builder RUN results are compared with; docker-registry (the CNCF distribution
# registry) and apache2-utils (htpasswd) serve the registry tests; gcc and libc6-dev build the
# static escape probe the sandbox tests run inside RUN, and iproute2 checks the host's
# loopback after it; git (ADD of git repositories, served by git daemon) and openssh-client
# (ssh-agent for RUN --mount=type=ssh). Idempotent.
set -euo pipefail
need=()
for pkg in skopeo umoci oci-image-tool busybox-static mmdebstrap buildah docker-registry apache2-utils gcc libc6-dev iproute2 git openssh-client; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
