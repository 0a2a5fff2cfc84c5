#!/usr/bin/env bash
# WebSocket protocol compliance: runs the Autobahn|Testsuite fuzzing client (sections
# 1-7, 9 and 10) against chat-axum's `/echo` endpoint, which reuses the real connection
# reader and writer with only the dispatch swapped (feature `autobahn`).
#
# Fails (exit 1) when any case FAILED or closed uncleanly. Needs Python 2.7 (pyenv's on
# these machines, or $PYTHON2); without it, says so loudly and exits 0.
# Installs `autobahntestsuite` into target/autobahn-venv on first use.
# Reports: target/autobahn/reports/index.html.
set -euo pipefail
cd "$(dirname "$0")/.."

AUTOBAHN_VERSION=25.10.1
SECTIONS=(1 2 3 4 5 6 7 9 10)
OUT=target/autobahn
VENV=target/autobahn-venv

loud() {
  printf '\n%s\n' '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!' >&2
  printf '!!! %s\n' "$@" >&2
  printf '%s\n\n' '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!' >&2
}

# --- the fuzzing client (Python 2.7) ---------------------------------------------------
if [ -n "${PYTHON2:-}" ]; then
  candidates=("$PYTHON2")
else
  candidates=(/root/.pyenv/versions/2.7.18/bin/python "${PYENV_ROOT:-$HOME/.pyenv}"/versions/2.7*/bin/python python2.7 python2)
fi
PY2=""
for candidate in "${candidates[@]}"; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' 2>/dev/null; then
    PY2="$(command -v "$candidate")"
    break
  fi
done
if [ -z "$PY2" ]; then
  loud "AUTOBAHN SKIPPED: no Python 2.7 on this machine (set PYTHON2=/path/to/python2.7)." \
    "The WebSocket protocol-compliance run did NOT happen."
  exit 0
fi

if ! "$VENV/bin/wstest" --help >/dev/null 2>&1; then
  echo "autobahn: installing autobahntestsuite $AUTOBAHN_VERSION into $VENV (Python: $PY2)"
  if ! "$PY2" -m virtualenv --version >/dev/null 2>&1; then
    "$PY2" -m pip install --quiet --user --disable-pip-version-check 'virtualenv<20.22'
  fi
  rm -rf "$VENV"
  "$PY2" -m virtualenv --quiet "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "autobahntestsuite==$AUTOBAHN_VERSION"
fi

# --- the echo server -------------------------------------------------------------------
echo "autobahn: building the echo server"
ECHO_BIN="$(cargo build --quiet -p chat-axum --features autobahn --example autobahn_echo \
  --message-format=json-render-diagnostics |
  sed -n 's/.*"executable":"\([^"]*autobahn_echo[^"]*\)".*/\1/p' | tail -n 1)"
if [ ! -x "$ECHO_BIN" ]; then
  echo "autobahn: could not find the built echo server" >&2
  exit 1
fi

rm -rf "$OUT"
mkdir -p "$OUT"
"$ECHO_BIN" 127.0.0.1:0 >"$OUT/echo.out" 2>"$OUT/echo.log" &
ECHO_PID=$!
trap 'kill "$ECHO_PID" 2>/dev/null || true; wait "$ECHO_PID" 2>/dev/null || true' EXIT

URL=""
for _ in $(seq 1 100); do
  URL="$(sed -n 's/^listening on \(ws:[^ ]*\)$/\1/p' "$OUT/echo.out")"
  [ -n "$URL" ] && break
  if ! kill -0 "$ECHO_PID" 2>/dev/null; then
    echo "autobahn: the echo server exited:" >&2
    cat "$OUT/echo.log" >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "$URL" ]; then
  echo "autobahn: the echo server did not start listening" >&2
  exit 1
fi
echo "autobahn: echo server at $URL (pid $ECHO_PID)"

sed -e "s|@URL@|$URL|" -e "s|@OUTDIR@|./$OUT/reports|" scripts/autobahn/fuzzingclient.json >"$OUT/fuzzingclient.json"

# --- the run ---------------------------------------------------------------------------
echo "autobahn: running sections ${SECTIONS[*]} (log: $OUT/wstest.log)"
start=$SECONDS
if ! timeout 900 "$VENV/bin/wstest" -m fuzzingclient -s "$OUT/fuzzingclient.json" >"$OUT/wstest.log" 2>&1; then
  tail -n 20 "$OUT/wstest.log" >&2
  echo "autobahn: wstest did not finish" >&2
  exit 1
fi
echo "autobahn: wstest took $((SECONDS - start)) s"

if ! kill -0 "$ECHO_PID" 2>/dev/null; then
  echo "autobahn: the echo server died during the run" >&2
  cat "$OUT/echo.log" >&2
  exit 1
fi

"$VENV/bin/python" scripts/autobahn/check_report.py "$OUT/reports/index.json" "${SECTIONS[@]}"
