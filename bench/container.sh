#!/usr/bin/env bash
# Container start benchmark: `kiln run --rm IMAGE true`, from invocation to exit, beside
# `podman run --rm` (runc, overlay) and `docker run --rm` (dockerd from
# ../shared/anchors/dockerd.sh) on the same busybox image (made by kiln from the host's
# busybox-static, handed to podman as an OCI layout and to docker as a docker-archive).
# Median of RUNS (20) runs each, after one warm-up; prints milliseconds and kiln's ratio.
#
# usage: bench/container.sh     (env: RUNS=20, WORK=/var/tmp/kiln-bench-container)
# Needs root and busybox-static; podman and docker are measured when present (podman
# needs `default_ulimits = []` in containers.conf here: ../shared/anchors/setup.sh).
# Not a test: nothing here asserts timings. (bench/run.sh is the RUN-step benchmark.)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SHARED=${SHARED:-$REPO/../shared}
WORK=${WORK:-/var/tmp/kiln-bench-container}
RUNS=${RUNS:-20}
mkdir -p "$WORK"

(cd "$REPO" && cargo build --release -q -p kiln-builder)
KILN=$REPO/target/release/kiln
export KILN_ROOT=$WORK/kiln-store

# The image, once: kiln's store, an OCI layout (podman), a docker-archive (docker).
if [ ! -f "$WORK/.done" ]; then
  rm -rf "$WORK/base" "$KILN_ROOT"; mkdir -p "$WORK/base"
  cp "$REPO/testdata/bases/busybox/Dockerfile" "$WORK/base/"
  bash "$REPO/testdata/bases/busybox/make-rootfs.sh" "$WORK/base/rootfs"
  "$KILN" build --progress quiet -t bench-run:busybox \
    -o "type=oci,dest=$WORK/busybox-oci" -o "type=docker,dest=$WORK/busybox-docker.tar" \
    "$WORK/base" >/dev/null
  touch "$WORK/.done"
fi

median_ms() { # command...: median wall time of RUNS runs, in ms (one warm-up first)
  "$@" >/dev/null 2>&1 || { echo "FAILED: $*" >&2; "$@" >&2 || true; return 1; }
  local i s e times=()
  for i in $(seq "$RUNS"); do
    s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N)
    times+=($(( (e - s) / 1000000 )))
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'
}

declare -A MS
MS[kiln]=$(median_ms "$KILN" run --rm bench-run:busybox true)

if command -v podman >/dev/null; then
  P=(podman --root "$WORK/podman-root" --runroot "$WORK/podman-runroot" --storage-driver overlay --runtime runc)
  "${P[@]}" pull -q "oci:$WORK/busybox-oci:bench-run:busybox" >/dev/null 2>&1 ||
    "${P[@]}" pull -q "oci:$WORK/busybox-oci" >/dev/null
  PIMG=$("${P[@]}" images -q | head -1)
  MS[podman]=$(median_ms "${P[@]}" run --rm --network host "$PIMG" true) || unset 'MS[podman]'
fi

if [ -x /usr/bin/docker ] && bash "$SHARED/anchors/dockerd.sh" start >/dev/null 2>&1; then
  D=(/usr/bin/docker -H unix:///run/anchor-docker.sock)
  "${D[@]}" load -q -i "$WORK/busybox-docker.tar" >/dev/null
  MS[docker]=$(median_ms "${D[@]}" run --rm --network host bench-run:busybox true) || unset 'MS[docker]'
fi

printf '%-8s %10s %16s\n' tool "median ms" "kiln / tool"
for t in kiln podman docker; do
  [ -n "${MS[$t]:-}" ] || { printf '%-8s %10s\n' "$t" "n/a"; continue; }
  printf '%-8s %10s %16s\n' "$t" "${MS[$t]}" "$(echo "scale=3; ${MS[kiln]} / ${MS[$t]}" | bc)"
done
