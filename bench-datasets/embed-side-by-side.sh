#!/usr/bin/env bash
# Embedding throughput, side by side and interleaved: `shardann embed`
# (Rust, candle) against sentence-transformers (PyTorch CPU, st_embed.py),
# all-MiniLM-L6-v2, same texts (the "text" field of the first N manpages-dev
# passages, as base.fbin was made), same threads, max 256 word pieces.
#
#   bench-datasets/embed-side-by-side.sh          # N=2048 ROUNDS=3 BATCHES="16 64"
#
# Each round runs, per batch size, both engines (order alternates by round)
# and records the 1-min load average before and after each run. shardann
# gets a fresh --out each run; its docs/s is from its own report, whose clock
# includes model loading and writing files (the fixed cost, measured on a
# 1-document input, is shown apart). st_embed.py times encode() only.
# docs/cpu-s (user+sys) is less sensitive to other load than docs/s.
# Needs the venv /root/.venvs/st, jq and bc.
# Writes $OUT/raw.jsonl, $OUT/table.txt, $OUT/st-queries.json.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
N=${N:-2048} ROUNDS=${ROUNDS:-3} BATCHES=${BATCHES:-"16 64"} THREADS=${THREADS:-2}
BIN=${BIN:-/tmp/shardann-embed-bin}
MODEL=${MODEL:-$HERE/../models/all-MiniLM-L6-v2}
DATA=${DATA:-/work/shared/datasets/manpages-dev}
PY=${PY:-/root/.venvs/st/bin/python}
OUT=${OUT:-/work/bench/embed-sbs} TMP=${TMP:-/tmp/embed-sbs}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
mkdir -p "$OUT" "$TMP"
INPUT=$TMP/corpus-$N.jsonl
head -n "$N" "$DATA/corpus.jsonl" > "$INPUT"
head -n 1 "$DATA/corpus.jsonl" > "$TMP/one.jsonl"
RAW=$OUT/raw.jsonl; : > "$RAW"
load1() { cut -d' ' -f1 /proc/loadavg; }

shardann() {  # round batch input -> one JSON line
  local dir=$TMP/out-r$1-b$2-$RANDOM; rm -rf "$dir"
  local t0=$(date +%s.%N)
  local msg=$(/usr/bin/time -f '%U %S' -o "$TMP/cpu" "$BIN" embed -q --model "$MODEL" --input "$3" --field text --out "$dir" \
              --batch "$2" --threads "$THREADS" | head -n 1)
  local wall=$(echo "$(date +%s.%N) - $t0" | bc)
  local cpu=$(awk '{print $1 + $2}' "$TMP/cpu")
  rm -rf "$dir"
  # "embedded 2048 documents in 71.2 s (28.8 docs/s, 2 threads)"
  echo "$msg" | sed -E "s/^embedded ([0-9]+) documents in ([0-9.]+) s \(([0-9.]+) docs\/s.*/{\"docs\": \1, \"seconds\": \2, \"docs_per_s\": \3}/" |
    jq -c --arg r "$1" --arg b "$2" --arg w "$wall" --arg c "$cpu" \
      '. + {engine: "shardann", round: ($r|tonumber), batch: ($b|tonumber), wall_s: ($w|tonumber), cpu_seconds: ($c|tonumber)}'
}

echo "shardann fixed cost (1 document, batch 16):" >&2
for i in 1 2 3; do shardann 0 16 "$TMP/one.jsonl" | jq -c '.engine = "shardann-1doc"' >> "$RAW"; done

for r in $(seq 1 "$ROUNDS"); do
  echo "round $r: $(uptime)" | tee -a "$OUT/uptime.log" >&2
  for b in $BATCHES; do
    tag() { jq -c --arg r "$r" --arg l "$1" --arg e "$(load1)" \
              '. + {round: ($r|tonumber), load1: ($l|tonumber), load1_end: ($e|tonumber)}' <<< "$2" >> "$RAW"; }
    run_rs() { local l=$(load1) j; j=$(shardann "$r" "$b" "$INPUT"); tag "$l" "$j"; }
    run_st() { local l=$(load1) j; j=$("$PY" "$HERE/st_embed.py" --model "$MODEL" --input "$INPUT" \
                 --n "$N" --batch "$b" --threads "$THREADS" | jq -c '.engine = "st"'); tag "$l" "$j"; }
    if (( r % 2 )); then run_rs; run_st; else run_st; run_rs; fi
    tail -n 2 "$RAW" >&2
  done
done

echo "st queries: $(uptime)" | tee -a "$OUT/uptime.log" >&2
"$PY" "$HERE/st_embed.py" --model "$MODEL" --input "$DATA/queries.jsonl" --threads "$THREADS" \
  --queries | tee "$OUT/st-queries.json" >&2

python3 - "$RAW" > "$OUT/table.txt" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
fixed = statistics.median(r["wall_s"] for r in rows if r["engine"] == "shardann-1doc")
print(f"shardann fixed cost (load model, write files; median of 3 one-document runs): {fixed:.2f} s")
print(f"{'engine':9} {'batch':>5} {'round docs/s (load1 before-end)':52} {'median':>7} {'w/o fixed':>9} {'docs/cpu-s':>10}")
for b in sorted({r["batch"] for r in rows if r["engine"] != "shardann-1doc"}):
    for e in ("shardann", "st"):
        rs = sorted((r for r in rows if r["engine"] == e and r["batch"] == b), key=lambda r: r["round"])
        cells = "  ".join(f"{r['docs_per_s']:5.1f} ({r['load1']:.1f}-{r['load1_end']:.1f})" for r in rs)
        med = statistics.median(r["docs_per_s"] for r in rs)
        extra = f"{statistics.median(r['docs'] / (r['seconds'] - fixed) for r in rs):9.1f}" if e == "shardann" else " " * 9
        cpu = statistics.median(r["docs"] / r["cpu_seconds"] for r in rs)
        print(f"{e:9} {b:5} {cells:52} {med:7.1f} {extra} {cpu:10.1f}")
EOF
cat "$OUT/table.txt"
