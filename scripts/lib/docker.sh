# shellcheck shell=bash
# What the scripts that run the images on a real engine share (e2e-compose.sh,
# e2e-chart.sh): a log prefix, step timings, a Docker engine (started only when none
# answers, and then stopped again) and a base image that needs no registry.
#
# Source it after setting LOG_TAG; it sets ROOT (the repository) and BIN (.venv/bin).

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck disable=SC2034  # used by the scripts that source this
BIN="$ROOT/.venv/bin"
LOG_TAG=${LOG_TAG:-docker}

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }

# timed NAME COMMAND...: run it, add how long it took (seconds) to NAME.
declare -A TIMINGS=()
timed() {
    local name=$1 start=$SECONDS
    shift
    "$@"
    TIMINGS[$name]=$((${TIMINGS[$name]:-0} + SECONDS - start))
}

# print_timings NAME...: the timings of the steps that ran, in the order given.
print_timings() {
    local name
    for name in "$@"; do
        [[ -n ${TIMINGS[$name]:-} ]] && log "$(printf '%-24s %4ss' "$name" "${TIMINGS[$name]}")"
    done
    return 0
}

# ensure_engine: a Docker engine that answers. One this starts (STARTED_ENGINE=1) is
# stopped again by stop_engine_if_started; one that was running is left alone.
STARTED_ENGINE=0
ensure_engine() {
    if ! timeout 10 docker info >/dev/null 2>&1; then
        log "no Docker engine answers; starting one"
        timed engine "$ROOT/scripts/docker-engine.sh" up
        STARTED_ENGINE=1
    fi
}
stop_engine_if_started() {
    if ((STARTED_ENGINE)); then
        "$ROOT/scripts/docker-engine.sh" down
    fi
}

# ensure_base_image: BASE_IMAGE as given, or (unset) the local Debian base of
# scripts/base-image.sh, built if missing, as no registry may be reachable.
ensure_base_image() {
    if [[ -z ${BASE_IMAGE:-} ]]; then
        timed base-image "$ROOT/scripts/base-image.sh"
        BASE_IMAGE=platform-python-base:3.13-trixie
    fi
    export BASE_IMAGE
}
