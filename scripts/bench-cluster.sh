#!/usr/bin/env bash
# Cluster mode's figures (issue 17), in one command:
#
#   scripts/bench-cluster.sh
#
# Builds the example server and the load tool (release), then for 1, 2 and 3 example
# servers in cluster mode (`--redis`) on one fresh redis-server, and for one server in
# single-node mode (`--db :memory:`) for comparison, runs the same workloads with the
# clients spread evenly over the servers (client i on server i mod n: every server has
# members of the one room):
#   - fanout, as fast as the tool's window allows: deliveries/s, CPU-µs per delivery
#     (all servers' CPU over all deliveries), Redis CPU-µs per message;
#   - fanout at a fixed rate: p50/p99 latency at the same offered load for every size;
#   - saturated sends into a small room (every member sends, 8 messages in flight each):
#     acked sends/s through the Lua commit, whose per-room lane pipelines what queued.
# Every phase is bounded in count and time; everything this script started is stopped
# by its PID when it ends. Results: one JSON line per run in target/bench-cluster/
# results.jsonl, and a markdown table on stdout. Not part of the test command.
#
# Sizes (defaults in brackets):
#   CLUSTER_NODES     [1 2 3]   cluster sizes
#   CLUSTER_SINGLE    [1]       also run one server in single-node mode ("" = skip)
#   CLUSTER_CLIENTS   [120]     clients in the room (fanout runs)
#   CLUSTER_SENDERS   [12]      senders among them
#   CLUSTER_RATE      [200]     messages/s of the fixed-rate run
#   CLUSTER_SAT       [12]      clients of the saturated run (all send)
#   CLUSTER_SECS      [5]       seconds of sending per run
#   CLUSTER_PORT      [5700]    first port (servers), Redis on CLUSTER_PORT + 99
set -euo pipefail
cd "$(dirname "$0")/.."

: "${CLUSTER_NODES:=1 2 3}"
CLUSTER_SINGLE="${CLUSTER_SINGLE-1}"
: "${CLUSTER_CLIENTS:=120}"
: "${CLUSTER_SENDERS:=12}"
: "${CLUSTER_RATE:=200}"
: "${CLUSTER_SAT:=12}"
: "${CLUSTER_SECS:=5}"
: "${CLUSTER_PORT:=5700}"
REDIS_PORT=$((CLUSTER_PORT + 99))

ulimit -n 65536 2> /dev/null || ulimit -n "$(ulimit -Hn)" || true
command -v redis-server > /dev/null || { echo "redis-server is not installed" >&2; exit 1; }

OUT=target/bench-cluster
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"

cargo build --release --example server -p chat
cargo build --release -p chat-load --bin load
TARGET="${CARGO_TARGET_DIR:-target}/release"
SERVER="$TARGET/examples/server"
LOAD="$TARGET/load"

PIDS=()
REDIS_PID=""
stop_all() {
  for pid in "${PIDS[@]}" $REDIS_PID; do
    kill -TERM "$pid" 2> /dev/null || true
  done
  for pid in "${PIDS[@]}" $REDIS_PID; do
    for _ in $(seq 50); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2> /dev/null || true
  done
  PIDS=()
  REDIS_PID=""
}
trap stop_all EXIT INT TERM

start_redis() {
  local dir="$OUT/redis"
  rm -rf "$dir" && mkdir -p "$dir"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$dir" > "$dir/log" 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 100); do
    redis-cli -p "$REDIS_PORT" ping 2> /dev/null | grep -q PONG && return 0
    sleep 0.1
  done
  echo "redis-server did not start" >&2
  exit 1
}

# start_servers N [extra args...]: N example servers; sets ADDRS and PIDS.
start_servers() {
  local n=$1
  shift
  ADDRS=()
  for i in $(seq 0 $((n - 1))); do
    local port=$((CLUSTER_PORT + i))
    local log="$OUT/server-$i.log"
    "$SERVER" --addr "127.0.0.1:$port" --log warn --send-burst 1000000 --send-rate 1000000 \
      --max-connections 0 --max-connections-per-ip 0 "$@" > "$log" 2>&1 &
    PIDS+=($!)
    local up=0
    for _ in $(seq 100); do
      if grep -q "listening on" "$log" 2> /dev/null; then up=1; break; fi
      sleep 0.1
    done
    [ "$up" = 1 ] || { echo "server $i did not start: $(cat "$log")" >&2; exit 1; }
    ADDRS+=("127.0.0.1:$port")
  done
}

# run LABEL: the three workloads against the servers running now.
run() {
  local label=$1 addrs pids redis=()
  addrs=$(IFS=,; echo "${ADDRS[*]}")
  pids=$(IFS=,; echo "${PIDS[*]}")
  [ -n "$REDIS_PID" ] && redis=(--redis-pid "$REDIS_PID")
  local common=(--label "$label" --addr "$addrs" --pid "$pids" "${redis[@]}" --out "$RESULTS" --setup-secs 60)
  echo "== $label: load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  timeout 120 "$LOAD" fanout "${common[@]}" --clients "$CLUSTER_CLIENTS" --senders "$CLUSTER_SENDERS" \
    --secs "$CLUSTER_SECS" > /dev/null
  timeout 120 "$LOAD" fanout "${common[@]}" --clients "$CLUSTER_CLIENTS" --senders "$CLUSTER_SENDERS" \
    --rate "$CLUSTER_RATE" --secs "$CLUSTER_SECS" > /dev/null
  timeout 120 "$LOAD" fanout "${common[@]}" --clients "$CLUSTER_SAT" --senders "$CLUSTER_SAT" \
    --in-flight 8 --secs "$CLUSTER_SECS" > /dev/null
}

if [ -n "$CLUSTER_SINGLE" ]; then
  start_servers 1 --db :memory:
  run "single-node"
  stop_all
fi
for n in $CLUSTER_NODES; do
  start_redis
  start_servers "$n" --redis "redis://127.0.0.1:$REDIS_PORT/"
  run "cluster ×$n"
  stop_all
done

# The table: one row per run.
python3 - "$RESULTS" << 'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| servers | workload | deliveries/s | acked sends/s | server CPU-µs per delivery | Redis CPU-µs per message | p50 ms | p99 ms | lost | server CPU s (per node) |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
for r in rows:
    f = lambda v, d=1: "–" if v is None else f"{v:,.{d}f}"
    ms = lambda v: "–" if v is None else f"{v / 1000:.2f}"
    per_node = r["note"].split(". ")[0].removeprefix("node CPU s: ") if r["note"].startswith("node CPU s") else f"{r['server_cpu_s']:.2f}"
    print(f"| {r['server']} | {r['params']} | {f(r['deliveries_per_s'], 0)} | {f(r['acked_per_s'], 0)} "
          f"| {f(r.get('server_cpu_us_per_unit'), 2)} | {f(r.get('redis_cpu_us_per_msg'), 1)} "
          f"| {ms(r.get('p50_us'))} | {ms(r.get('p99_us'))} | {r['lost']} | {per_node} |")
EOF
