#!/usr/bin/env bash
# End-to-end shardann vs DiskANN (diskannpy) comparison on 1M sift-like
# vectors (128-d u8, L2). See bench-datasets/COMPARE.md.
#
#   bash bench-datasets/compare-1m.sh
#
# Env overrides (defaults in brackets):
#   DATA_DIR     generated data set              [/tmp/shardann-1m/data]
#   WORK_DIR     indexes and scratch             [/tmp/shardann-1m/work]
#   RESULTS_DIR  JSON reports + logs             [/tmp/shardann-1m/results-<UTC time>]
#   THREADS [2]  R [64]  BUILD_L [100]  ALPHA [1.2]  PQ_BYTES [32]  BEAM [4]  K [10]
#   LISTS [10,20,40,80,160]  N [1000000]  NQ [10000]  SEED [42]
#   DROP_CACHES  1 = sync + drop the page cache before each search phase (root)
#   DISKANNPY_VENV  passed to setup-diskannpy.sh
#
# Data and indexes stay outside the repo; nothing here writes into the tree.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"

DATA_DIR="${DATA_DIR:-/tmp/shardann-1m/data}"
WORK_DIR="${WORK_DIR:-/tmp/shardann-1m/work}"
RESULTS_DIR="${RESULTS_DIR:-/tmp/shardann-1m/results-$(date -u +%Y%m%dT%H%M%SZ)}"
THREADS="${THREADS:-2}" R="${R:-64}" BUILD_L="${BUILD_L:-100}" ALPHA="${ALPHA:-1.2}"
PQ_BYTES="${PQ_BYTES:-32}" BEAM="${BEAM:-4}" K="${K:-10}" LISTS="${LISTS:-10,20,40,80,160}"
N="${N:-1000000}" NQ="${NQ:-10000}" SEED="${SEED:-42}"
DROP_CACHES="${DROP_CACHES:-0}"

