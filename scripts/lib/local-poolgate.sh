# Shell helpers for the scripts that start a poolgate of their own on 127.0.0.1
# (scripts/perf/instructions_per_request.sh, scripts/pgo/train-endpoints.sh). Sourced, not run.

# wait_until_healthy BASE_URL: returns once BASE_URL/healthz answers; fails after 60 s.
wait_until_healthy() {
    for _ in $(seq 300); do
        curl -s -o /dev/null "$1/healthz" && return 0
        sleep 0.2
    done
    echo "poolgate at $1 did not answer /healthz within 60 s" >&2
    return 1
}

# create_client_key BASE_URL ADMIN_TOKEN NAME: prints a new client key named NAME.
create_client_key() {
    curl -sf -X POST -H "Authorization: Bearer $2" -H 'content-type: application/json' \
        -d "{\"name\":\"$3\"}" "$1/admin/api/keys" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])'
}
