#!/usr/bin/env bash
# The code one request runs, counted by callgrind: poolgate, the hyper floor or nginx in front
# of `mock-upstream`, one keep-alive connection (`wrk -t1 -c1`) sending the chat completion of
# scripts/perf/instructions_per_request.sh for SECONDS after a 3 s warm-up that is not counted.
# Prints, per thread, the instructions per request and the distinct 64-byte code lines that
# ran (scripts/perf/code_footprint.py): the code a request streams through the instruction
# cache. A thread that slept between two requests finds much of it evicted by the processes
# that ran meanwhile: at a low rate a request's CPU grows with what it runs (docs/benchmarks.md,
# session 29).
#
#   scripts/perf/code_footprint.sh poolgate|floor|nginx [BIN_DIR] [SECONDS]
#
# BIN_DIR holds the `poolgate` to measure (default: target/release; target/pgo for the
# profile-guided build). `mock-upstream` and `hyper-floor` are the plain release builds
# (`cargo build --release -p mock-upstream -p bench`); nginx is /usr/sbin/nginx, one process
# (`master_process off`) with the harness's proxy settings. Needs valgrind, wrk and python3.
# The callgrind files stay in the printed directory.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../lib/local-poolgate.sh
source "$ROOT/scripts/lib/local-poolgate.sh"
SYSTEM=${1:?usage: code_footprint.sh poolgate|floor|nginx [BIN_DIR] [SECONDS]}
BIN=${2:-$ROOT/target/release}
SECONDS_COUNTED=${3:-5}
RELEASE=${CARGO_TARGET_DIR:-$ROOT/target}/release
WORK=$(mktemp -d "/tmp/poolgate-footprint-$SYSTEM.XXXXXX")
ADMIN=admintok-0123456789abcdef
CALLGRIND=(valgrind --tool=callgrind --instr-atstart=no --dump-instr=yes --compress-pos=no
    --compress-strings=no --separate-threads=yes --callgrind-out-file="$WORK/callgrind.out")

cleanup() {
    # SIGINT first (poolgate drains and writes its usage), then SIGKILL for whatever is left.
    if [[ -n ${PROXY_PID:-} ]] && kill -INT "$PROXY_PID" 2>/dev/null; then
        for _ in $(seq 50); do kill -0 "$PROXY_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$PROXY_PID" 2>/dev/null || true
    fi
    [[ -n ${MOCK_PID:-} ]] && kill "$MOCK_PID" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT

"$RELEASE/mock-upstream" --listen 127.0.0.1:0 > "$WORK/mock.log" 2>&1 &
MOCK_PID=$!
MOCK_ADDR=$(listening_addr "$WORK/mock.log" "$MOCK_PID" "listening on ")
AUTH=sk-unused
# The floor and nginx are told a port; poolgate says which one it took.
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
case $SYSTEM in
poolgate)
    mock_backend_config "$MOCK_ADDR" "$WORK/poolgate.toml"
    POOLGATE_ADMIN_TOKEN=$ADMIN "${CALLGRIND[@]}" "$BIN/poolgate" serve --listen 127.0.0.1:0 \
        --data-dir "$WORK/data" --config "$WORK/poolgate.toml" > "$WORK/proxy.log" 2>&1 &
    PROXY_PID=$!
    BASE=http://$(listening_addr "$WORK/proxy.log" "$PROXY_PID" "poolgate listening addr=")
    wait_until_healthy "$BASE" "$PROXY_PID"
    AUTH=$(create_client_key "$BASE" "$ADMIN" footprint)
    ;;
floor)
    "${CALLGRIND[@]}" "$RELEASE/hyper-floor" --listen "127.0.0.1:$PORT" --upstream "$MOCK_ADDR" \
        > "$WORK/proxy.log" 2>&1 &
    PROXY_PID=$!
    BASE=http://127.0.0.1:$PORT
    ;;
nginx)
    mkdir -p "$WORK/temp"
    cat > "$WORK/nginx.conf" <<CONF
master_process off;
daemon off;
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/error.log warn;
events { worker_connections 1024; multi_accept on; }
http {
    access_log off;
    client_body_temp_path $WORK/temp/body;
    proxy_temp_path $WORK/temp/proxy;
    fastcgi_temp_path $WORK/temp/fastcgi;
    uwsgi_temp_path $WORK/temp/uwsgi;
    scgi_temp_path $WORK/temp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream mock { server $MOCK_ADDR; keepalive 512; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$PORT;
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }
    }
}
CONF
    "${CALLGRIND[@]}" /usr/sbin/nginx -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/error.log" \
        > "$WORK/proxy.log" 2>&1 &
    PROXY_PID=$!
    BASE=http://127.0.0.1:$PORT
    ;;
*)
    echo "code_footprint: unknown system $SYSTEM (poolgate, floor or nginx)" >&2
    exit 1
    ;;
esac
for _ in $(seq 300); do
    curl -s -o /dev/null "$BASE/v1/models" && break
    kill -0 "$PROXY_PID" 2>/dev/null || { echo "$SYSTEM exited; see $WORK/proxy.log" >&2; exit 1; }
    sleep 0.2
done
BODY='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}]}'
REQUESTS=$(callgrind_window "$PROXY_PID" "$BASE/v1/chat/completions" "$BODY" "$AUTH" 1 \
    "$SECONDS_COUNTED" "$WORK")
echo "$SYSTEM: $REQUESTS requests in ${SECONDS_COUNTED} s (files in $WORK)"
python3 "$ROOT/scripts/perf/code_footprint.py" "$REQUESTS" "$WORK"/callgrind.out.1*
