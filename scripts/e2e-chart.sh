#!/usr/bin/env bash
# `make e2e-chart`: the Helm chart on Docker, as rendered. No cluster can run here, so
# deploy/helm/scripts/run_rendered.py runs each rendered Deployment's pods the way a
# kubelet would (its docstring lists what is emulated and how), and this script drives it:
#
#   1. build both images as e2e-compose does (docker compose build), tagged
#      $IMAGE_PREFIX/{gateway,downstream-mock}:$E2E_CHART_TAG;
#   2. `helm template platform` with those images (--set), in $E2E_CHART_NAMESPACE, once
#      with the default values and once with every feature on
#      (deploy/helm/ci/all-features-values.yaml, plus the Secret its redis.existingSecret
#      names; E2E_CHART_ALL_FEATURES=0 skips that run); then for each:
#   3. a Docker network, a forwarder container per Service (its DNS names as network
#      aliases), every pod with its rendered image, command, env, volumes, user,
#      read-only root, capabilities and limits; every startup, liveness and readiness
#      probe called as declared, and each must pass;
#   4. the chart's `helm test` pod, which must exit 0;
#   5. tests/e2e through the gateway Service (published on 127.0.0.1:$E2E_CHART_PORT, the
#      all-features run on the next port), then the host_process tests in the first
#      gateway pod's network namespace, while the liveness and readiness probes go on
#      as a kubelet's would (one reaching its failureThreshold fails the run);
#   6. where logFile is set, api.log written into the logs emptyDir of every pod;
#   7. the pods deleted as Kubernetes does: out of the Services, preStop, SIGTERM, and a
#      clean exit within terminationGracePeriodSeconds.
#
# Everything is removed in the trap, also on failure (then the state and logs of every
# container are printed first); a Docker engine this had to start is stopped again.
#
# Environment: BASE_IMAGE (unset: the local Debian base of scripts/base-image.sh),
# E2E_CHART_PORT (18280), E2E_CHART_PROJECT (unique per run), E2E_CHART_NAMESPACE
# (platform), E2E_CHART_TAG (e2e-chart), E2E_CHART_ALL_FEATURES (1), IMAGE_PREFIX
# (ghcr.io/example/platform), HELM, VERSION, REVISION. Extra arguments go to the
# tests/e2e pytest runs.
set -euo pipefail

LOG_TAG=e2e-chart
# shellcheck source=scripts/lib/docker.sh
source "$(dirname "$0")/lib/docker.sh" # ROOT, BIN, log, timed, ensure_engine, ...
cd "$ROOT"

PROJECT=${E2E_CHART_PROJECT:-platform-e2e-chart-$$}
PORT=${E2E_CHART_PORT:-18280}
NAMESPACE=${E2E_CHART_NAMESPACE:-platform}
RELEASE=platform
CHART=deploy/helm/platform
ALL_FEATURES=deploy/helm/ci/all-features-values.yaml
export IMAGE_PREFIX=${IMAGE_PREFIX:-ghcr.io/example/platform}
export TAG=${E2E_CHART_TAG:-e2e-chart}
export VERSION=${VERSION:-$TAG}
REVISION=${REVISION:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
export REVISION
RUNNER=("$BIN/python" "$ROOT/deploy/helm/scripts/run_rendered.py")

WORK=
KUBELET_PID=
PROJECTS=()
on_exit() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ -n $KUBELET_PID ]]; then
        kill -TERM "$KUBELET_PID" 2>/dev/null
        wait "$KUBELET_PID" 2>/dev/null
    fi
    local project
    for project in "${PROJECTS[@]}"; do
        if ((rc != 0)); then
            log "FAILED (exit $rc): state and logs of every container of $project follow"
            "${RUNNER[@]}" logs --project "$project"
        fi
        timed down "${RUNNER[@]}" down --project "$project"
    done
    [[ -n $WORK ]] && rm -rf "$WORK"
    stop_engine_if_started
    print_timings engine base-image build render \
        {default,all-features}:{up,helm-test,e2e,e2e-host,log-file,stop,down} down
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# An engine, a base image that needs no registry, helm, both images, the renders.
ensure_engine
ensure_base_image
HELM=${HELM:-$("$ROOT/scripts/ensure-helm.sh")}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/platform-e2e-chart.XXXXXX")
chmod 0755 "$WORK"
log "base image $BASE_IMAGE, images $IMAGE_PREFIX/*:$TAG, $("$HELM" version --short), work dir $WORK"
# compose interpolates the whole file, LOGS_DIR included, even to build.
timed build env LOGS_DIR="$WORK" docker compose -f deploy/compose/compose.yaml build gateway downstream-mock

