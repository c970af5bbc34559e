#!/usr/bin/env bash
# User-space instructions per request of a poolgate build, counted by callgrind: the chat
# completion of the bench's closed loop (a JSON answer from `mock-upstream`, a client key, the
# usage record written), 8 connections for SECONDS under valgrind, after a 3 s warm-up that is
# not counted. Deterministic to about 1 %, where the CPU-time figures of one machine move by
# 5-10 % from run to run: the way to tell a 1 % change apart. Kernel time (the syscalls, the
# TCP stack) is not in it, and an instruction is not a cycle (a cache miss costs more than an
# add), so the harness's CPU figures stay the measure; this one says which way a change went.
#
#   scripts/perf/instructions_per_request.sh [BIN_DIR] [SECONDS]
#
# REQUEST_PATH and REQUEST_BODY (environment) change the request: REQUEST_PATH=/v1/messages
# REQUEST_BODY='{"model":"gpt-4o-mini","max_tokens":64,"messages":[{"role":"user","content":"hello"}]}'
# is an Anthropic-format request translated to the OpenAI-compatible backend; the default is
# the chat completion above. Every answer must be a 2xx.
#
# BIN_DIR holds `poolgate` and `mock-upstream` (default: target/release). Needs valgrind and
# wrk. Under valgrind, SHA-256 runs its portable code (no SHA extensions): a client key check
# counts ~7,000 instructions more than on the real CPU. Prints the request count and
# instructions per request; the callgrind file stays in the printed directory
# (`callgrind_annotate --inclusive=yes FILE` names the functions).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../lib/local-poolgate.sh
source "$ROOT/scripts/lib/local-poolgate.sh"
BIN=${1:-$ROOT/target/release}
SECONDS_COUNTED=${2:-10}
WORK=$(mktemp -d /tmp/poolgate-ir.XXXXXX)
ADMIN=admintok-0123456789abcdef

cleanup() {
    [[ -n ${POOLGATE_PID:-} ]] && kill -INT "$POOLGATE_PID" 2>/dev/null || true
    [[ -n ${MOCK_PID:-} ]] && kill "$MOCK_PID" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT

# Port 0: each says where it listens.
"$BIN/mock-upstream" --listen 127.0.0.1:0 > "$WORK/mock.log" 2>&1 &
MOCK_PID=$!
MOCK_ADDR=$(listening_addr "$WORK/mock.log" "$MOCK_PID" "listening on ")
mock_backend_config "$MOCK_ADDR" "$WORK/poolgate.toml"
POOLGATE_ADMIN_TOKEN=$ADMIN valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$WORK/callgrind.out" \
    "$BIN/poolgate" serve --listen 127.0.0.1:0 --data-dir "$WORK/data" \
    --config "$WORK/poolgate.toml" > "$WORK/poolgate.log" 2>&1 &
POOLGATE_PID=$!
BASE=http://$(listening_addr "$WORK/poolgate.log" "$POOLGATE_PID" "poolgate listening addr=")
wait_until_healthy "$BASE" "$POOLGATE_PID"
KEY=$(create_client_key "$BASE" "$ADMIN" ir)
REQUEST_BODY=${REQUEST_BODY:-'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}]}'}
URL="$BASE${REQUEST_PATH:-/v1/chat/completions}"
REQUESTS=$(callgrind_window "$POOLGATE_PID" "$URL" "$REQUEST_BODY" "$KEY" 8 "$SECONDS_COUNTED" "$WORK")
INSTRUCTIONS=$(cat "$WORK"/callgrind.out* | awk '/^totals:/ {sum += $2} END {print sum}')
echo "requests $REQUESTS, instructions per request $((INSTRUCTIONS / REQUESTS)) ($WORK)"
