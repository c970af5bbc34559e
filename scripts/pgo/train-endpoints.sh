#!/usr/bin/env bash
# The second half of scripts/build-pgo.sh's training load: what the benchmark harness does not
# send. One poolgate (the instrumented build in BIN_DIR) in front of the mock upstream with an
# OpenAI and an Anthropic backend, and REQUESTS requests of each of: chat completions translated
# to Anthropic (JSON, stream); /v1/messages passed through and translated to OpenAI (JSON,
# stream); count_tokens (Anthropic backends only: 501 otherwise); legacy completions (JSON,
# stream); embeddings; the Responses API passed through and translated (JSON, stream);
# /v1/models; then a few admin API, metrics, health and dashboard requests. Without it those
# paths would have no counts, and the compiler would treat them as cold (less inlining) in the
# optimised build. Every answer must be a 2xx: a path that fails would train its error path
# instead.
#
#   scripts/pgo/train-endpoints.sh BIN_DIR WORK_DIR [REQUESTS]
#
# BIN_DIR holds `poolgate` and `mock-upstream`. Needs curl 7.66 or newer (`--parallel`) and
# python3. Exits non-zero on any non-2xx, naming WORK_DIR (the logs).
set -euo pipefail
# shellcheck source=../lib/local-poolgate.sh
source "$(dirname "$0")/../lib/local-poolgate.sh"

BIN=$1
WORK=$2
REQUESTS=${3:-400}
ADMIN=train-admin-token-0123456789abcdef
mkdir -p "$WORK"
rm -rf "$WORK/data"

cleanup() {
    # SIGTERM: poolgate drains and exits normally, which is when the counts are written.
    if [[ -n ${POOLGATE_PID:-} ]] && kill -TERM "$POOLGATE_PID" 2>/dev/null; then
        wait "$POOLGATE_PID" || true
    fi
    if [[ -n ${MOCK_PID:-} ]]; then
        kill "$MOCK_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
# A script stopped by a signal runs its EXIT trap only if it exits on it.
trap 'exit 143' TERM
trap 'exit 130' INT
failed() {
    echo "train-endpoints: failed; see $WORK (poolgate.log, mock.log, curl.log)" >&2
}
trap failed ERR

# Port 0: each says where it listens.
"$BIN/mock-upstream" --listen 127.0.0.1:0 > "$WORK/mock.log" 2>&1 &
MOCK_PID=$!
MOCK_ADDR=$(listening_addr "$WORK/mock.log" "$MOCK_PID" "listening on ")
cat > "$WORK/poolgate.toml" <<TOML
[[backends]]
name = "openai"
api_base_url = "http://$MOCK_ADDR/v1"
api_key = "sk-train-openai"
[backends.model_mappings]
"gpt-4o-mini" = "gpt-4o-mini"
"text-embedding-3-small" = "text-embedding-3-small"

[[backends]]
name = "anthropic"
api = "anthropic"
api_base_url = "http://$MOCK_ADDR"
api_key = "sk-train-anthropic"
[backends.model_mappings]
"claude-sonnet-4" = "claude-sonnet-4"
TOML
POOLGATE_ADMIN_TOKEN=$ADMIN "$BIN/poolgate" serve --listen 127.0.0.1:0 \
    --data-dir "$WORK/data" --config "$WORK/poolgate.toml" > "$WORK/poolgate.log" 2>&1 &
POOLGATE_PID=$!
BASE=http://$(listening_addr "$WORK/poolgate.log" "$POOLGATE_PID" "poolgate listening addr=")
wait_until_healthy "$BASE" "$POOLGATE_PID"
KEY=$(create_client_key "$BASE" "$ADMIN" pgo-training)

# One curl config per kind of request, REQUESTS times, run 8 at a time by one curl process.
# Prints "<status> <path>" per answer.
send() {
    local method=$1 path=$2 body=$3 count=$4 auth=$5
    local config=$WORK/requests.curl
    # curl's config quoting: \ and " escaped.
    body=${body//\\/\\\\}
    body=${body//\"/\\\"}
    SENT=$((SENT + count))
    : > "$config"
    for i in $(seq "$count"); do
        {
            # `next` separates two requests' options (one after the last would be a request
            # without a URL).
            [[ $i -gt 1 ]] && echo next
            echo "url = \"$BASE$path\""
            echo "request = \"$method\""
            echo "header = \"Authorization: Bearer $auth\""
            echo 'output = "/dev/null"'
            echo 'write-out = "%{http_code} %{url_effective}\n"'
            if [[ -n $body ]]; then
                echo 'header = "Content-Type: application/json"'
                printf 'data = "%s"\n' "$body"
            fi
        } >> "$config"
    done
    # curl's own messages (its parallel progress meter among them) go to a log. A request that
    # got no answer is a "000" line, counted below like any other non-2xx.
    curl -s --parallel --parallel-max 8 -K "$config" 2>> "$WORK/curl.log" || true
}

SENT=0
MSG='"messages":[{"role":"user","content":"Say hello in one short sentence."}]'
{
    for stream in false true; do
        send POST /v1/chat/completions "{\"model\":\"claude-sonnet-4\",$MSG,\"stream\":$stream}" "$REQUESTS" "$KEY"
        send POST /v1/messages "{\"model\":\"claude-sonnet-4\",\"max_tokens\":64,$MSG,\"stream\":$stream}" "$REQUESTS" "$KEY"
        send POST /v1/messages "{\"model\":\"gpt-4o-mini\",\"max_tokens\":64,$MSG,\"stream\":$stream}" "$REQUESTS" "$KEY"
        send POST /v1/completions "{\"model\":\"gpt-4o-mini\",\"prompt\":\"Say hello.\",\"max_tokens\":16,\"stream\":$stream}" "$REQUESTS" "$KEY"
        send POST /v1/responses "{\"model\":\"gpt-4o-mini\",\"input\":\"Say hello.\",\"stream\":$stream}" "$REQUESTS" "$KEY"
        send POST /v1/responses "{\"model\":\"claude-sonnet-4\",\"input\":\"Say hello.\",\"stream\":$stream}" "$REQUESTS" "$KEY"
    done
    send POST /v1/messages/count_tokens "{\"model\":\"claude-sonnet-4\",$MSG}" "$REQUESTS" "$KEY"
    send POST /v1/embeddings '{"model":"text-embedding-3-small","input":"Say hello."}' "$REQUESTS" "$KEY"
    send GET /v1/models "" "$REQUESTS" "$KEY"
    for path in /admin/api/backends /admin/api/pools /admin/api/keys /admin/api/usage \
        /admin/api/stats /admin/api/cluster; do
        send GET "$path" "" 20 "$ADMIN"
    done
    send GET /metrics "" 20 "$ADMIN"
    send GET /health/ready "" 20 "$ADMIN"
    send GET /dashboard/ "" 20 "$ADMIN"
} > "$WORK/answers.txt"

TOTAL=$(wc -l < "$WORK/answers.txt")
FAILED=$(grep -cv '^2' "$WORK/answers.txt" || true)
echo "train-endpoints: $SENT requests, $TOTAL answers, $FAILED not 2xx"
if [[ $TOTAL -ne $SENT ]]; then
    # An old curl without --parallel, for one, sends nothing at all.
    echo "train-endpoints: curl answered $TOTAL of $SENT requests (curl.log says why)" >&2
    false
fi
if [[ $FAILED -ne 0 ]]; then
    grep -v '^2' "$WORK/answers.txt" | sort | uniq -c | head -20 >&2
    false
fi
