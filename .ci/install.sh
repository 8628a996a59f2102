#!/usr/bin/env bash
# Installs the tools the end-to-end tests use (skopeo, umoci, oci-image-tool check what
# kiln writes; busybox-static gives the test base image). Idempotent.
set -euo pipefail
need=()
for pkg in skopeo umoci oci-image-tool busybox-static; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
