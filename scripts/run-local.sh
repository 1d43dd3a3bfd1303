#!/usr/bin/env bash
# `make run`: the gateway on 127.0.0.1:$GATEWAY_PORT in front of the downstream-mock on
# 127.0.0.1:$MOCK_PORT, both under gunicorn with uvicorn workers, logs on this terminal.
# Ctrl-C stops both.
set -euo pipefail
source "$(dirname "$0")/lib/services.sh"

GATEWAY_PORT=${GATEWAY_PORT:-8080}
MOCK_PORT=${MOCK_PORT:-8081}
trap stop_started EXIT
trap 'exit 130' INT TERM

start_mock "$MOCK_PORT" "${MOCK_WORKERS:-2}" /dev/stdout
start_gateway "$GATEWAY_PORT" "${GATEWAY_WORKERS:-2}" "$MOCK_PORT" /dev/stdout
wait_ready "http://127.0.0.1:$MOCK_PORT/readyz" "$MOCK_PID"
wait_ready "http://127.0.0.1:$GATEWAY_PORT/readyz" "$GATEWAY_PID"
echo "gateway: http://127.0.0.1:$GATEWAY_PORT (try /mock/echo, /docs); mock: http://127.0.0.1:$MOCK_PORT; Ctrl-C stops both" >&2
# Returns when either service exits (then EXIT stops the other) or on Ctrl-C.
wait -n "$MOCK_PID" "$GATEWAY_PID"
