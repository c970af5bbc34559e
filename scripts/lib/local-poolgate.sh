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

# callgrind_window PID URL BODY AUTH CONNECTIONS SECONDS WORK: with PID running under
# `valgrind --tool=callgrind --instr-atstart=no`, POSTs BODY (JSON, `Authorization: Bearer
# AUTH`) to URL with `wrk -t1 -cCONNECTIONS` for 3 s not counted, then for SECONDS with
# callgrind's instrumentation on, and dumps the counts (WORK/callgrind.out*). Fails if an answer
# was not 2xx; prints the requests counted.
callgrind_window() {
    local pid=$1 url=$2 body=$3 auth=$4 connections=$5 seconds=$6 work=$7
    cat > "$work/request.lua" <<LUA
wrk.method = "POST"
wrk.body = [==[$body]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $auth"
LUA
    wrk -t1 -c"$connections" -d3s -s "$work/request.lua" "$url" > /dev/null
    callgrind_control -i on "$pid" > /dev/null 2>&1
    wrk -t1 -c"$connections" -d"${seconds}s" -s "$work/request.lua" "$url" > "$work/wrk.txt"
    if grep -q 'Non-2xx' "$work/wrk.txt"; then
        echo "some answers were not 2xx: $(grep 'Non-2xx' "$work/wrk.txt")" >&2
        return 1
    fi
    # poolgate's usage batch of the last requests is written within the second.
    sleep 1
    callgrind_control -i off "$pid" > /dev/null 2>&1
    callgrind_control -d "$pid" > /dev/null 2>&1
    sleep 1
    awk '/requests in/ {print $1}' "$work/wrk.txt"
}

# mock_backend_config MOCK_ADDR FILE: writes a poolgate config with one backend, the
# `mock-upstream` at MOCK_ADDR, serving `gpt-4o-mini` with no practical RPM limit.
mock_backend_config() {
    cat > "$2" <<TOML
[[backends]]
name = "mock"
api_base_url = "http://$1/v1"
api_key = "sk-bench-mock"
rpm_limit = 10000000
[backends.model_mappings]
"gpt-4o-mini" = "gpt-4o-mini"
TOML
}
