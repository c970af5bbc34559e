# Shell helpers for the scripts that start a poolgate of their own on 127.0.0.1
# (scripts/perf/instructions_per_request.sh, scripts/pgo/train-endpoints.sh). Sourced, not run.

# listening_addr LOG PID PREFIX: waits up to 60 s for the first "PREFIX<ip>:<port>" in LOG (a
# process started with port 0 says where it listens) and prints the address; fails if PID exits
# first.
listening_addr() {
    local log=$1 pid=$2 prefix=$3 found
    for _ in $(seq 600); do
        found=$(grep -o -m1 "${prefix}[0-9.]*:[0-9]*" "$log" 2>/dev/null || true)
        if [[ -n $found ]]; then
            echo "${found#"$prefix"}"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "process $pid exited before it listened; see $log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "no \"$prefix\" line in $log within 60 s" >&2
    return 1
}

# wait_until_healthy BASE_URL PID: returns once BASE_URL/healthz answers 2xx; fails after 60 s
# or if PID exits first.
wait_until_healthy() {
    for _ in $(seq 300); do
        curl -sf -o /dev/null "$1/healthz" && return 0
        if ! kill -0 "$2" 2>/dev/null; then
            echo "poolgate (pid $2) exited before $1/healthz answered" >&2
            return 1
        fi
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
