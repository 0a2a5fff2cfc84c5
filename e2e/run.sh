#!/usr/bin/env bash
# Browser tests of the chat page (scripts/test runs this).
#
# Debian's chromium driven by playwright-core from npm (no browser download), against the
# real example server on a free loopback port. Installs what is missing: chromium (apt),
# node and npm (apt), the npm packages (npm ci, from package-lock.json).
#
#   e2e/run.sh                      all tests
#   e2e/run.sh tests/05-dm.test.mjs one file (paths relative to e2e/)
#
# Environment: CHROMIUM (default /usr/bin/chromium), E2E_TIMEOUT_MS (per expected state,
# default 15000), CARGO_TARGET_DIR (where cargo puts the server).
set -euo pipefail
cd "$(dirname "$0")"
E2E="$(pwd)"
ROOT="$(cd .. && pwd)"

say() { printf '[e2e] %s\n' "$*"; }

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    say "missing $*: install it (apt-get install $*) or run as root"
    exit 1
  fi
  say "installing $* (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
export CHROMIUM
if [ ! -x "$CHROMIUM" ]; then
  apt_install chromium
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt_install nodejs npm
fi
# 15-cluster runs two servers on one Redis.
if ! command -v redis-server >/dev/null; then
  apt_install redis-server
fi
if [ ! -d node_modules/playwright-core ] || [ ! -d node_modules/ws ] \
  || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi

say "building the example servers and chat-cli"
(cd "$ROOT" && cargo build --quiet --example server --example host_auth)
# 15-cluster drives the real chat-cli.
(cd "$ROOT" && cargo build --quiet -p chat-cli --bin chat-cli)
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
export CHAT_SERVER_BIN="$TARGET_DIR/debug/examples/server"
export CHAT_HOST_AUTH_BIN="$TARGET_DIR/debug/examples/host_auth"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/chat-e2e.XXXXXX")"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The shared server: port 0 (the OS picks a free port), read back from its first line.
# CHAT_DB keeps its database (if it has one) out of the work tree.
CHAT_DB="$WORK/chat.db" CHAT_LOG="${CHAT_LOG:-warn}" NO_COLOR=1 \
  "$CHAT_SERVER_BIN" --addr 127.0.0.1:0 >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
URL=""
for _ in $(seq 1 300); do
  URL="$(sed -n 's#^listening on \(http://[^ ]*\)$#\1#p' "$WORK/server.log" | head -n1)"
  [ -n "$URL" ] && break
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    say "the server exited:"
    cat "$WORK/server.log"
    exit 1
  fi
  sleep 0.1
done
if [ -z "$URL" ]; then
  say "the server did not start within 30 s:"
  cat "$WORK/server.log"
  exit 1
fi
export CHAT_URL="$URL/"
say "server $CHAT_URL (pid $SERVER_PID); chromium $("$CHROMIUM" --version 2>/dev/null | head -n1)"

if [ "$#" -gt 0 ]; then
  FILES=("$@")
else
  FILES=(tests/*.test.mjs)
fi
# One file at a time (each starts its own browser); the screenshot test sorts last.
# A test gets 4 minutes at most; a file that leaves something open is ended anyway.
NODE_ARGS=(--test --test-concurrency=1 --test-timeout=240000 --test-reporter=spec)
if node --help | grep -q -- '--test-force-exit'; then
  NODE_ARGS+=(--test-force-exit)
fi
status=0
node "${NODE_ARGS[@]}" "${FILES[@]}" || status=$?
if [ "$status" != 0 ]; then
  say "tests failed; server log:"
  tail -n 50 "$WORK/server.log" || true
fi
exit "$status"
