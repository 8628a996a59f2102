#!/usr/bin/env bash
# Build-then-run cycle benchmark: `kiln build -t X . && kiln run --rm X CMD` beside
# BuildKit (`DOCKER_BUILDKIT=1 docker build` through dockerd from
# ../shared/anchors/dockerd.sh, then `docker run --rm`) and `podman build` (runc, overlay,
# then `podman run --rm`), on one small fixture: a busybox base (made by kiln from the
# host's busybox-static, loaded into docker and podman from one docker-archive), a COPY of
# 40 small files and a RUN hashing them; CMD prints the hashes. Two steps, RUNS (5) times
# each, the tools taking turns within each round:
#   cold  build with --no-cache, then run
#   warm  one source file edited, build with the cache, then run
# Each run's output is compared with the hashes of the current source (a stale image
# stops the benchmark). Prints the medians (build, run, build+run per round) in ms and
# kiln's ratio to each tool, cycle against cycle.
#
# usage: bench/cycle.sh     (env: RUNS=5, WORK=/var/tmp/kiln-bench-cycle)
# Needs root and busybox-static; docker and podman are measured when present (podman
# needs `default_ulimits = []` in containers.conf here: ../shared/anchors/setup.sh).
# Any failed build or run stops it (exit 1). On exit it removes the containers and images
# it made (kiln's and podman's stores are its own, under WORK; in dockerd only the images
# it built or loaded), and fails if a mount it made is left (/proc/self/mountinfo).
# BuildKit's build cache in dockerd is not pruned (shared with other users of dockerd).
# Not a test: nothing here asserts timings.
set -euo pipefail
shopt -s inherit_errexit
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SHARED=${SHARED:-$REPO/../shared}
WORK=${WORK:-/var/tmp/kiln-bench-cycle}
RUNS=${RUNS:-5}
DOCKER_SOCK=${ANCHOR_DOCKER_SOCK:-/run/anchor-docker.sock}
DOCKER_DATA=${ANCHOR_DOCKER_ROOT:-/var/lib/anchors/docker}
NAME=bench-cycle-$$   # containers' name prefix (docker, podman), to find them if stopped midway
mkdir -p "$WORK"
LOG=$WORK/log
: >"$LOG"

(cd "$REPO" && nice -n 10 cargo build --release -q -p kiln-builder)
KILN=$REPO/target/release/kiln
export KILN_ROOT=$WORK/kiln-store
P=(podman --root "$WORK/podman-root" --runroot "$WORK/podman-runroot" --storage-driver overlay --runtime runc)
D=(/usr/bin/docker -H "unix://$DOCKER_SOCK")

# Mount points under the directories this script's tools mount in (its own WORK, dockerd's
# data root): the set at the start, to compare with the set at the end.
mounts() {
  awk -v w="$WORK/" -v d="$DOCKER_DATA/" 'index($5, w) == 1 || index($5, d) == 1 { print $5 }' \
    /proc/self/mountinfo | sort
}
MOUNTS_BEFORE=$(mounts)

TOOLS=(kiln)
command -v podman >/dev/null && TOOLS+=(podman)
[ -x /usr/bin/docker ] && bash "$SHARED/anchors/dockerd.sh" start >>"$LOG" 2>&1 && TOOLS+=(docker)

