#!/usr/bin/env bash
# Registry push/pull throughput: kiln vs skopeo vs buildah, against a local
# docker-registry (CNCF distribution) on loopback.
#
# Builds a ~1 GiB image of several incompressible gzip layers as an OCI
# layout, then times, each from a clean state:
#   push     upload to an empty registry   (kiln push | skopeo copy oci: | buildah push)
#   pull     download into an empty store  (kiln pull | skopeo copy to oci: | buildah pull)
#   re-push  push the unchanged image again (everything already there)
# and prints seconds, MB/s and the others' time divided by kiln's
# (>1 means kiln is faster).
#
# Usage: bench/registry.sh            (env: KILN=path/to/kiln, SIZE_MIB=1024,
#                                      LAYERS=4, SKIP_BUILDAH=1, KEEP=1)
# Needs: kiln, docker-registry, skopeo, buildah (unless SKIP_BUILDAH=1),
#        gzip, sha256sum, python3 (for a free port).
set -euo pipefail

SIZE_MIB=${SIZE_MIB:-1024}
LAYERS=${LAYERS:-4}
KILN=${KILN:-$(command -v kiln || echo "$(dirname "$0")/../target/release/kiln")}
REGISTRY_BIN=${REGISTRY_BIN:-/usr/bin/docker-registry}

need() { command -v "$1" >/dev/null 2>&1 || { echo "missing $1 (apt-get install -y $2)" >&2; exit 2; }; }
[ -x "$KILN" ] || { echo "kiln binary not found: build it (cargo build --release) or set KILN=" >&2; exit 2; }
[ -x "$REGISTRY_BIN" ] || { echo "missing $REGISTRY_BIN (apt-get install -y docker-registry)" >&2; exit 2; }
need skopeo skopeo
need gzip gzip
need sha256sum coreutils
need python3 python3
if [ -z "${SKIP_BUILDAH:-}" ]; then need buildah buildah; fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kiln-bench-registry.XXXXXX")
REG_PID=
cleanup() {
  [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null && wait "$REG_PID" 2>/dev/null || true
  if [ -z "${KEEP:-}" ]; then
    # buildah's vfs storage may hold files only root can remove
    chmod -R u+w "$WORK" 2>/dev/null || true
    rm -rf "$WORK"
  else
    echo "kept $WORK"
  fi
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
REG=127.0.0.1:$PORT

start_registry() {  # fresh, empty storage each time
  [ -n "$REG_PID" ] && { kill "$REG_PID" 2>/dev/null; wait "$REG_PID" 2>/dev/null || true; }
  rm -rf "$WORK/registry" && mkdir -p "$WORK/registry"
  cat > "$WORK/registry/config.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/registry/storage
http:
  addr: $REG
YML
  "$REGISTRY_BIN" serve "$WORK/registry/config.yml" >"$WORK/registry/log" 2>&1 &
  REG_PID=$!
  for _ in $(seq 1 200); do
    if python3 -c "import socket; socket.create_connection(('127.0.0.1',$PORT),1)" 2>/dev/null; then return; fi
    sleep 0.05
  done
  echo "registry did not start: $(cat "$WORK/registry/log")" >&2; exit 1
}

now() { date +%s.%N; }
declare -A T
timed() {  # timed KEY cmd...
  local key=$1; shift
  local t0; t0=$(now)
  "$@" >"$WORK/last.log" 2>&1 || { echo "FAILED: $*" >&2; cat "$WORK/last.log" >&2; exit 1; }
  T[$key]=$(awk -v a="$t0" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}')
  echo "  $key: ${T[$key]} s"
}

# --- the image: LAYERS incompressible gzip layers, ~SIZE_MIB in all --------
echo "building a ${SIZE_MIB} MiB image with $LAYERS layers in $WORK ..."
LAYOUT=$WORK/layout
mkdir -p "$LAYOUT/blobs/sha256" "$WORK/gen"
per=$(( SIZE_MIB / LAYERS ))
layers_json= diffs_json= total=0
for i in $(seq 1 "$LAYERS"); do
  rm -rf "$WORK/gen/root" && mkdir -p "$WORK/gen/root/data$i"
  for j in $(seq 1 8); do
    head -c $(( per * 1024 * 1024 / 8 )) /dev/urandom > "$WORK/gen/root/data$i/f$j"
  done
  tar -C "$WORK/gen/root" --sort=name --mtime=@0 --owner=0 --group=0 -cf "$WORK/gen/layer.tar" .
  diff=$(sha256sum "$WORK/gen/layer.tar" | cut -d' ' -f1)
  gzip -1 -n -c "$WORK/gen/layer.tar" > "$WORK/gen/layer.tgz"
  dig=$(sha256sum "$WORK/gen/layer.tgz" | cut -d' ' -f1)
  size=$(stat -c %s "$WORK/gen/layer.tgz")
  total=$(( total + size ))
  mv "$WORK/gen/layer.tgz" "$LAYOUT/blobs/sha256/$dig"
  layers_json+="${layers_json:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$dig\",\"size\":$size}"
  diffs_json+="${diffs_json:+,}\"sha256:$diff\""
done
rm -rf "$WORK/gen"
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/bin:/bin"]},"rootfs":{"type":"layers","diff_ids":[%s]}}' "$diffs_json" > "$WORK/config.json"
cdig=$(sha256sum "$WORK/config.json" | cut -d' ' -f1); csize=$(stat -c %s "$WORK/config.json")
mv "$WORK/config.json" "$LAYOUT/blobs/sha256/$cdig"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' "$cdig" "$csize" "$layers_json" > "$WORK/manifest.json"
mdig=$(sha256sum "$WORK/manifest.json" | cut -d' ' -f1); msize=$(stat -c %s "$WORK/manifest.json")
mv "$WORK/manifest.json" "$LAYOUT/blobs/sha256/$mdig"
echo '{"imageLayoutVersion":"1.0.0"}' > "$LAYOUT/oci-layout"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"bench"}}]}' "$mdig" "$msize" > "$LAYOUT/index.json"
MIB=$(awk -v b="$total" 'BEGIN{printf "%.0f", b/1048576}')
echo "image: sha256:$mdig, $MIB MiB compressed"

