#!/usr/bin/env bash
# The load benchmark of issue 7, in one command:
#
#   scripts/bench.sh
#
# Builds the load tool, our bench server and the Rust peers (release), installs the Node
# and Python peers' packages (benches/peers/, into node_modules and target/bench-venv),
# then runs every workload against every server: each server starts fresh for each
# workload, pinned to one core (taskset, BENCH_SERVER_CPU), the load tool on another
# (BENCH_LOAD_CPU). Every phase is bounded in count and time. Results: one JSON line per
# run in target/bench/results.jsonl; the tables go to stdout and between the markers of
# docs/BENCHMARKS.md. Not part of the test command (it takes ~10-15 minutes).
#
# Sizes are set by environment variables (defaults in brackets):
#   BENCH_SERVERS          [ours axum-broadcast socketioxide node flask-gevent flask-threading]
#   BENCH_FANOUT_CLIENTS   [10 100 1000]  clients in one room, senders as fast as possible
#   BENCH_SENDERS          [10]           senders in the fanout runs
#   BENCH_SECS             [5]            seconds of sending per message run
#   BENCH_SATURATED_CLIENTS [100]         the saturated run (issue 16's other tool): clients
#                                         in one room, BENCH_SENDERS of them sending, each
#                                         keeping BENCH_IN_FLIGHT [8] messages in flight
#                                         ("" = skip)
#   BENCH_LATENCY_CLIENTS  [100]          the fixed-rate latency run: clients ...
#   BENCH_LATENCY_RATE     [200]          ... and messages/s (200 × 100 = 20k deliveries/s)
#   BENCH_ROOMS            [200]          rooms workload: rooms ...
#   BENCH_ROOM_MEMBERS     [5]            ... members each ...
#   BENCH_ROOMS_RATE       [2000]         ... and total messages/s
#   BENCH_IDLE             [1000 5000]    idle connection counts
#   BENCH_JOIN             [1000]         join storm sizes
#   BENCH_DURABLE_CLIENTS  [100]          ours with the SQLite store: acked sends/s ("" = skip)
#   BENCH_FLOOR            [1]            the machine's floor for the latency run (`load floor`:
#                                         one thread writes each message to every socket,
#                                         no server; "" = skip)
#   BENCH_SETUP_SECS       [60]           bound on connecting and joining per run
#   BENCH_SERVER_CPU / BENCH_LOAD_CPU [0 / 1]
#   BENCH_PRIORITY         [1]            run in an own session with autogroup nice -10,
#                                         so other work on a shared machine takes less of
#                                         the two cores during the (bounded) runs
#   BENCH_DOC              [docs/BENCHMARKS.md]  ("" = stdout only)
set -euo pipefail
cd "$(dirname "$0")/.."

: "${BENCH_PRIORITY:=1}"
if [ "$BENCH_PRIORITY" = 1 ] && [ -z "${BENCH_IN_SESSION:-}" ] && command -v setsid > /dev/null; then
  # Autogroup scheduling weighs sessions, not processes: nice only counts in our own.
  BENCH_IN_SESSION=1 exec setsid --wait "$0" "$@"
fi
PRIORITY_NOTE="normal priority"
if [ "$BENCH_PRIORITY" = 1 ] && echo -10 2> /dev/null > /proc/self/autogroup; then
  PRIORITY_NOTE="own session, autogroup nice -10"
fi

: "${BENCH_SERVERS:=ours axum-broadcast socketioxide node flask-gevent flask-threading}"
: "${BENCH_FANOUT_CLIENTS:=10 100 1000}"
: "${BENCH_SENDERS:=10}"
: "${BENCH_SECS:=5}"
: "${BENCH_SATURATED_CLIENTS=100}"
: "${BENCH_IN_FLIGHT:=8}"
: "${BENCH_LATENCY_CLIENTS:=100}"
: "${BENCH_LATENCY_RATE:=200}"
: "${BENCH_ROOMS:=200}"
: "${BENCH_ROOM_MEMBERS:=5}"
: "${BENCH_ROOMS_RATE:=2000}"
: "${BENCH_IDLE:=1000 5000}"
: "${BENCH_JOIN:=1000}"
: "${BENCH_DURABLE_CLIENTS=100}"
: "${BENCH_FLOOR=1}"
SERVER_EXTRA=()
: "${BENCH_SETUP_SECS:=60}"
: "${BENCH_SERVER_CPU:=0}"
: "${BENCH_LOAD_CPU:=1}"
: "${BENCH_PORT:=5600}"
BENCH_DOC="${BENCH_DOC-docs/BENCHMARKS.md}"

