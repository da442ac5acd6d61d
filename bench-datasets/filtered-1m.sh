#!/usr/bin/env bash
# Filtered search at 1M points, side by side (issue 11): shardann's filtered
# disk search at several selectivities, its unfiltered search on the same
# index, DiskANN's filtered in-memory index (diskannpy) and an exact scan of
# the matching points, on one generated data set.
#
#   bash bench-datasets/filtered-1m.sh
#
# Data: `shardann gen --docs` — 1M sift-like vectors (128-d u8, L2), and per
# point a label l1…l1000 drawn from a Zipf law (exponent 1.75) and a number
# ts uniform in 0..10^6, both independent of the vector; seeded (SEED).
#
# Env overrides (defaults in brackets):
#   DATA_DIR [/work/bench/f1m]  RESULTS_DIR [$DATA_DIR/results-<UTC time>]
#   N [1000000]  NQ [1000]  SEED [42]  THREADS [2]  ROUNDS [2]
#   LISTS [10,20,30,40,60,80,120,160]  R [64]  BUILD_L [100]  PQ_BYTES [32]
#   SKIP_DISKANN=1 to run shardann only; DISKANNPY_VENV for setup-diskannpy.sh
#   CLUSTER=label,ts also runs every filter with --cluster-codes label,ts (the
#     PQ codes copied in each field's value order; results named NAME+c)
#   ONLY=l2,ts30 runs only these filters (default: all)
#   PLANS=1 also runs every filter with each plan forced (--flat-max 0: the
#     filtered graph walk; --flat-max 10^9: PQ scores of all matches), in
#     round 1: the measurement behind the flat/graph switch point
#
# Rounds interleave the runs (unfiltered, then each filter, ROUNDS times) so
# that drift of this machine's disk and CPU falls on every run alike.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
DATA_DIR="${DATA_DIR:-/work/bench/f1m}"
RESULTS_DIR="${RESULTS_DIR:-$DATA_DIR/results-$(date -u +%Y%m%dT%H%M%SZ)}"
N="${N:-1000000}" NQ="${NQ:-1000}" SEED="${SEED:-42}" THREADS="${THREADS:-2}" ROUNDS="${ROUNDS:-2}"
LISTS="${LISTS:-10,20,30,40,60,80,120,160}" R="${R:-64}" BUILD_L="${BUILD_L:-100}" PQ_BYTES="${PQ_BYTES:-32}"
mkdir -p "$DATA_DIR" "$RESULTS_DIR"
DATA_DIR="$(realpath "$DATA_DIR")" RESULTS_DIR="$(realpath "$RESULTS_DIR")"
step() { printf '\n== %s\n' "$*" >&2; }

# name=filter; the label filters are also the DiskANN workload.
FILTERS=(
  'l1={"label": "l1"}'
  'l2={"label": "l2"}'
  'l3={"label": "l3"}'
  'l9={"label": "l9"}'
  'l35={"label": "l35"}'
  'ts10={"ts": {"$lt": 100000}}'
  'ts30={"ts": {"$lt": 300000}}'
  'ts1={"ts": {"$gte": 500000, "$lt": 510000}}'
  'l1_ts20={"$and": [{"label": "l1"}, {"ts": {"$lt": 200000}}]}'
  'l2_ts10={"$and": [{"label": "l2"}, {"ts": {"$lt": 100000}}]}'
)
LABELS=l1,l2,l3,l9,l35

step "build shardann (release)"
(cd "$REPO" && cargo build --quiet --release -p shardann)
BIN="$RESULTS_DIR/shardann"
cp "$REPO/target/release/shardann" "$BIN"

cd "$DATA_DIR"
if [[ ! -s docs.jsonl || ! -s base.u8bin || ! -s query.u8bin ]]; then
  step "generate: n=$N queries=$NQ seed=$SEED, with documents"
  "$BIN" gen --n "$N" --queries "$NQ" --seed "$SEED" --docs --out .
fi
if ! "$BIN" verify index >/dev/null 2>&1; then
  step "build the index with documents and filter fields label, ts"
  rm -rf index
  /usr/bin/time -v "$BIN" build --docs docs.jsonl --base base.u8bin --filter-fields label,ts \
    --out index --max-degree "$R" --build-list "$BUILD_L" --pq-bytes "$PQ_BYTES" --threads "$THREADS" \
    2> "$RESULTS_DIR/build.time" | tee "$RESULTS_DIR/build.log"
fi
mkdir -p gt
[[ -s gt/gt-all.bin ]] || "$BIN" groundtruth --base base.u8bin --queries query.u8bin --k 10 --out gt/gt-all.bin
for f in "${FILTERS[@]}"; do
  name="${f%%=*}" json="${f#*=}"
  [[ -s "gt/gt-$name.bin" ]] || "$BIN" groundtruth --base base.u8bin --queries query.u8bin --k 10 \
    --filter "$json" --index index --out "gt/gt-$name.bin"
done

for round in $(seq 1 "$ROUNDS"); do
  step "round $round: unfiltered"
  "$BIN" bench --index index --queries query.u8bin --gt gt/gt-all.bin --list "$LISTS" \
    --threads "$THREADS" --json "$RESULTS_DIR/r$round-all.json" | tail -n +1
  for f in "${FILTERS[@]}"; do
    name="${f%%=*}" json="${f#*=}"
    [[ -z "${ONLY:-}" || ",$ONLY," == *",$name,"* ]] || continue
    step "round $round: $name $json"
    "$BIN" bench --index index --queries query.u8bin --gt "gt/gt-$name.bin" --list "$LISTS" \
      --threads "$THREADS" --filter "$json" --json "$RESULTS_DIR/r$round-$name.json"
    if [[ -n "${CLUSTER:-}" ]]; then
      step "round $round: $name $json, --cluster-codes $CLUSTER"
      "$BIN" bench --index index --queries query.u8bin --gt "gt/gt-$name.bin" --list "$LISTS" \
        --threads "$THREADS" --filter "$json" --cluster-codes "$CLUSTER" \
        --json "$RESULTS_DIR/r$round-$name+c.json"
    fi
    if [[ "$round" == 1 && "${PLANS:-0}" == 1 ]]; then
      for forced in graph:0 flat:1000000000; do
        step "round $round: $name forced ${forced%%:*}"
        "$BIN" bench --index index --queries query.u8bin --gt "gt/gt-$name.bin" --list "$LISTS" \
          --threads "$THREADS" --filter "$json" --flat-max "${forced#*:}" \
          --json "$RESULTS_DIR/plan-${forced%%:*}-$name.json"
      done
    fi
  done
done

if [[ "${SKIP_DISKANN:-0}" != 1 ]]; then
  step "DiskANN filtered in-memory index and exact scan"
  PY="$(bash "$HERE/setup-diskannpy.sh" | tail -n 1)"
  "$PY" "$HERE/filtered_compare.py" --base base.u8bin --queries query.u8bin --docs docs.jsonl \
    --labels "$LABELS" --gt-dir gt --workdir "$DATA_DIR/diskann" --R "$R" --build-L "$BUILD_L" \
    --filter-L "$BUILD_L" --threads "$THREADS" --lists "$LISTS" --json "$RESULTS_DIR/diskann.json" \
    | tee "$RESULTS_DIR/diskann.txt"
fi

step "summary"
python3 "$HERE/filtered_summary.py" "$RESULTS_DIR" | tee "$RESULTS_DIR/summary.md"
