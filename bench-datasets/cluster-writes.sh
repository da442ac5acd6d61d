#!/bin/bash
# Writes through a 3-node etcd cluster (every node serving both shards, so
# every write is applied on 3 replicas) against one node alone: 100K
# sift-like documents in 2 shards, then 20,000 new documents sent with
# `shardann upsert --batch 100 --concurrency 4`; rounds interleaved.
#   bench-datasets/cluster-writes.sh [WORK_DIR] [ROUNDS]
# Needs a release build (cargo build --release -p shardann), python3, curl.
set -e
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/tmp/shardann-cluster-writes}
ROUNDS=${2:-2}
mkdir -p "$WORK"; cd "$WORK"
cp "$ROOT/target/release/shardann" ./shardann
B=$WORK/shardann
ETCD=$(bash "$ROOT/bench-datasets/fetch_etcd.sh" | tail -1)
[ -d g ] || $B gen --preset sift-like --n 100000 --queries 100 --out g --docs -q
[ -d g2 ] || $B gen --preset sift-like --n 20000 --queries 10 --seed 7 --out g2 -q
[ -f new.jsonl ] || python3 - <<'PY'
import json, struct
b = open('g2/base.u8bin', 'rb').read()
n, d = struct.unpack('<II', b[:8])
with open('new.jsonl', 'w') as f:
    for i in range(n):
        f.write(json.dumps({"id": 1000000 + i, "vector": list(b[8 + i * d:8 + (i + 1) * d]), "label": "new"}) + "\n")
PY
[ -d idx ] || $B build --base g/base.u8bin --docs g/docs.jsonl --filter-fields label --out idx --shards 2 --partition random -q
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
toml() { # id port dir [etcd]
  printf 'node_id = "%s"\nlisten = "127.0.0.1:%s"\nindex_dir = "%s"\nshards = [0, 1]\nexecutors = 1\ncluster_token = "t"\n' "$1" "$2" "$3"
  [ -n "$4" ] && printf 'etcd = ["%s"]\ncluster = "cw"\nlease_ttl_s = 2\n' "$4"
  printf '[writes]\nmerge_fraction = 0.0\n'
}
wait_up() { for _ in $(seq 600); do curl -sf "http://127.0.0.1:$1/healthz" >/dev/null && return; sleep 0.1; done; echo "node on $1 did not come up"; exit 1; }
load() { # port label
  t0=$(date +%s.%N)
  $B upsert --server "http://127.0.0.1:$1" --docs new.jsonl --batch 100 --concurrency 4 -q > /dev/null
  t1=$(date +%s.%N)
  python3 -c "print('$2: 20000 upserts in %.2f s = %.0f docs/s' % ($t1 - $t0, 20000 / ($t1 - $t0)))"
}
PIDS=""
trap 'kill $PIDS 2>/dev/null || true' EXIT
for round in $(seq "$ROUNDS"); do
  rm -rf s1; cp -r idx s1; P=$(port); toml s1 "$P" "$WORK/s1" > s1.toml
  $B serve --config s1.toml > s1.log 2>&1 & PIDS="$!"; wait_up "$P"
  load "$P" "round $round: 1 node"
  kill $PIDS; wait $PIDS 2>/dev/null || true
  rm -rf e c1 c2 c3; EP=$(port); PP=$(port)
  "$ETCD" --name e --data-dir e --listen-client-urls "http://127.0.0.1:$EP" --advertise-client-urls "http://127.0.0.1:$EP" \
    --listen-peer-urls "http://127.0.0.1:$PP" --initial-advertise-peer-urls "http://127.0.0.1:$PP" \
    --initial-cluster "e=http://127.0.0.1:$PP" > etcd.log 2>&1 & PIDS="$!"
  sleep 2
  $B cluster init --etcd "http://127.0.0.1:$EP" --name cw --index idx > /dev/null
  PORTS=""
  for n in c1 c2 c3; do
    cp -r idx $n; P=$(port); toml $n "$P" "$WORK/$n" "http://127.0.0.1:$EP" > $n.toml
    $B serve --config $n.toml > $n.log 2>&1 & PIDS="$PIDS $!"; PORTS="$PORTS $P"
  done
  for P in $PORTS; do wait_up "$P"; done
  sleep 2
  load "$(echo $PORTS | cut -d' ' -f1)" "round $round: 3 nodes on etcd, 3 replicas per shard"
  for P in $PORTS; do   # every replica holds the same records
    curl -s "http://127.0.0.1:$P/healthz" | python3 -c 'import json,sys; h=json.load(sys.stdin); print("  last LSN per shard", {s: w["last_lsn"] for s, w in h["writes"].items()}, "primaries", h["coordination"]["primaries"])'
  done
  kill $PIDS; wait $PIDS 2>/dev/null || true; PIDS=""
done
