#!/usr/bin/env bash
# RUN benchmark: kiln beside buildah (`bud --layers --isolation chroot`) on the anchors'
# fixtures, in one run on one machine:
#   app         Debian base, apt-get install python3, a RUN writing 500 files, COPY of the
#               app: cold build of app1, no-op rebuild, rebuild after a source change, and
#               app2 right after app1 (same Dockerfile, other source: prefix reuse)
#   multistage  three independent busybox stages of ~2 s each and a final stage copying
#               from them: cold, no-op, rebuild after app.txt changes
# Both builders take their base from the same OCI layout (kiln `FROM oci-layout://`,
# buildah `FROM oci:`), made once by kiln: a Debian minbase from mmdebstrap and a busybox
# base from busybox-static. Prints seconds per step and kiln's ratio to buildah.
#
# usage: bench/run.sh [app|multistage]...   (default: both; env WORK=/var/tmp/kiln-bench-run)
# Needs root, mmdebstrap, buildah, busybox-static, a Debian mirror. Asserts nothing.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SHARED=${SHARED:-$REPO/../shared}
FIX=$SHARED/anchors/fixtures
WORK=${WORK:-/var/tmp/kiln-bench-run}
FIXTURES=("$@"); [ ${#FIXTURES[@]} -gt 0 ] || FIXTURES=(app multistage)
mkdir -p "$WORK"

(cd "$REPO" && cargo build --release -q -p kiln-builder)
KILN=$REPO/target/release/kiln
BASES=$WORK/bases   # lower-case path: buildah's oci: transport wants one

# Base images as OCI layouts, made once.
if [ ! -f "$BASES/.done" ]; then
  rm -rf "$BASES"; mkdir -p "$BASES/debian" "$BASES/busybox"
  cp "$REPO/testdata/bases/debian/Dockerfile" "$BASES/debian/"
  bash "$REPO/testdata/bases/debian/make-rootfs.sh" "$BASES/debian/rootfs.tar" >"$WORK/bases.log" 2>&1
  cp "$REPO/testdata/bases/busybox/Dockerfile" "$BASES/busybox/"
  bash "$REPO/testdata/bases/busybox/make-rootfs.sh" "$BASES/busybox/rootfs"
  for b in debian busybox; do
    KILN_ROOT=$WORK/base-store "$KILN" build --progress quiet -t "$b:bench" \
      -o "type=oci,dest=$BASES/$b-oci" "$BASES/$b" >/dev/null
  done
  touch "$BASES/.done"
fi

t() { # times a command; a failed build stops the benchmark
  local s e; sync; s=$(date +%s.%N)
  if ! "$@" >>"$WORK/log" 2>&1; then echo "FAILED: $*" >&2; tail -5 "$WORK/log" >&2; exit 1; fi
  e=$(date +%s.%N); echo "$e - $s" | bc
}

# Contexts: the fixtures with their FROM lines pointed at a build arg.
prep() { # fixture-dir dest
  rm -rf "$2"; cp -a "$1" "$2"
  sed -i -E 's#^FROM 127\.0\.0\.1:5000/(debian|busybox):[a-z]+#FROM ${BASE}#' "$2/Dockerfile"
  sed -i '1i ARG BASE' "$2/Dockerfile"
}

BUILDAH=(buildah --root "$WORK/buildah-root" --runroot "$WORK/buildah-runroot" --storage-driver overlay)
kiln_reset() { rm -rf "$WORK/kiln-store"; }
buildah_reset() { "${BUILDAH[@]}" rmi --all --force >/dev/null 2>&1 || true; rm -rf "$WORK/buildah-root" "$WORK/buildah-runroot"; }
kiln_build() { # base ctx tag
  KILN_ROOT=$WORK/kiln-store "$KILN" build --progress plain \
    --build-arg "BASE=oci-layout://$BASES/$1-oci:bench" -t "$3" "$2"
}
buildah_build() { # base ctx tag
  "${BUILDAH[@]}" bud --layers --isolation chroot --network host --format docker \
    --build-arg "BASE=oci:$BASES/$1-oci:bench" -t "$3" "$2"
}

declare -A R
steps_app=(cold noop edit app2)
steps_multistage=(cold noop edit)

bench_app() { # builder
  local b=$1
  prep "$FIX/app1" "$WORK/ctx/app1"; prep "$FIX/app2" "$WORK/ctx/app2"
  ${b}_reset
  R[$b,app,cold]=$(t ${b}_build debian "$WORK/ctx/app1" bench-app1)
  R[$b,app,noop]=$(t ${b}_build debian "$WORK/ctx/app1" bench-app1)
  echo "# edit $(date +%s%N)" >> "$WORK/ctx/app1/main.py"
  R[$b,app,edit]=$(t ${b}_build debian "$WORK/ctx/app1" bench-app1)
  R[$b,app,app2]=$(t ${b}_build debian "$WORK/ctx/app2" bench-app2)
}

bench_multistage() {
  local b=$1
  prep "$FIX/multistage" "$WORK/ctx/multistage"
  ${b}_reset
  R[$b,multistage,cold]=$(t ${b}_build busybox "$WORK/ctx/multistage" bench-ms)
  R[$b,multistage,noop]=$(t ${b}_build busybox "$WORK/ctx/multistage" bench-ms)
  echo "edit $(date +%s%N)" >> "$WORK/ctx/multistage/app.txt"
  R[$b,multistage,edit]=$(t ${b}_build busybox "$WORK/ctx/multistage" bench-ms)
}

: > "$WORK/log"
mkdir -p "$WORK/ctx"
for fx in "${FIXTURES[@]}"; do
  for b in kiln buildah; do "bench_$fx" "$b"; done
done

printf '\n%-12s %-6s %10s %10s %12s\n' fixture step kiln buildah kiln/buildah
for fx in "${FIXTURES[@]}"; do
  declare -n steps="steps_$fx"
  for s in "${steps[@]}"; do
    printf '%-12s %-6s %9.2fs %9.2fs %12.3f\n' "$fx" "$s" "${R[kiln,$fx,$s]}" "${R[buildah,$fx,$s]}" \
      "$(echo "${R[kiln,$fx,$s]} / ${R[buildah,$fx,$s]}" | bc -l)"
  done
done
echo "(load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); log: $WORK/log)"