# render NAME [helm args...]: the chart as `helm install platform` would apply it, with
# the images just built, into $WORK/NAME/manifests.yaml.
render() {
    local name=$1
    shift
    mkdir -p "$WORK/$name"
    "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" "$@" \
        --set "gateway.image.repository=$IMAGE_PREFIX/gateway" --set-string "gateway.image.tag=$TAG" \
        --set "downstreamMock.image.repository=$IMAGE_PREFIX/downstream-mock" \
        --set-string "downstreamMock.image.tag=$TAG" \
        >"$WORK/$name/manifests.yaml"
}
# gateway_service FILE: the name of the rendered gateway Service.
gateway_service() {
    "$BIN/python" - "$1" <<'EOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
print(next(d["metadata"]["name"] for d in docs if d["kind"] == "Service"
           and d["metadata"]["labels"].get("app.kubernetes.io/component") == "gateway"))
EOF
}
render_all() {
    render default
    # Every feature on, with the images just built instead of the file's dummy digest,
    # and the Secret that redis.existingSecret names (a user creates it, not the chart).
    render all-features --values "$ALL_FEATURES" --set-string gateway.image.digest=
    cat >"$WORK/all-features/existing-objects.yaml" <<EOF
apiVersion: v1
kind: Secret
metadata: {name: platform-redis, namespace: $NAMESPACE}
stringData: {url: "redis://redis.invalid:6379/0"}
EOF
}
timed render render_all
grep -h '^\s*image:' "$WORK"/*/manifests.yaml | sort | uniq -c | sed 's/^/    /' >&2

# exercise RUN PORT [EXISTING_OBJECTS...]: steps 3-7 on $WORK/RUN/manifests.yaml, with
# timings named <RUN>:<step>.
exercise() {
    local run=$1 port=$2 dir="$WORK/$1" project="$PROJECT-$1" service kubelet_rc=0
    shift 2
    service=$(gateway_service "$dir/manifests.yaml")
    PROJECTS+=("$project")
    log "$run: the chart's pods, Services and probes (project $project)"
    timed "$run:up" "${RUNNER[@]}" up --state "$dir" --project "$project" --namespace "$NAMESPACE" \
        --manifests "$dir/manifests.yaml" "$@" --publish "$service:80=$port"
    # shellcheck source=/dev/null
    source "$dir/e2e.env" # E2E_BASE_URL, E2E_POD_NAME, E2E_POD_CONTAINER, E2E_POD_URL
    export E2E_BASE_URL
    timed "$run:helm-test" "${RUNNER[@]}" helm-test --state "$dir"

    # The probes go on during the tests, on their periods, as a kubelet's would.
    "${RUNNER[@]}" kubelet --state "$dir" &
    KUBELET_PID=$!
    # tests/e2e through the gateway Service, as a client in the cluster comes. The
    # host_process tests read the gateway's processes through /proc: its gunicorn master
    # is PID 1 of the container, so its host PID is the container's; psutil reads sockets
    # from /proc/net of the reader's network namespace, so they run in the pod's (nsenter
    # --net only: files, /proc and .venv stay the host's), against the pod's own port.
    log "$run: tests/e2e against $E2E_BASE_URL (Service $service)"
    timed "$run:e2e" "$BIN/pytest" "$ROOT/tests/e2e" -q -p no:cacheprovider -m "not host_process" "${PYTEST_ARGS[@]}"
    E2E_GATEWAY_PID=$(docker inspect -f '{{.State.Pid}}' "$E2E_POD_CONTAINER")
    export E2E_GATEWAY_PID
    if ((EUID == 0)); then
        log "$run: host_process tests in pod $E2E_POD_NAME (gunicorn master: host PID $E2E_GATEWAY_PID)"
        timed "$run:e2e-host" nsenter --target "$E2E_GATEWAY_PID" --net -- \
            env E2E_BASE_URL="$E2E_POD_URL" \
            "$BIN/pytest" "$ROOT/tests/e2e" -q -p no:cacheprovider -m host_process "${PYTEST_ARGS[@]}"
    else
        log "WARNING: not root, so the host_process tests are deselected (they need nsenter and"
        log "         the /proc of uid 10001's processes)"
    fi
    kill -TERM "$KUBELET_PID"
    wait "$KUBELET_PID" || kubelet_rc=$?
    KUBELET_PID=
    ((kubelet_rc == 0)) || { log "$run: probes failed while the tests ran"; return 1; }

    # Where the values set logFile, it is written into the logs emptyDir.
    if grep -q 'value: "/app/logs/api.log"' "$dir/manifests.yaml"; then
        timed "$run:log-file" check_log_files "$project"
    fi
    timed "$run:stop" "${RUNNER[@]}" stop --state "$dir"
    timed "$run:down" "${RUNNER[@]}" down --project "$project"
    PROJECTS=()
}
# check_log_files PROJECT: /app/logs/api.log has lines in every container of PROJECT.
check_log_files() {
    local container
    for container in $(docker ps -q --filter "label=io.platform.e2e-chart.project=$1" \
        --filter "label=io.platform.e2e-chart.role=container"); do
        docker exec "$container" python3 -c \
            'import os, sys; n = os.path.getsize("/app/logs/api.log"); print("api.log:", n, "bytes"); sys.exit(n == 0)' >&2
    done
}

PYTEST_ARGS=("$@")
exercise default "$PORT"
if [[ ${E2E_CHART_ALL_FEATURES:-1} != 0 ]]; then
    exercise all-features "$((PORT + 1))" "$WORK/all-features/existing-objects.yaml"
fi
log "passed"
