#!/usr/bin/env bash
# Measures what `shardann plan` predicts, on 1M sift-like points (issue #13
# item 3): one unsharded build (wall time, peak RSS, bytes on disk), the
# same points as 4 shards built by 4 separate `build --plan DIR --shard i`
# processes (two at a time), and `shardann bench` on the unsharded index
# (reads per query and QPS at recall@10 0.95, 2 threads and 8 in flight).
# Prints `shardann plan`'s predictions for the same shapes beside them.
#
#   bash bench-datasets/capacity-1m.sh [WORK_DIR]     (default /tmp/shardann-capacity)
#
# Takes about 20 minutes on 2 cores. Results in WORK_DIR/results/.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$HERE")"
WORK="${1:-/tmp/shardann-capacity}"
N="${N:-1000000}" NQ="${NQ:-1000}" SEED="${SEED:-42}" THREADS="${THREADS:-2}"
LISTS="${LISTS:-14,16,18,20,24,28}" ROUNDS="${ROUNDS:-2}"
DATA="$WORK/data" OUT="$WORK/results"
mkdir -p "$DATA" "$OUT"

# shellcheck source=timed.sh
source "$HERE/timed.sh"

BASE="$DATA/base.u8bin" Q="$DATA/query.u8bin" GT="$DATA/gt100.bin"
sift_like_data
: > "$OUT/timings.txt"

step "unsharded build, $THREADS threads"
rm -rf "$WORK/idx1m"
timed build-1m "$SA" build --base "$BASE" --metric l2 --out "$WORK/idx1m" --max-degree 64 \
  --build-list 100 --pq-bytes 32 --threads "$THREADS"
du -sb "$WORK/idx1m" | tee "$OUT/du-1m.txt"

step "plan-only, 4 shards"
rm -rf "$WORK/sh4"
timed plan-only "$SA" build --base "$BASE" --metric l2 --out "$WORK/sh4" --shards 4 --plan-only \
  --max-degree 64 --build-list 100 --pq-bytes 32 --threads "$THREADS"
step "4 shard builds, two at a time, 1 thread each"
for pair in "0 1" "2 3"; do
  for i in $pair; do
    timed "shard-$i" "$SA" build --plan "$WORK/sh4" --shard "$i" --base "$BASE" --threads 1 &
  done
  wait
done
du -sb "$WORK"/sh4/shard-* | tee "$OUT/du-sh4.txt"

for r in $(seq 1 "$ROUNDS"); do
  step "bench round $r: $THREADS threads"
  "$SA" bench --index "$WORK/idx1m" --queries "$Q" --gt "$GT" --k 10 --list "$LISTS" --beam 4 \
    --threads "$THREADS" --json "$OUT/b1m-t$THREADS-r$r.json" > "$OUT/b1m-t$THREADS-r$r.txt"
  step "bench round $r: 8 in flight"
  "$SA" bench --index "$WORK/idx1m" --queries "$Q" --gt "$GT" --k 10 --list "$LISTS" --beam 4 \
    --threads "$THREADS" --concurrency 8 --json "$OUT/b1m-c8-r$r.json" > "$OUT/b1m-c8-r$r.txt"
done

step "plan's predictions"
for shards in 1 4; do
  "$SA" plan --points "$N" --dim 128 --type u8 --metric l2 --pq-bytes 32 --max-degree 64 \
    --ram-per-node 24GiB --cores "$THREADS" --shards "$shards" --json > "$OUT/plan-$shards.json"
done
cat "$OUT/timings.txt"
echo "results in $OUT"
