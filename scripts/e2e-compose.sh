#!/usr/bin/env bash
# `make e2e-compose`: build both images, start deploy/compose/compose.yaml, run tests/e2e
# against the published gateway, then tests/compose (health, uid 10001, read-only root,
# api.log on the host across a restart). The stack is always taken down with
# `docker compose down -v`, also on failure (then its logs are printed first); a Docker
# engine this script had to start is stopped again, one that was running is left alone.
#
# Environment: BASE_IMAGE (unset: the local Debian base from scripts/base-image.sh, as no
# registry may be reachable), E2E_COMPOSE_PORT (18180, so it can run beside `make run`
# and `make compose-up`), E2E_COMPOSE_PROJECT (unique per run), VERSION, REVISION.
# Extra arguments go to the tests/e2e pytest run.
set -euo pipefail

LOG_TAG=e2e-compose
# shellcheck source=scripts/lib/docker.sh
source "$(dirname "$0")/lib/docker.sh" # ROOT, BIN, log, timed, ensure_engine, ...
cd "$ROOT"

export COMPOSE_FILE="$ROOT/deploy/compose/compose.yaml"
export COMPOSE_PROJECT_NAME=${E2E_COMPOSE_PROJECT:-platform-e2e-$$}
export GATEWAY_HOST_PORT=${E2E_COMPOSE_PORT:-18180}
export E2E_BASE_URL="http://127.0.0.1:$GATEWAY_HOST_PORT"
REVISION=${REVISION:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
export REVISION
WAIT_TIMEOUT=180

STACK_CREATED=0
LOGS_DIR=
on_exit() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if ((STACK_CREATED)); then
        if ((rc != 0)); then
            log "FAILED (exit $rc): container states and logs follow"
            docker compose ps -a >&2
            docker compose logs --no-color --timestamps >"$LOGS_DIR/compose.log" 2>&1
            docker compose logs --no-color --tail 200 >&2
            log "full compose logs: $LOGS_DIR/compose.log (kept with api.log in $LOGS_DIR)"
        fi
        log "docker compose down -v"
        timed down docker compose down -v --remove-orphans --timeout 45 >&2
    fi
    if [[ -n $LOGS_DIR ]] && ((rc == 0)); then
        rm -rf "$LOGS_DIR"
    fi
    stop_engine_if_started
    print_timings engine base-image build up e2e e2e-host compose-checks down
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# 1. An engine, and a base image that needs no registry.
ensure_engine
ensure_base_image
log "base image $BASE_IMAGE, project $COMPOSE_PROJECT_NAME, gateway on $E2E_BASE_URL"

# 2. Host directories for api.log that the containers' uid 10001 can write.
LOGS_DIR=$(mktemp -d "${TMPDIR:-/tmp}/platform-e2e-compose.XXXXXX")
export LOGS_DIR
chmod 0755 "$LOGS_DIR"
mkdir -p "$LOGS_DIR/gateway" "$LOGS_DIR/downstream-mock"
if ((EUID == 0)); then
    chown 10001:10001 "$LOGS_DIR/gateway" "$LOGS_DIR/downstream-mock"
else
    chmod 0777 "$LOGS_DIR/gateway" "$LOGS_DIR/downstream-mock"
fi

# 3. Build, then start and wait for both healthchecks.
timed build docker compose build
STACK_CREATED=1
timed up docker compose up -d --wait --wait-timeout "$WAIT_TIMEOUT"
docker compose ps >&2

# 4. The e2e suite. Everything but the host_process tests goes through the published
# port, as a user would. The host_process tests read the gateway's processes through
# /proc: the gunicorn master is PID 1 in its container, so its host PID is the
# container's. psutil reads sockets from /proc/net, which belongs to the reader's network
# namespace, so those tests run inside the gateway container's one (nsenter --net only:
# files, /proc and .venv stay the host's), against the container port.
gateway_pid() { docker inspect -f '{{.State.Pid}}' "$(docker compose ps -q gateway)"; }
E2E_GATEWAY_PID=$(gateway_pid)
export E2E_GATEWAY_PID
log "gateway master: host PID $E2E_GATEWAY_PID"
timed e2e "$BIN/pytest" "$ROOT/tests/e2e" -q -p no:cacheprovider -m "not host_process" "$@"
if ((EUID == 0)); then
    timed e2e-host nsenter --target "$E2E_GATEWAY_PID" --net -- \
        env E2E_BASE_URL=http://127.0.0.1:8080 \
        "$BIN/pytest" "$ROOT/tests/e2e" -q -p no:cacheprovider -m host_process "$@"
else
    log "WARNING: not root, so the host_process tests are deselected (they need nsenter and"
    log "         the /proc of uid 10001's processes)"
fi

# 5. What only the containers can show; restarts the gateway last.
timed compose-checks "$BIN/pytest" "$ROOT/tests/compose" -q -p no:cacheprovider
log "passed"