# 5,000 connections need 5,000 descriptors on each side.
ulimit -n 65536 2> /dev/null || ulimit -n "$(ulimit -Hn)" || true

OUT=target/bench
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
log() { printf '==> %s\n' "$*" >&2; }

log "building (release): load tool, bench server, Rust peers"
cargo build --release --quiet -p chat-load
LOAD=target/release/load
PEERS_TARGET=target/peers
want() { [[ " $BENCH_SERVERS " == *" $1 "* ]]; }
if want axum-broadcast || want socketioxide; then
  CARGO_TARGET_DIR=$PEERS_TARGET cargo build --release --quiet \
    --manifest-path benches/peers/rust/Cargo.toml
fi

SKIP=""
if want node; then
  log "installing the Node peer (npm ci)"
  if ! (cd benches/peers/node && { [ -d node_modules/socket.io ] || npm ci --no-audit --no-fund --silent; }); then
    SKIP="$SKIP node"
  fi
fi
VENV=target/bench-venv
if want flask-gevent || want flask-threading; then
  log "installing the Flask-SocketIO peers (venv in $VENV)"
  if ! { [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"; } ||
    ! "$VENV/bin/pip" install --quiet --disable-pip-version-check -r benches/peers/flask/requirements.txt; then
    SKIP="$SKIP flask-gevent flask-threading"
  fi
fi

# server_cmd NAME PORT: the command line of a server, and its protocol in PROTO.
server_cmd() {
  local port=$2
  case "$1" in
    ours) PROTO=chat; CMD=(target/release/bench-server --addr "127.0.0.1:$port" "${SERVER_EXTRA[@]}") ;;
    axum-broadcast) PROTO=chat; CMD=("$PEERS_TARGET/release/axum-broadcast" --addr "127.0.0.1:$port") ;;
    socketioxide) PROTO=sio; CMD=("$PEERS_TARGET/release/socketioxide-chat" --addr "127.0.0.1:$port") ;;
    node) PROTO=sio; CMD=(env PORT="$port" node benches/peers/node/server.js) ;;
    flask-gevent) PROTO=sio; CMD=("$VENV/bin/python" benches/peers/flask/app.py --mode gevent --port "$port") ;;
    flask-threading) PROTO=sio; CMD=("$VENV/bin/python" benches/peers/flask/app.py --mode threading --port "$port") ;;
    *) echo "unknown server $1" >&2; return 1 ;;
  esac
}

SERVER_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill -TERM "$SERVER_PID" 2> /dev/null || true
    for _ in $(seq 50); do
      kill -0 "$SERVER_PID" 2> /dev/null || break
      sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2> /dev/null || true
    wait "$SERVER_PID" 2> /dev/null || true
    SERVER_PID=""
  fi
}
trap stop_server EXIT INT TERM

PORT=$BENCH_PORT
# run NAME WORKLOAD ARGS...: a fresh server, one load run, stop.
run() {
  local name=$1 workload=$2
  shift 2
  PORT=$((PORT + 1))
  server_cmd "$name" "$PORT"
  local slog="$OUT/$name.$PORT.log"
  taskset -c "$BENCH_SERVER_CPU" "${CMD[@]}" > "$slog" 2>&1 &
  SERVER_PID=$!
  local up=0
  for _ in $(seq 100); do
    if grep -q "listening on" "$slog" 2> /dev/null; then up=1; break; fi
    kill -0 "$SERVER_PID" 2> /dev/null || break
    sleep 0.1
  done
  if [ "$up" = 1 ]; then
    sleep 0.3
    timeout 300 taskset -c "$BENCH_LOAD_CPU" "$LOAD" "$workload" --label "$name" --proto "$PROTO" \
      --addr "127.0.0.1:$PORT" --pid "$SERVER_PID" --setup-secs "$BENCH_SETUP_SECS" \
      --out "$RESULTS" "$@" > /dev/null || log "$name $workload: the load tool failed (exit $?)"
  else
    log "$name did not start; see $slog"
  fi
  stop_server
}

