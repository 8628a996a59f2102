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
# A failed run stops it (exit 1). On exit it removes the containers and images it made
# (kiln's and podman's stores are its own, under WORK; in dockerd only the image it
# loaded), and fails if a mount it made is left (/proc/self/mountinfo).
# Not a test: nothing here asserts timings. (bench/run.sh is the RUN-step benchmark,
# bench/cycle.sh the build-then-run one.)
set -euo pipefail
shopt -s inherit_errexit
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SHARED=${SHARED:-$REPO/../shared}
WORK=${WORK:-/var/tmp/kiln-bench-container}
RUNS=${RUNS:-20}
DOCKER_SOCK=${ANCHOR_DOCKER_SOCK:-/run/anchor-docker.sock}
DOCKER_DATA=${ANCHOR_DOCKER_ROOT:-/var/lib/anchors/docker}
mkdir -p "$WORK"

(cd "$REPO" && nice -n 10 cargo build --release -q -p kiln-builder)
KILN=$REPO/target/release/kiln
export KILN_ROOT=$WORK/kiln-store
P=(podman --root "$WORK/podman-root" --runroot "$WORK/podman-runroot" --storage-driver overlay --runtime runc)
D=(/usr/bin/docker -H "unix://$DOCKER_SOCK")

# Mount points under the directories the tools mount in (WORK, dockerd's data root): the
# set at the start, to compare with the set at the end.
mounts() {
  awk -v w="$WORK/" -v d="$DOCKER_DATA/" 'index($5, w) == 1 || index($5, d) == 1 { print $5 }' \
    /proc/self/mountinfo | sort
}
MOUNTS_BEFORE=$(mounts)
TOOLS=(kiln)
cleanup() {
  local rc=$? left
  set +e
  trap - EXIT
  left=$("$KILN" ps -aq 2>/dev/null)
  [ -z "$left" ] || { echo "error: kiln containers left: $left" >&2; "$KILN" rm -f $left >/dev/null; rc=1; }
  if [[ " ${TOOLS[*]} " == *" docker "* ]]; then
    left=$("${D[@]}" ps -aq --filter ancestor=bench-run:busybox)
    [ -z "$left" ] || { echo "error: docker containers left: $left" >&2; "${D[@]}" rm -f $left >/dev/null; rc=1; }
    "${D[@]}" rmi bench-run:busybox >/dev/null
  fi
  if [ -d "$WORK/podman-root" ]; then
    left=$("${P[@]}" ps -aq)
    [ -z "$left" ] || { echo "error: podman containers left: $left" >&2; rc=1; }
    "${P[@]}" rm -af >/dev/null
    "${P[@]}" rmi -af >/dev/null
  fi
  left=$(comm -13 <(echo "$MOUNTS_BEFORE") <(mounts))
  if [ -n "$left" ]; then
    echo "error: mounts left behind (stores kept): $left" >&2
    exit 1
  fi
  rm -rf "$KILN_ROOT" "$WORK/podman-root" "$WORK/podman-runroot"
  exit "$rc"
}
trap cleanup EXIT

# The image: in kiln's store, as an OCI layout (podman), a docker-archive (docker).
rm -rf "$WORK/base" "$KILN_ROOT" "$WORK/podman-root" "$WORK/podman-runroot" "$WORK/busybox-oci"
mkdir -p "$WORK/base"
cp "$REPO/testdata/bases/busybox/Dockerfile" "$WORK/base/"
bash "$REPO/testdata/bases/busybox/make-rootfs.sh" "$WORK/base/rootfs"
"$KILN" build --progress quiet -t bench-run:busybox \
  -o "type=oci,dest=$WORK/busybox-oci" -o "type=docker,dest=$WORK/busybox-docker.tar" \
  "$WORK/base" >/dev/null

median_ms() { # command...: median wall time of RUNS runs, in ms (one warm-up first)
  local i s e times=()
  "$@" >/dev/null 2>&1 || { echo "FAILED: $*" >&2; "$@" >&2 || true; exit 1; }
  for i in $(seq "$RUNS"); do
    s=$(date +%s%N)
    "$@" >/dev/null 2>&1 || { echo "FAILED (run $i): $*" >&2; "$@" >&2 || true; exit 1; }
    e=$(date +%s%N)
    times+=($(( (e - s) / 1000000 )))
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'
}

declare -A MS
MS[kiln]=$(median_ms "$KILN" run --rm bench-run:busybox true)

if command -v podman >/dev/null; then
  TOOLS+=(podman)
  "${P[@]}" pull -q "oci:$WORK/busybox-oci:bench-run:busybox" >/dev/null 2>&1 ||
    "${P[@]}" pull -q "oci:$WORK/busybox-oci" >/dev/null
  PIMG=$("${P[@]}" images -q | head -1)
  MS[podman]=$(median_ms "${P[@]}" run --rm --network host "$PIMG" true)
fi

if [ -x /usr/bin/docker ] && bash "$SHARED/anchors/dockerd.sh" start >/dev/null 2>&1; then
  TOOLS+=(docker)
  "${D[@]}" load -q -i "$WORK/busybox-docker.tar" >/dev/null
  MS[docker]=$(median_ms "${D[@]}" run --rm --network host bench-run:busybox true)
fi

printf '%-8s %10s %16s\n' tool "median ms" "kiln / tool"
for t in kiln podman docker; do
  [ -n "${MS[$t]:-}" ] || { printf '%-8s %10s\n' "$t" "n/a"; continue; }
  printf '%-8s %10s %16s\n' "$t" "${MS[$t]}" "$(echo "scale=3; ${MS[kiln]} / ${MS[$t]}" | bc)"
done
