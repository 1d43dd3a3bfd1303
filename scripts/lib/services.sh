# Start, wait for and stop the two services as local gunicorn processes.
# Sourced by run-local.sh and e2e-local.sh; every process is stopped by the PID we got
# when we started it, never by name.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN="$ROOT/.venv/bin"
STARTED_PIDS=()
# No collector runs locally; `OTEL_TRACES_EXPORTER=otlp make run` sends spans to one.
export OTEL_TRACES_EXPORTER=${OTEL_TRACES_EXPORTER:-none}

# start_mock PORT WORKERS LOGFILE
start_mock() {
    MOCK_PORT=$1 MOCK_WORKERS=$2 \
        "$BIN/gunicorn" -c "$ROOT/services/downstream-mock/gunicorn.conf.py" \
        'downstream_mock.app:create_app()' >>"$3" 2>&1 &
    MOCK_PID=$!
    STARTED_PIDS+=("$MOCK_PID")
}

# start_gateway PORT WORKERS MOCK_PORT LOGFILE
start_gateway() {
    GATEWAY_PORT=$1 GATEWAY_WORKERS=$2 \
        GATEWAY_ROUTES_FILE="${GATEWAY_ROUTES_FILE:-$ROOT/services/gateway/routes.yaml}" \
        MOCK_UPSTREAM="http://127.0.0.1:$3" \
        "$BIN/gunicorn" -c "$ROOT/services/gateway/gunicorn.conf.py" \
        'gateway.app:create_app()' >>"$4" 2>&1 &
    GATEWAY_PID=$!
    STARTED_PIDS+=("$GATEWAY_PID")
}

# wait_ready URL PID [SECONDS]: poll URL until it answers 200, failing early if PID died.
wait_ready() {
    local url=$1 pid=$2 deadline=$((SECONDS + ${3:-30}))
    until "$BIN/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "$url" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "process $pid exited before $url was ready" >&2
            return 1
        fi
        if ((SECONDS >= deadline)); then
            echo "timed out waiting for $url" >&2
            return 1
        fi
        sleep 0.2
    done
}

# stop_started: SIGTERM what we started, wait for a graceful exit, then SIGKILL.
stop_started() {
    local pid
    for pid in "${STARTED_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED_PIDS[@]}"; do
        for _ in $(seq 1 150); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "process $pid ignored SIGTERM for 30 s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    STARTED_PIDS=()
# No collector runs locally; `OTEL_TRACES_EXPORTER=otlp make run` sends spans to one.
export OTEL_TRACES_EXPORTER=${OTEL_TRACES_EXPORTER:-none}
}
