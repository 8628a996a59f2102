#!/usr/bin/env bash
# COPY benchmark: kiln beside buildah (and BuildKit when ../shared/anchors/dockerd.sh
# starts) on one context of 20,000 small files plus ~1 GiB in three large files.
# Steps: cold build, no-op rebuild, rebuild after one file changes, rebuild after one file
# is only touched. Prints seconds per step and kiln's ratio to each other builder.
#
# usage: bench/copy.sh            (env: BIG_MB=341 per large file, WORK=/var/tmp/kiln-bench)
# Needs root; installs buildah if missing. Not a test: nothing here asserts timings.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SHARED=${SHARED:-$REPO/../shared}
WORK=${WORK:-/var/tmp/kiln-bench}
BIG_MB=${BIG_MB:-341}
CTX=$WORK/ctx
mkdir -p "$WORK"

command -v buildah >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah >/dev/null; }
(cd "$REPO" && cargo build --release -q -p kiln-builder)
KILN=$REPO/target/release/kiln

if [ ! -f "$CTX/.done-$BIG_MB" ]; then
  rm -rf "$CTX"; mkdir -p "$CTX"
  BIG_MB=$BIG_MB bash "$SHARED/anchors/fixtures/bigcopy/gen.sh" "$CTX"
  printf 'FROM scratch\nCOPY . /data\n' > "$CTX/Dockerfile"
  touch "$CTX/.done-$BIG_MB"
fi
echo "context: $(find "$CTX" -type f | wc -l) files, $(du -sh "$CTX" | cut -f1)"

t() { # times a command; a failed build stops the benchmark
  local s e; sync; s=$(date +%s.%N)
  if ! "$@" >>"$WORK/log" 2>&1; then echo "FAILED: $*" >&2; tail -5 "$WORK/log" >&2; exit 1; fi
  e=$(date +%s.%N); echo "$e - $s" | bc
}

declare -A R
run_builder() { # name build-cmd-function reset-function
  local name=$1 build=$2 reset=$3
  $reset
  R[$name,cold]=$(t $build)
  R[$name,noop]=$(t $build)
  echo "edit $(date +%s%N)" >> "$CTX/small/d000/f000.txt"
  R[$name,edit]=$(t $build)
  touch "$CTX/small/d001/f001.txt"
  R[$name,touch]=$(t $build)
}

kiln_reset() { rm -rf "$WORK/kiln-store"; }
kiln_build() { KILN_ROOT=$WORK/kiln-store "$KILN" build --progress plain -t bench:copy "$CTX"; }
BUILDAH=(buildah --root "$WORK/buildah-root" --runroot "$WORK/buildah-runroot" --storage-driver overlay)
buildah_reset() { "${BUILDAH[@]}" rmi --all --force >/dev/null 2>&1 || true; rm -rf "$WORK/buildah-root" "$WORK/buildah-runroot"; }
buildah_build() { "${BUILDAH[@]}" bud --layers --isolation chroot -t bench-copy -f "$CTX/Dockerfile" "$CTX"; }

: > "$WORK/log"
run_builder kiln kiln_build kiln_reset
run_builder buildah buildah_build buildah_reset
builders=(kiln buildah)
if bash "$SHARED/anchors/dockerd.sh" start >/dev/null 2>&1; then
  DOCKER=(/usr/bin/docker -H unix:///run/anchor-docker.sock)
  bk_reset() { "${DOCKER[@]}" builder prune -af >/dev/null 2>&1 || true; }
  bk_build() { DOCKER_BUILDKIT=1 "${DOCKER[@]}" build --progress plain -t bench-copy "$CTX"; }
  run_builder buildkit bk_build bk_reset
  builders+=(buildkit)
fi

printf '\n%-10s' step; for b in "${builders[@]}"; do printf '%12s' "$b"; done
for b in "${builders[@]:1}"; do printf '%16s' "kiln/$b"; done; echo
for s in cold noop edit touch; do
  printf '%-10s' "$s"
  for b in "${builders[@]}"; do printf '%11.3fs' "${R[$b,$s]}"; done
  for b in "${builders[@]:1}"; do printf '%16.3f' "$(echo "${R[kiln,$s]} / ${R[$b,$s]}" | bc -l)"; done
  echo
done
