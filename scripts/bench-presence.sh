#!/usr/bin/env bash
# Presence that scales (issue 16): connect storms into one room, ours with protocol
# version 1 and 2 against socketioxide's connection rate (without join notices: `idle`,
# as scripts/bench.sh runs it) and its own storm (with its tutorial join notice).
#
#   scripts/bench-presence.sh            # sizes in PRESENCE_CLIENTS [1000 3000]
#
# Builds what it needs (release), then for each size and round runs each server fresh,
# pinned to core BENCH_SERVER_CPU [0], the load tool to BENCH_LOAD_CPU [1]; every run is
# bounded (--setup-secs, timeout). Results: target/bench/presence.jsonl, and the table
# on stdout (`load report`). Rounds: PRESENCE_ROUNDS [1]. PRESENCE_SIO_STORM [1]: also
# socketioxide's own storm ("" = skip; with 1,000 clients it may use its whole bound).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BENCH_IN_SESSION:-}" ] && command -v setsid > /dev/null; then
  # As scripts/bench.sh: an own session, so autogroup nice counts.
  BENCH_IN_SESSION=1 exec setsid --wait "$0" "$@"
fi
echo -10 2> /dev/null > /proc/self/autogroup || true
: "${PRESENCE_CLIENTS:=1000 3000}"
: "${PRESENCE_ROUNDS:=1}"
: "${PRESENCE_SIO_STORM=1}"
: "${BENCH_SERVER_CPU:=0}"
: "${BENCH_LOAD_CPU:=1}"
: "${BENCH_PORT:=5700}"
ulimit -n 65536 2> /dev/null || ulimit -n "$(ulimit -Hn)" || true
TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet -p chat-load
CARGO_TARGET_DIR=$TARGET/peers cargo build --release --quiet \
  --manifest-path benches/peers/rust/Cargo.toml --bin socketioxide-chat
LOAD=$TARGET/release/load
OUT=$TARGET/bench
mkdir -p "$OUT"
RESULTS="$OUT/presence.jsonl"
: > "$RESULTS"
SERVER_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill -TERM "$SERVER_PID" 2> /dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2> /dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2> /dev/null || true
    wait "$SERVER_PID" 2> /dev/null || true
    SERVER_PID=""
  fi
}
trap stop_server EXIT INT TERM
PORT=$BENCH_PORT
# run LABEL SERVER PROTO WORKLOAD ARGS...
run() {
  local label=$1 server=$2 proto=$3 workload=$4
  shift 4
  PORT=$((PORT + 1))
  local cmd
  case "$server" in
    ours) cmd=("$TARGET/release/bench-server" --addr "127.0.0.1:$PORT") ;;
    socketioxide) cmd=("$TARGET/peers/release/socketioxide-chat" --addr "127.0.0.1:$PORT") ;;
  esac
  local slog="$OUT/presence.$label.$PORT.log"
  taskset -c "$BENCH_SERVER_CPU" "${cmd[@]}" > "$slog" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do
    grep -q "listening on" "$slog" 2> /dev/null && break
    sleep 0.1
  done
  sleep 0.3
  echo "load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  timeout 150 taskset -c "$BENCH_LOAD_CPU" "$LOAD" "$workload" --label "$label" --proto "$proto" \
    --addr "127.0.0.1:$PORT" --pid "$SERVER_PID" --setup-secs 60 --out "$RESULTS" "$@" \
    > /dev/null || echo "$label $workload: the load tool failed (exit $?)" >&2
  stop_server
}
echo "start $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for _ in $(seq "$PRESENCE_ROUNDS"); do
  for n in $PRESENCE_CLIENTS; do
    run ours-v1 ours chat storm --clients "$n" --protocol-version 1
    run ours-v2 ours chat storm --clients "$n" --protocol-version 2
    # Connections without a room, for both: the rate the target compares against.
    run ours ours chat idle --clients "$n"
    run socketioxide socketioxide sio idle --clients "$n"
    if [ -n "$PRESENCE_SIO_STORM" ]; then
      run socketioxide socketioxide sio storm --clients "$n"
    fi
  done
done
echo "end $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$LOAD" report "$RESULTS"
