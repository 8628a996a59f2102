#!/usr/bin/env bash
# Garbage-collection benchmark: `kiln prune` on a store of RECORDS (1000) cache records,
# against BuildKit's ~15 s of store lock per 1,000 records (moby/buildkit#4401). The store
# is filled by RECORDS small builds (`FROM scratch`, `COPY f /f` with f different each
# time: one record, one blob and one snapshot per build), then measured:
#   du         `kiln du` (reads every record, walks the store)
#   dry-run    `kiln prune --dry-run`
#   lru        `kiln prune --max-used-space <a third of the store>` (unreferenced blobs,
#              then least recently used records, down to a size)
#   all        `kiln prune` (everything left)
# Prints wall times in ms and the GC lock hold time `kiln prune --verbose` reports.
#
# usage: bench/gc.sh     (env: RECORDS=1000, WORK=/var/tmp/kiln-bench-gc, KILN=<binary>)
# Not a test: nothing here asserts timings. Removes its store at the end.
set -euo pipefail
shopt -s inherit_errexit
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
WORK=${WORK:-/var/tmp/kiln-bench-gc}
RECORDS=${RECORDS:-1000}
if [ -z "${KILN:-}" ]; then
    (cd "$REPO" && nice -n 10 cargo build --release -q -p kiln-builder)
    KILN=$REPO/target/release/kiln
fi
rm -rf "$WORK"
mkdir -p "$WORK/ctx"
export KILN_ROOT=$WORK/store
trap 'rm -rf "$WORK"' EXIT
printf 'FROM scratch\nCOPY f /f\n' >"$WORK/ctx/Dockerfile"
ms() { date +%s%3N; }

t0=$(ms)
for i in $(seq 1 "$RECORDS"); do
    echo "record $i $RANDOM" >"$WORK/ctx/f"
    "$KILN" build --progress quiet "$WORK/ctx" >/dev/null
done
t1=$(ms)
records=$(find "$KILN_ROOT/cache" -name '*.json' | wc -l)
echo "filled: $records cache records in $((t1 - t0)) ms ($(du -sb "$KILN_ROOT" | cut -f1) bytes)"

t0=$(ms); "$KILN" du >"$WORK/du.txt"; t1=$(ms)
echo "du: $((t1 - t0)) ms ($(grep -c 'COPY f /f' "$WORK/du.txt") records listed)"
t0=$(ms); "$KILN" prune --dry-run >/dev/null; t1=$(ms)
echo "dry-run: $((t1 - t0)) ms"
total=$(awk '/^Total:/ {print $2}' "$WORK/du.txt")
used=$(du -sb "$KILN_ROOT" | cut -f1)
half=$((used / 3))
t0=$(ms)
out=$("$KILN" prune -f --verbose --min-free-space 0 --max-used-space "$half")
t1=$(ms)
echo "lru (to $half of $used bytes; build cache $total): $((t1 - t0)) ms, $(grep -c '^[0-9a-f]\{12\}$' <<<"$out") records removed, $(grep 'Total reclaimed' <<<"$out"), $(grep 'GC lock held' <<<"$out")"
t0=$(ms)
out=$("$KILN" prune -f --verbose)
t1=$(ms)
echo "all: $((t1 - t0)) ms, $(grep -c '^[0-9a-f]\{12\}$' <<<"$out") records removed, $(grep 'Total reclaimed' <<<"$out"), $(grep 'GC lock held' <<<"$out")"
echo "left: $(find "$KILN_ROOT/cache" -name '*.json' | wc -l) records, $(du -sb "$KILN_ROOT" | cut -f1) bytes"
