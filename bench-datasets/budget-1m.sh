#!/usr/bin/env bash
# Measures `build --memory-budget` (issue #13 item 1) on sift-like points:
# one build of the whole graph and one under a budget that forces cells,
# each under /usr/bin/time -v (wall time, peak RSS), then `shardann bench`
# on both, interleaved, at the same list sizes (recall@10, reads per query).
#
#   bash bench-datasets/budget-1m.sh [WORK_DIR]     (default /tmp/shardann-budget)
#
# BUDGET (default 512MiB) is the budget; LAYOUT (v2) the layout asked of
# both builds. At 1M, 512MiB forces 3 cells and still fits a v2 layout;
# 400MiB forces v1. Takes about 25 minutes on 2 cores. Results in
# WORK_DIR/results/.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$HERE")"
WORK="${1:-/tmp/shardann-budget}"
N="${N:-1000000}" NQ="${NQ:-1000}" SEED="${SEED:-42}" THREADS="${THREADS:-2}"
BUDGET="${BUDGET:-512MiB}" LAYOUT="${LAYOUT:-v2}"
LISTS="${LISTS:-14,16,18,20,24,28}" ROUNDS="${ROUNDS:-2}"
DATA="$WORK/data" OUT="$WORK/results"
mkdir -p "$DATA" "$OUT"

# shellcheck source=timed.sh
source "$HERE/timed.sh"

BASE="$DATA/base.u8bin" Q="$DATA/query.u8bin" GT="$DATA/gt100.bin"
sift_like_data
touch "$OUT/timings.txt"
COMMON=(--base "$BASE" --metric l2 --max-degree 64 --build-list 100 --pq-bytes 32
        --layout "$LAYOUT" --threads "$THREADS")

if [[ ! -s "$WORK/whole/CURRENT" ]]; then
  step "whole-graph build"
  rm -rf "$WORK/whole"
  timed build-whole "$SA" build "${COMMON[@]}" --out "$WORK/whole"
fi
if [[ ! -s "$WORK/budget/CURRENT" ]]; then
  step "build under --memory-budget $BUDGET"
  rm -rf "$WORK/budget"
  timed build-budget "$SA" build "${COMMON[@]}" --out "$WORK/budget" --memory-budget "$BUDGET"
fi
grep -h "memory budget\|wall time\|peak memory" "$OUT"/build-*.log || true

for r in $(seq 1 "$ROUNDS"); do
  for idx in whole budget; do
    step "bench round $r: $idx"
    "$SA" bench --index "$WORK/$idx" --queries "$Q" --gt "$GT" --k 10 --list "$LISTS" --beam 4 \
      --threads "$THREADS" --json "$OUT/bench-$idx-r$r.json" > "$OUT/bench-$idx-r$r.txt"
  done
done
cat "$OUT/timings.txt"
echo "results in $OUT"
