#!/usr/bin/env bash
# Registry cache (issue 13): a second CI machine building from a first one's cache, and
# an export where most blobs are already in the registry. kiln beside buildah (and
# BuildKit's inline cache under dockerd 20.10, the only registry cache its client has
# without buildx), in one run, against the anchors' registry on 127.0.0.1:5000.
#
#   machine_b     an empty store builds the anchors' app fixture (debian base, apt-get
#                 install python3, RUN writing 500 files, COPY) with --cache-from the cache
#                 machine A exported (kiln: mode=max); kiln's build fetches no layer it
#                 does not need (nothing, for a build into the store), so it is also timed
#                 with the image written out (-o type=oci: every layer downloaded) and with
#                 --push to the same registry (layers mounted, none downloaded)
#   export_45_50  a cache of 50 RUN layers (1 MiB each) of which 45 are already in the
#                 registry: a no-op rebuild + export (kiln --cache-to mode=max, buildah
#                 --cache-to). BuildKit v0.12-0.26 pushes cache blobs one at a time, at least
#                 0.3 s each even when present (moby/buildkit#6123): >= 15 s for 50 blobs.
#
# Usage: bench/cache.sh   (env: KILN=path/to/kiln, SKIP_BUILDAH=1, SKIP_DOCKER=1, KEEP=1)
# Needs: the anchors' registry and bases (../shared/anchors: registry.sh start,
#        make-bases.sh), buildah, /usr/bin/docker 20.10 + dockerd.sh for BuildKit, root.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ANCHORS=${ANCHORS:-$HERE/../../shared/anchors}
KILN=${KILN:-$(command -v kiln || echo "$HERE/../target/release/kiln")}
REG=127.0.0.1:5000
[ -x "$KILN" ] || { echo "kiln binary not found: build it (cargo build --release) or set KILN=" >&2; exit 2; }
[ -d "$ANCHORS" ] || { echo "anchors not found at $ANCHORS (set ANCHORS=)" >&2; exit 2; }

if ! curl -sf "http://$REG/v2/" >/dev/null; then "$ANCHORS/registry.sh" start >/dev/null; fi
curl -sf "http://$REG/v2/debian/manifests/bookworm" -H 'Accept: application/vnd.oci.image.manifest.v1+json' >/dev/null \
  || { echo "no $REG/debian:bookworm: run $ANCHORS/make-bases.sh" >&2; exit 2; }

WORK=$(mktemp -d /var/tmp/kiln-bench-cache.XXXXXX)
cleanup() {
  if [ -z "${KEEP:-}" ]; then chmod -R u+w "$WORK" 2>/dev/null || true; rm -rf "$WORK"; else echo "kept $WORK"; fi
}
trap cleanup EXIT
RUN_ID=$(date +%s)  # fresh repositories each run: nothing left from an earlier run helps

now() { date +%s.%N; }
declare -A T
timed() {  # timed KEY cmd...
  local key=$1; shift
  local t0; t0=$(now)
  "$@" >"$WORK/$key.log" 2>&1 || { echo "FAILED ($key): $*" >&2; tail -30 "$WORK/$key.log" >&2; exit 1; }
  T[$key]=$(awk -v a="$t0" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}')
  echo "  $key: ${T[$key]} s"
}
ratio() { awk -v a="${T[$1]:-}" -v b="${T[$2]:-}" 'BEGIN{ if (a == "" || b == "" || b == 0) print "-"; else printf "%.1fx", a/b }'; }

cp -r "$ANCHORS/fixtures/app1" "$WORK/app"
CTX=$WORK/app

# --- the 45/50 layer fixture -------------------------------------------------------
mkdir -p "$WORK/l45" "$WORK/l50"
gen_layers() {  # gen_layers N DIR
  { echo "FROM $REG/busybox:latest"
    for i in $(seq 1 "$1"); do echo "RUN head -c 1048576 /dev/urandom > /f$i"; done; } > "$2/Dockerfile"
}
gen_layers 45 "$WORK/l45"
gen_layers 50 "$WORK/l50"

# --- kiln ------------------------------------------------------------------------
echo "kiln ($KILN):"
K_CACHE=$REG/bench/kiln-cache-$RUN_ID:app
KA=("$KILN" --root "$WORK/kiln-a" --insecure-registry "$REG")
KB=("$KILN" --root "$WORK/kiln-b" --insecure-registry "$REG")
kiln_flags_ok=1
"$KILN" build --help | grep -q -- --cache-to || kiln_flags_ok=
[ -n "$kiln_flags_ok" ] || { echo "this kiln has no --cache-to" >&2; exit 2; }
timed kiln_a_cold_export "${KA[@]}" build --progress plain -t app:a \
  --cache-to "type=registry,ref=$K_CACHE,mode=max" "$CTX"
timed kiln_a_noop_export "${KA[@]}" build --progress plain -t app:a \
  --cache-to "type=registry,ref=$K_CACHE,mode=max" "$CTX"
timed kiln_machine_b "${KB[@]}" build --progress plain -t app:b --cache-from "type=registry,ref=$K_CACHE" "$CTX"
rm -rf "$WORK/kiln-b"
timed kiln_machine_b_oci "${KB[@]}" build --progress plain -t app:b --cache-from "type=registry,ref=$K_CACHE" \
  -o "type=oci,dest=$WORK/kiln-b.tar" "$CTX"
rm -rf "$WORK/kiln-b" "$WORK/kiln-b.tar"
timed kiln_machine_b_push "${KB[@]}" build --progress plain -t "$REG/bench/kiln-app-$RUN_ID:b" --push \
  --cache-from "type=registry,ref=$K_CACHE" "$CTX"
grep -E "pushed|MISS" "$WORK/kiln_machine_b_push.log" | sed 's/^/    /' || true