START=$(date -u +%Y-%m-%dT%H:%M:%SZ)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
T0=$SECONDS
for name in $BENCH_SERVERS; do
  if [[ " $SKIP " == *" $name "* ]]; then
    log "skipping $name (its packages did not install)"
    continue
  fi
  log "server: $name"
  for c in $BENCH_FANOUT_CLIENTS; do
    run "$name" fanout --clients "$c" --senders "$BENCH_SENDERS" --secs "$BENCH_SECS"
  done
  for c in $BENCH_SATURATED_CLIENTS; do
    run "$name" fanout --clients "$c" --senders "$BENCH_SENDERS" --in-flight "$BENCH_IN_FLIGHT" \
      --secs "$BENCH_SECS"
  done
  run "$name" fanout --clients "$BENCH_LATENCY_CLIENTS" --senders "$BENCH_SENDERS" \
    --rate "$BENCH_LATENCY_RATE" --secs "$BENCH_SECS"
  run "$name" rooms --rooms "$BENCH_ROOMS" --members "$BENCH_ROOM_MEMBERS" \
    --rate "$BENCH_ROOMS_RATE" --secs "$BENCH_SECS"
  for n in $BENCH_IDLE; do
    run "$name" idle --clients "$n"
  done
  for n in $BENCH_JOIN; do
    run "$name" join --clients "$n"
  done
  if [ "$name" = ours ] && [ -n "$BENCH_DURABLE_CLIENTS" ]; then
    # Acked sends with the SQLite store (a fresh file; synchronous=FULL, fsync per group).
    rm -f "$OUT"/durable.db*
    SERVER_EXTRA=(--db "$OUT/durable.db")
    run "$name" durable --clients "$BENCH_DURABLE_CLIENTS" --senders "$BENCH_SENDERS" --secs "$BENCH_SECS"
    SERVER_EXTRA=()
    rm -f "$OUT"/durable.db*
  fi
done
if [ -n "$BENCH_FLOOR" ]; then
  log "the machine's floor for the latency run (no server)"
  "$LOAD" floor --clients "$BENCH_LATENCY_CLIENTS" --rate "$BENCH_LATENCY_RATE" --secs "$BENCH_SECS" \
    --server-cpu "$BENCH_SERVER_CPU" --load-cpu "$BENCH_LOAD_CPU" --out "$RESULTS" > /dev/null ||
    log "floor: the load tool failed (exit $?)"
fi
ELAPSED=$((SECONDS - T0))
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

TABLE="$OUT/table.md"
{
  echo "Produced by \`scripts/bench.sh\` on $START in ${ELAPSED} s."
  echo
  echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), Linux $(uname -r);"
  echo "load average $LOAD_BEFORE before, $LOAD_AFTER after (it counts other work on the machine and the servers'"
  echo "own threads: the Flask threading peer runs one per client)."
  echo "Each server on core $BENCH_SERVER_CPU, the load tool on core $BENCH_LOAD_CPU (taskset); $PRIORITY_NOTE."
  if [ -n "$BENCH_FLOOR" ]; then
    echo "The \`floor\` column is no server: one thread on core $BENCH_SERVER_CPU writes each message to every"
    echo "recipient's socket with plain write(2) (\`load floor\`), the lowest latency any server can reach here."
  fi
  echo "Peers: node $(node --version 2> /dev/null || echo '?'), socket.io $(sed -n 's/.*"version": "\(.*\)".*/\1/p' benches/peers/node/node_modules/socket.io/package.json 2> /dev/null | head -1),"
  echo "$("$VENV/bin/pip" freeze 2> /dev/null | grep -iE '^(flask-socketio|python-socketio|python-engineio|gevent|gevent-websocket)==' | tr '\n' ' ')"
  echo "socketioxide $(grep -A1 'name = "socketioxide"' benches/peers/rust/Cargo.lock 2> /dev/null | sed -n 's/version = "\(.*\)"/\1/p')."
  echo
  "$LOAD" report "$RESULTS"
} > "$TABLE"
cat "$TABLE"

if [ -n "$BENCH_DOC" ]; then
  begin='<!-- bench:begin -->'
  end='<!-- bench:end -->'
  if [ ! -f "$BENCH_DOC" ] || ! grep -q "$begin" "$BENCH_DOC"; then
    printf '# Benchmarks\n\n%s\n%s\n' "$begin" "$end" >> "$BENCH_DOC"
  fi
  awk -v begin="$begin" -v end="$end" -v table="$TABLE" '
    $0 == begin { print; while ((getline line < table) > 0) print line; skip = 1; next }
    $0 == end { skip = 0 }
    !skip { print }
  ' "$BENCH_DOC" > "$OUT/doc.md"
  mv "$OUT/doc.md" "$BENCH_DOC"
  log "wrote $BENCH_DOC"
fi