mkdir -p "$DATA_DIR" "$WORK_DIR" "$RESULTS_DIR"
# Absolute paths: the shardann commands run from the repo root.
DATA_DIR="$(realpath "$DATA_DIR")" WORK_DIR="$(realpath "$WORK_DIR")" RESULTS_DIR="$(realpath "$RESULTS_DIR")"
step() { printf '\n== %s\n' "$*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
drop_caches() {
  if [[ "$DROP_CACHES" == 1 ]]; then
    sync && echo 3 > /proc/sys/vm/drop_caches && echo "page cache dropped" >&2
  fi
}

BASE="$DATA_DIR/base.u8bin" QUERIES="$DATA_DIR/query.u8bin" GT="$DATA_DIR/gt100.bin"

step "build shardann (release)"
(cd "$REPO" && cargo build --release -p shardann)
shardann() { (cd "$REPO" && cargo run --quiet --release -p shardann -- "$@"); }

if [[ ! -s "$BASE" || ! -s "$QUERIES" ]]; then
  step "generate sift-like data: n=$N queries=$NQ seed=$SEED"
  shardann gen --preset sift-like --n "$N" --queries "$NQ" --seed "$SEED" --out "$DATA_DIR"
fi
if [[ ! -s "$GT" ]]; then
  step "exact ground truth (k=100)"
  shardann groundtruth --base "$BASE" --queries "$QUERIES" --k 100 --out "$GT"
fi

step "shardann build"
SH_INDEX="$WORK_DIR/shardann-index"
rm -rf "$SH_INDEX"
t0=$(now)
shardann build --base "$BASE" --metric l2 --out "$SH_INDEX" --max-degree "$R" \
  --build-list "$BUILD_L" --alpha "$ALPHA" --pq-bytes "$PQ_BYTES" --threads "$THREADS" \
  2> >(tee "$RESULTS_DIR/shardann-build.log" >&2)
SH_BUILD_S=$(elapsed "$t0" "$(now)")
SH_INDEX_BYTES=$(du -sb "$SH_INDEX" | cut -f1)

step "shardann bench"
drop_caches
shardann bench --index "$SH_INDEX" --queries "$QUERIES" --gt "$GT" --k "$K" --list "$LISTS" \
  --beam "$BEAM" --threads "$THREADS" --json "$RESULTS_DIR/shardann.json" \
  | tee "$RESULTS_DIR/shardann-bench.txt"

step "diskannpy setup"
PY="$(bash "$HERE/setup-diskannpy.sh" | tail -n 1)"

step "diskannpy build + search"
drop_caches   # O_DIRECT makes this moot for DiskANN's node reads; kept for symmetry
"$PY" "$HERE/diskann_compare.py" --base "$BASE" --queries "$QUERIES" --gt "$GT" --metric l2 \
  --R "$R" --build-L "$BUILD_L" --alpha "$ALPHA" --pq-bytes "$PQ_BYTES" --threads "$THREADS" \
  --beam "$BEAM" --k "$K" --lists "$LISTS" --cache-nodes 0 \
  --workdir "$WORK_DIR/diskann" --json "$RESULTS_DIR/diskann.json" \
  | tee "$RESULTS_DIR/diskann-bench.txt"
cp "$WORK_DIR/diskann/build.log" "$RESULTS_DIR/diskann-build.log"

step "summary"
python3 - "$RESULTS_DIR" "$SH_BUILD_S" "$SH_INDEX_BYTES" <<'EOF'
import json, sys
from pathlib import Path

out, sh_build, sh_bytes = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
dk = json.loads((out / "diskann.json").read_text())
try:
    sh = json.loads((out / "shardann.json").read_text())
except (OSError, ValueError) as e:
    sh = {}
    print(f"(shardann.json unreadable: {e})")

def pick(d, *keys):
    for k in keys:
        if isinstance(d, dict) and d.get(k) is not None:
            return d[k]
    return None

def by_list(report):
    rows = {}
    for r in pick(report, "runs", "results") or []:
        L = pick(r, "list", "L", "search_list")
        if L is not None:
            rows[int(L)] = r
    return rows

print(f"build wall clock  shardann {sh_build:8.1f} s   diskannpy {dk['build_seconds']:8.1f} s")
print(f"index on disk     shardann {sh_bytes / 2**20:8.1f} MiB diskannpy {dk['index_bytes'] / 2**20:8.1f} MiB"
      f" (of which ann_disk.index {dk['disk_index_bytes'] / 2**20:.1f} MiB)")
s_rows, d_rows = by_list(sh), by_list(dk)
print(f"{'L':>5} | {'recall sh':>9} {'recall dk':>9} | {'QPS sh':>9} {'QPS dk':>9} | {'p99us sh':>9} {'p99us dk':>9}")
fmt = lambda v, spec: format(v, spec) if isinstance(v, (int, float)) else f"{'-':>{spec.split('.')[0]}}"
for L in sorted(set(s_rows) | set(d_rows)):
    s, d = s_rows.get(L, {}), d_rows.get(L, {})
    s_lat, d_lat = pick(s, "latency_us") or {}, pick(d, "latency_us") or {}
    print(f"{L:>5} | {fmt(pick(s, 'recall_at_k', 'recall'), '9.4f')} {fmt(pick(d, 'recall_at_k'), '9.4f')} | "
          f"{fmt(pick(s, 'qps'), '9.1f')} {fmt(pick(d, 'qps'), '9.1f')} | "
          f"{fmt(pick(s_lat, 'p99'), '9.0f')} {fmt(pick(d_lat, 'p99'), '9.0f')}")
(out / "summary.json").write_text(json.dumps(
    {"shardann_build_seconds": sh_build, "shardann_index_bytes": sh_bytes,
     "diskann_build_seconds": dk["build_seconds"], "diskann_index_bytes": dk["index_bytes"]}, indent=2) + "\n")
EOF
echo "results in $RESULTS_DIR" >&2
