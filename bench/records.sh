#!/usr/bin/env bash
# Build-record benchmark: the no-op rebuild of the anchors' bigcopy context (20,000 small
# files, plus BIG_MB x 3 large ones) with build records (the default) and without
# (`--no-record`; `KILN_NO_RECORD=1` does the same), median of RUNS alternating runs
# each, and the size of the record of that COPY (the record itself plus its file set,
# which later builds over the same files share).
#
# usage: bench/records.sh        (env: BIG_MB=100, RUNS=15, WORK=/var/tmp/kiln-bench-rec)
# Needs root. Not a test: nothing here asserts timings.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SHARED=${SHARED:-$REPO/../shared}
WORK=${WORK:-/var/tmp/kiln-bench-rec}
BIG_MB=${BIG_MB:-100}
RUNS=${RUNS:-15}
CTX=$WORK/ctx
mkdir -p "$WORK"

(cd "$REPO" && cargo build --release -q -p kiln-builder)
KILN=${KILN:-${CARGO_TARGET_DIR:-$REPO/target}/release/kiln}

if [ ! -f "$CTX/.done-$BIG_MB" ]; then
  rm -rf "$CTX"; mkdir -p "$CTX"
  BIG_MB=$BIG_MB bash "$SHARED/anchors/fixtures/bigcopy/gen.sh" "$CTX"
  printf 'FROM scratch\nCOPY . /data\n' > "$CTX/Dockerfile"
  touch "$CTX/.done-$BIG_MB"
fi
echo "context: $(find "$CTX" -type f | wc -l) files, $(du -sh "$CTX" | cut -f1)"

export KILN_ROOT=$WORK/store
rm -rf "$KILN_ROOT"
k() { "$KILN" build --progress quiet -t bench:rec "$@" "$CTX" >/dev/null; }
k   # cold: writes the record and the COPY's file set
id=$("$KILN" builds ls -q | awk "NR==1")
size=$("$KILN" builds inspect "$id" | sed -n 's/^Record: *//p')

t() { local s e; s=$(date +%s%N); k "$@"; e=$(date +%s%N); echo $(( (e - s) / 1000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
: > "$WORK/with"; : > "$WORK/without"
k; k --no-record   # warm both paths
for ((i = 0; i < RUNS; i++)); do  # alternating which goes first
  if ((i % 2)); then t >> "$WORK/with"; t --no-record >> "$WORK/without"
  else t --no-record >> "$WORK/without"; t >> "$WORK/with"; fi
done
with=$(median < "$WORK/with"); without=$(median < "$WORK/without")
echo "no-op rebuild, median of $RUNS: with records ${with} us, without ${without} us," \
  "overhead $(echo "scale=1; ($with - $without) * 100 / $without" | bc)%"
echo "record of the cold build: $size"
id=$("$KILN" builds ls -q | awk "NR==1")
echo "record of a no-op rebuild: $("$KILN" builds inspect "$id" | sed -n 's/^Record: *//p')"