SKOPEO=(skopeo --insecure-policy)
BUILDAH=(buildah --root "$WORK/buildah/root" --runroot "$WORK/buildah/run" --storage-driver "${BUILDAH_DRIVER:-vfs}")
SRC=$REG/bench/src:1

# --- pull -----------------------------------------------------------------
echo "pull:"
start_registry
"${SKOPEO[@]}" copy --dest-tls-verify=false "oci:$LAYOUT:bench" "docker://$SRC" >/dev/null
timed pull_kiln "$KILN" --root "$WORK/kiln-pull" pull "$SRC"
timed pull_skopeo "${SKOPEO[@]}" copy --src-tls-verify=false "docker://$SRC" "oci:$WORK/skopeo-pull:x"
if [ -z "${SKIP_BUILDAH:-}" ]; then
  timed pull_buildah "${BUILDAH[@]}" pull --tls-verify=false "docker://$SRC"
fi

# --- push (each into an empty registry) -------------------------------------
# kiln pushes the image it pulled above (its store is the source, like a
# built image); skopeo from the OCI layout; buildah from its own storage.
# Each tool's re-push follows its own push: the registry then holds exactly what that
# tool pushed (buildah recompresses, so its blobs differ from the others').
echo "push, then re-push of the unchanged image:"
start_registry
timed push_kiln "$KILN" --root "$WORK/kiln-pull" push "$SRC"
timed repush_kiln "$KILN" --root "$WORK/kiln-pull" push "$SRC"
start_registry
timed push_skopeo "${SKOPEO[@]}" copy --dest-tls-verify=false "oci:$LAYOUT:bench" "docker://$SRC"
timed repush_skopeo "${SKOPEO[@]}" copy --dest-tls-verify=false "oci:$LAYOUT:bench" "docker://$SRC"
if [ -z "${SKIP_BUILDAH:-}" ]; then
  start_registry
  timed push_buildah "${BUILDAH[@]}" push --tls-verify=false "$SRC" "docker://$SRC"
  timed repush_buildah "${BUILDAH[@]}" push --tls-verify=false "$SRC" "docker://$SRC"
fi

# --- report ----------------------------------------------------------------
echo
echo "kiln registry benchmark: $MIB MiB, $LAYERS layers, local registry $REG"
printf '%-8s %10s %10s %10s %14s %14s\n' op kiln_s skopeo_s buildah_s skopeo/kiln buildah/kiln
for op in push pull repush; do
  k=${T[${op}_kiln]}; s=${T[${op}_skopeo]}; b=${T[${op}_buildah]:-}
  ratio() { [ -n "$2" ] && awk -v o="$2" -v k="$1" 'BEGIN{ if (k > 0) printf "%.2fx", o/k; else print "-" }' || echo -; }
  printf '%-8s %10s %10s %10s %14s %14s\n' "$op" "$k" "$s" "${b:--}" "$(ratio "$k" "$s")" "$(ratio "$k" "$b")"
done
for op in push pull; do
  awk -v m="$MIB" -v k="${T[${op}_kiln]}" -v op="$op" 'BEGIN{ if (k > 0) printf "kiln %s: %.0f MiB/s\n", op, m/k }'
done
echo "(buildah stores layers uncompressed and recompresses on push; skopeo copies blobs as they are)"
