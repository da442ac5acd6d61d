# Sourced by the build benchmarks (capacity-1m.sh, budget-1m.sh): finds the
# release binary and defines `step` (a dated heading) and `timed LABEL CMD…`,
# which runs CMD under /usr/bin/time -v into $OUT/LABEL.{log,time} and
# appends "LABEL wall_s maxrss_kib" to $OUT/timings.txt, and `sift_like_data`,
# which makes $BASE, $Q and $GT (N, NQ, SEED) unless they exist. Needs REPO and OUT.
(cd "$REPO" && cargo build --release -p shardann --quiet)
SA="$REPO/target/release/shardann"
[[ -n "${CARGO_TARGET_DIR:-}" ]] && SA="$CARGO_TARGET_DIR/release/shardann"
step() { printf '\n== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
timed() {
  local label="$1"; shift
  /usr/bin/time -v -o "$OUT/$label.time" "$@" > "$OUT/$label.log" 2>&1
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$OUT/$label.time")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$OUT/$label.time")
  echo "$label $wall $rss" | tee -a "$OUT/timings.txt"
}
sift_like_data() {
  if [[ ! -s "$BASE" ]]; then
    step "gen $N sift-like points"
    "$SA" gen --preset sift-like --n "$N" --queries "$NQ" --seed "$SEED" --out "$DATA"
  fi
  if [[ ! -s "$GT" ]]; then
    step "ground truth"
    "$SA" groundtruth --base "$BASE" --queries "$Q" --k 100 --out "$GT"
  fi
}