DOCKER_IMAGES=() # ids of the images docker built or loaded here
cleanup() {
  local rc=$? left
  set +e
  trap - EXIT
  left=$("$KILN" ps -aq 2>/dev/null)
  [ -z "$left" ] || { echo "error: kiln containers left: $left" >&2; "$KILN" rm -f $left >/dev/null; rc=1; }
  if [[ " ${TOOLS[*]} " == *" docker "* ]]; then
    left=$("${D[@]}" ps -aq --filter "name=$NAME")
    [ -z "$left" ] || { echo "error: docker containers left: $left" >&2; "${D[@]}" rm -f $left >/dev/null; rc=1; }
    DOCKER_IMAGES+=($("${D[@]}" images -q --no-trunc bench-cycle))
    [ ${#DOCKER_IMAGES[@]} -eq 0 ] ||
      "${D[@]}" rmi -f $(printf '%s\n' "${DOCKER_IMAGES[@]}" | sort -u) >>"$LOG" 2>&1
  fi
  if [ -d "$WORK/podman-root" ]; then
    left=$("${P[@]}" ps -aq --filter "name=$NAME")
    [ -z "$left" ] || { echo "error: podman containers left: $left" >&2; rc=1; }
    "${P[@]}" rm -af >>"$LOG" 2>&1
    "${P[@]}" rmi -af >>"$LOG" 2>&1
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

# The base, made by kiln: in kiln's store, and as a docker-archive for docker and podman.
rm -rf "$KILN_ROOT" "$WORK/podman-root" "$WORK/podman-runroot" "$WORK/base"
mkdir -p "$WORK/base"
cp "$REPO/testdata/bases/busybox/Dockerfile" "$WORK/base/"
bash "$REPO/testdata/bases/busybox/make-rootfs.sh" "$WORK/base/rootfs"
"$KILN" build --progress quiet -t bench-cycle:base -o "type=docker,dest=$WORK/base.tar" \
  "$WORK/base" >>"$LOG"
for t in "${TOOLS[@]}"; do
  case $t in
    docker) "${D[@]}" load -q -i "$WORK/base.tar" >>"$LOG"
            DOCKER_IMAGES+=($("${D[@]}" images -q --no-trunc bench-cycle:base)) ;;
    podman) "${P[@]}" load -q -i "$WORK/base.tar" >>"$LOG" ;;
  esac
done

# The fixture.
CTX=$WORK/ctx
rm -rf "$CTX"; mkdir -p "$CTX/src"
for i in $(seq -w 1 40); do seq "$i" 400 >"$CTX/src/f$i.txt"; done
cat >"$CTX/Dockerfile" <<'EOF'
ARG BASE=bench-cycle:base
FROM ${BASE}
COPY src/ /app/
RUN cd /app && sha256sum *.txt > SUMS
CMD ["cat", "/app/SUMS"]
EOF
edit() { echo "edit $(date +%s%N)" >>"$CTX/src/f07.txt"; }
expected() { (cd "$CTX/src" && sha256sum *.txt); }

build() { # tool [--no-cache]
  local t=$1; shift
  case $t in
    kiln) "$KILN" build --progress plain "$@" -t bench-cycle:app "$CTX" ;;
    docker) DOCKER_BUILDKIT=1 "${D[@]}" build --network host --progress plain "$@" \
              -t bench-cycle:app "$CTX" ;;
    podman) "${P[@]}" build --layers --network host "$@" \
              --build-arg BASE=localhost/bench-cycle:base -t localhost/bench-cycle:app "$CTX" ;;
  esac
}
run() { # tool round
  case $1 in
    kiln) "$KILN" run --rm bench-cycle:app cat /app/SUMS ;;
    docker) "${D[@]}" run --rm --network host --name "$NAME-$2" bench-cycle:app cat /app/SUMS ;;
    podman) "${P[@]}" run --rm --network host --name "$NAME-$2" localhost/bench-cycle:app cat /app/SUMS ;;
  esac
}
timed() { # out-file command...: prints the wall time in ms; a failure stops the benchmark
  local out=$1 s e; shift
  sync
  s=$(date +%s%N)
  if ! "$@" >"$out" 2>>"$LOG"; then
    echo "FAILED: $*" >&2; tail -n 20 "$out" "$LOG" >&2; exit 1
  fi
  e=$(date +%s%N)
  echo $(((e - s) / 1000000))
}
one() { # step tool round: one build and one run, recorded in B, R
  local step=$1 t=$2 i=$3 b r
  b=$(timed "$WORK/build.out" build "$t" ${NOCACHE:+--no-cache})
  cat "$WORK/build.out" >>"$LOG"
  r=$(timed "$WORK/run.out" run "$t" "$step$i")
  if ! diff <(expected) "$WORK/run.out" >/dev/null; then
    echo "FAILED: $t's image after the $step build $i does not hold the current source:" >&2
    diff <(expected) "$WORK/run.out" >&2 || true
    exit 1
  fi
  [ "$t" != docker ] || DOCKER_IMAGES+=($("${D[@]}" images -q --no-trunc bench-cycle:app))
  B[$step,$t]+=" $b"; R[$step,$t]+=" $r"; C[$step,$t]+=" $((b + r))"
}

declare -A B R C
echo "tools: ${TOOLS[*]}; $RUNS rounds per step (log: $LOG)" >&2
# Cold: no cache at all.
for i in $(seq "$RUNS"); do
  edit
  for t in "${TOOLS[@]}"; do NOCACHE=1 one cold "$t" "$i"; done
done
# Warm: each tool's cache holds the previous source; one file changes.
for t in "${TOOLS[@]}"; do build "$t" >>"$LOG" 2>&1; done
for i in $(seq "$RUNS"); do
  edit
  for t in "${TOOLS[@]}"; do one warm "$t" "$i"; done
done

median() { printf '%s\n' $1 | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
printf '\n%-5s %-7s %9s %7s %9s %13s\n' step tool "build ms" "run ms" "cycle ms" "kiln / tool"
for step in cold warm; do
  kc=$(median "${C[$step,kiln]}")
  for t in "${TOOLS[@]}"; do
    c=$(median "${C[$step,$t]}")
    printf '%-5s %-7s %9s %7s %9s %13s\n' "$step" "$t" "$(median "${B[$step,$t]}")" \
      "$(median "${R[$step,$t]}")" "$c" "$(echo "scale=3; $kc / $c" | bc)"
  done
done
for k in "${!C[@]}"; do echo "raw $k: build${B[$k]}; run${R[$k]}; cycle${C[$k]}"; done | sort >>"$LOG"
echo "(medians of $RUNS; cycle = build + run of the same round; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg))"
