#!/usr/bin/env bash
# `make e2e-local`: tests/e2e against both services as real gunicorn processes with two
# workers each on loopback. Ports differ from `make run` so the two can coexist.
# Everything started here is stopped by PID, also when the tests fail.
set -euo pipefail
source "$(dirname "$0")/lib/services.sh"

GATEWAY_PORT=${E2E_GATEWAY_PORT:-18080}
MOCK_PORT=${E2E_MOCK_PORT:-18081}
# A second gateway on the fallback upstream client (GATEWAY_UPSTREAM_CLIENT=aiohttp)
# gets the same suite: both clients are supported in production.
FALLBACK_PORT=${E2E_FALLBACK_GATEWAY_PORT:-18082}
LOG_DIR="$ROOT/run/e2e-local"
mkdir -p "$LOG_DIR"
: >"$LOG_DIR/mock.log"
: >"$LOG_DIR/gateway.log"
: >"$LOG_DIR/gateway-aiohttp.log"

on_exit() {
    local rc=$?
    stop_started
    if ((rc != 0)); then
        echo "---- last lines of $LOG_DIR/gateway.log" >&2
        tail -n 40 "$LOG_DIR/gateway.log" >&2
        echo "---- last lines of $LOG_DIR/gateway-aiohttp.log" >&2
        tail -n 40 "$LOG_DIR/gateway-aiohttp.log" >&2
        echo "---- last lines of $LOG_DIR/mock.log" >&2
        tail -n 40 "$LOG_DIR/mock.log" >&2
    fi
    exit "$rc"
}
trap on_exit EXIT

# Nothing routes by our /readyz here, so a drain delay would only slow the teardown.
export GATEWAY_DRAIN_DELAY=0 MOCK_DRAIN_DELAY=0
start_mock "$MOCK_PORT" 2 "$LOG_DIR/mock.log"
GATEWAY_UPSTREAM_CLIENT=aiohttp start_gateway "$FALLBACK_PORT" 2 "$MOCK_PORT" \
    "$LOG_DIR/gateway-aiohttp.log"
FALLBACK_PID=$GATEWAY_PID
start_gateway "$GATEWAY_PORT" 2 "$MOCK_PORT" "$LOG_DIR/gateway.log"
wait_ready "http://127.0.0.1:$MOCK_PORT/readyz" "$MOCK_PID"
wait_ready "http://127.0.0.1:$GATEWAY_PORT/readyz" "$GATEWAY_PID"
wait_ready "http://127.0.0.1:$FALLBACK_PORT/readyz" "$FALLBACK_PID"

echo "tests/e2e, gateway on its own upstream client (h1)"
E2E_BASE_URL="http://127.0.0.1:$GATEWAY_PORT" E2E_GATEWAY_PID="$GATEWAY_PID" \
    "$BIN/pytest" "$ROOT/tests/e2e" -q -p no:cacheprovider "$@"
echo "tests/e2e, gateway on the fallback upstream client (aiohttp)"
E2E_BASE_URL="http://127.0.0.1:$FALLBACK_PORT" E2E_GATEWAY_PID="$FALLBACK_PID" \
    "$BIN/pytest" "$ROOT/tests/e2e" -q -p no:cacheprovider "$@"