L_CACHE=$REG/bench/kiln-layers-$RUN_ID:c
"${KA[@]}" build --progress plain --cache-to "type=registry,ref=$L_CACHE,mode=max" "$WORK/l45" >/dev/null 2>&1
"${KA[@]}" build --progress plain "$WORK/l50" >/dev/null 2>&1
timed kiln_export_45_50 "${KA[@]}" build --progress plain --cache-to "type=registry,ref=$L_CACHE,mode=max" "$WORK/l50"
grep -iE "cache.*export|exported" "$WORK/kiln_export_45_50.log" | sed 's/^/    /' || true

# --- buildah ------------------------------------------------------------------------
if [ -z "${SKIP_BUILDAH:-}" ] && command -v buildah >/dev/null; then
  echo "buildah ($(buildah --version | cut -d' ' -f3)):"
  B_CACHE=$REG/bench/buildah-cache-$RUN_ID
  BA=(buildah --root "$WORK/bah-a" --runroot "$WORK/bah-a-run" --storage-driver overlay)
  BB=(buildah --root "$WORK/bah-b" --runroot "$WORK/bah-b-run" --storage-driver overlay)
  BUD=(bud --isolation chroot --layers --network host --tls-verify=false)
  timed buildah_a_cold_export "${BA[@]}" "${BUD[@]}" --cache-to "$B_CACHE" -t app:a "$CTX"
  timed buildah_a_noop_export "${BA[@]}" "${BUD[@]}" --cache-to "$B_CACHE" -t app:a "$CTX"
  timed buildah_machine_b "${BB[@]}" "${BUD[@]}" --cache-from "$B_CACHE" -t app:b "$CTX"
  grep -c "Using cache" "$WORK/buildah_machine_b.log" | sed 's/^/    steps from cache: /' || true
  BL=$REG/bench/buildah-layers-$RUN_ID
  "${BA[@]}" "${BUD[@]}" --cache-to "$BL" -f "$WORK/l45/Dockerfile" "$WORK/l45" >/dev/null 2>&1
  "${BA[@]}" "${BUD[@]}" -f "$WORK/l50/Dockerfile" "$WORK/l50" >/dev/null 2>&1
  timed buildah_export_45_50 "${BA[@]}" "${BUD[@]}" --cache-to "$BL" -f "$WORK/l50/Dockerfile" "$WORK/l50"
  "${BA[@]}" rm --all >/dev/null 2>&1 || true; "${BB[@]}" rm --all >/dev/null 2>&1 || true
fi

# --- BuildKit inline cache (dockerd 20.10) ---------------------------------------------
if [ -z "${SKIP_DOCKER:-}" ] && [ -x /usr/bin/docker ] && [ -x "$ANCHORS/dockerd.sh" ]; then
  "$ANCHORS/dockerd.sh" start >/dev/null 2>&1 || true
  D=(/usr/bin/docker -H unix:///run/anchor-docker.sock)
  if "${D[@]}" info >/dev/null 2>&1; then
    echo "BuildKit (dockerd $("${D[@]}" version --format '{{.Server.Version}}'), inline cache):"
    export DOCKER_BUILDKIT=1
    BK=$REG/bench/bk-app-$RUN_ID:a
    "${D[@]}" builder prune -af >/dev/null; "${D[@]}" image prune -af >/dev/null
    timed bk_a_cold_push sh -c "${D[*]} build --network host --progress plain --build-arg BUILDKIT_INLINE_CACHE=1 -t $BK $CTX && ${D[*]} push $BK"
    "${D[@]}" builder prune -af >/dev/null; "${D[@]}" rmi -f "$BK" >/dev/null 2>&1 || true
    "${D[@]}" image prune -af >/dev/null
    timed bk_machine_b "${D[@]}" build --network host --progress plain --cache-from "$BK" -t app:b "$CTX"
    grep -c "CACHED" "$WORK/bk_machine_b.log" | sed 's/^/    steps CACHED: /' || true
  else
    echo "BuildKit: dockerd did not start (see $ANCHORS/dockerd.sh)"
  fi
fi

echo
echo "| step | kiln | buildah | BuildKit inline | buildah/kiln | BuildKit/kiln |"
echo "|---|---|---|---|---|---|"
echo "| A: cold build + cache export | ${T[kiln_a_cold_export]} | ${T[buildah_a_cold_export]:--} | ${T[bk_a_cold_push]:--} (build + push) | $(ratio buildah_a_cold_export kiln_a_cold_export) | - |"
echo "| A: no-op rebuild + export | ${T[kiln_a_noop_export]} | ${T[buildah_a_noop_export]:--} | - | $(ratio buildah_a_noop_export kiln_a_noop_export) | - |"
echo "| B: empty store, --cache-from | ${T[kiln_machine_b]} | ${T[buildah_machine_b]:--} | ${T[bk_machine_b]:--} | $(ratio buildah_machine_b kiln_machine_b) | $(ratio bk_machine_b kiln_machine_b) |"
echo "| B: same, image written out (-o type=oci) | ${T[kiln_machine_b_oci]} | - | - | $(ratio buildah_machine_b kiln_machine_b_oci) | $(ratio bk_machine_b kiln_machine_b_oci) |"
echo "| B: same, --push to the same registry | ${T[kiln_machine_b_push]} | - | - | - | - |"
echo "| export 50 layers, 45 present | ${T[kiln_export_45_50]} | ${T[buildah_export_45_50]:--} | >= 15 (0.3 s/blob, #6123) | $(ratio buildah_export_45_50 kiln_export_45_50) | $(awk -v k="${T[kiln_export_45_50]}" 'BEGIN{printf ">= %.1fx", 15/k}') |"
