#!/usr/bin/env bash
# The chart on a kind cluster, as CI runs it (.github/workflows/e2e-kind.yml) and as a
# user with Docker and kind reproduces it with one command (`make e2e-kind`).
#
#   scripts/kind.sh up         create the cluster (deploy/kind/kind-config.yaml) unless it exists
#   scripts/kind.sh load       build both images and `kind load docker-image` them
#   scripts/kind.sh install    helm upgrade --install --wait with deploy/kind/values.yaml
#   scripts/kind.sh test       helm test, tests/e2e against the NodePort, tests/kind
#   scripts/kind.sh e2e        all of the above; on failure, dump pods, logs and events
#   scripts/kind.sh dump       the diagnostics alone
#   scripts/kind.sh down       delete the cluster
#
# Settings (environment): KIND_CLUSTER (platform), KIND_RELEASE (platform),
# KIND_NAMESPACE (platform), KIND_IMAGE_TAG (kind), HELM (a helm binary), BASE_IMAGE
# (passed to docker build when set).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

CLUSTER=${KIND_CLUSTER:-platform}
RELEASE=${KIND_RELEASE:-platform}
NAMESPACE=${KIND_NAMESPACE:-platform}
TAG=${KIND_IMAGE_TAG:-kind}
GATEWAY_IMAGE="platform/gateway:${KIND_IMAGE_TAG:-kind}"
MOCK_IMAGE="platform/downstream-mock:${KIND_IMAGE_TAG:-kind}"
CHART=deploy/helm/platform
KIND_CONFIG=deploy/kind/kind-config.yaml
KIND_VALUES=deploy/kind/values.yaml
HELM=${HELM:-$(scripts/ensure-helm.sh)}
BIN="$ROOT/.venv/bin"
# What the chart labels every pod of the release with; the dump selects on it.
SELECTOR="app.kubernetes.io/instance=$RELEASE"
# The gateway's NodePort (deploy/kind/values.yaml), published on the host by kind-config.yaml.
E2E_BASE_URL=${E2E_BASE_URL:-http://127.0.0.1:8080}

log() { printf '\n[kind.sh] %s\n' "$*" >&2; }

need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || { log "ERROR: $tool is not on PATH"; exit 1; }
  done
}

up() {
  need kind kubectl docker
  if kind get clusters | grep -qx "$CLUSTER"; then
    log "kind cluster $CLUSTER exists"
  else
    log "creating kind cluster $CLUSTER"
    kind create cluster --name "$CLUSTER" --config "$KIND_CONFIG" --wait 120s
  fi
  kubectl config use-context "kind-$CLUSTER" >/dev/null
}

build() {
  need docker
  local args=(--build-arg "VERSION=$TAG" --build-arg "REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)")
  [[ -n ${BASE_IMAGE:-} ]] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
  log "building $GATEWAY_IMAGE and $MOCK_IMAGE"
  docker build "${args[@]}" -f services/gateway/Dockerfile -t "$GATEWAY_IMAGE" .
  docker build "${args[@]}" -f services/downstream-mock/Dockerfile -t "$MOCK_IMAGE" .
}

load() {
  need kind
  build
  log "loading the images into kind cluster $CLUSTER"
  kind load docker-image --name "$CLUSTER" "$GATEWAY_IMAGE" "$MOCK_IMAGE"
}

install() {
  need kubectl
  # The Pod Security Standard "restricted", enforced: a pod of the chart that asked for
  # more than it needs would be refused here, not merely rendered.
  kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
  kubectl label namespace "$NAMESPACE" --overwrite \
    pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/warn=restricted
  log "helm upgrade --install $RELEASE (namespace $NAMESPACE) with $("$HELM" version --short)"
  "$HELM" upgrade --install "$RELEASE" "$CHART" \
    --namespace "$NAMESPACE" \
    --values "$KIND_VALUES" \
    --set-string "gateway.image.tag=$TAG" --set-string "downstreamMock.image.tag=$TAG" \
    --wait --timeout 5m
}

run_tests() {
  log "helm test $RELEASE"
  "$HELM" test "$RELEASE" --namespace "$NAMESPACE" --timeout 3m
  log "tests/e2e against $E2E_BASE_URL (host_process tests deselected: no /proc of the pods here)"
  E2E_BASE_URL="$E2E_BASE_URL" "$BIN/pytest" tests/e2e -q -p no:cacheprovider -m "not host_process"
  log "tests/kind: readiness, probes, NetworkPolicy, rollout restart under load"
  E2E_BASE_URL="$E2E_BASE_URL" KIND_RELEASE="$RELEASE" KIND_NAMESPACE="$NAMESPACE" HELM="$HELM" \
    "$BIN/pytest" tests/kind -q -p no:cacheprovider
}

# Each diagnostic runs even when an earlier one failed, and a failing one says so:
# nothing here is silenced.
diag() {
  local rc=0
  printf '\n%s\n' "---- $*"
  "$@" </dev/null || rc=$?
  if ((rc != 0)); then
    printf '%s\n' "---- the command above failed (exit $rc)"
  fi
}

dump() {
  need kubectl
  log "diagnostics for $SELECTOR in namespace $NAMESPACE"
  diag kubectl --namespace "$NAMESPACE" get deployments,replicasets,pods,services,endpointslices,networkpolicies -l "$SELECTOR" -o wide
  diag kubectl --namespace "$NAMESPACE" describe pods -l "$SELECTOR"
  diag kubectl --namespace "$NAMESPACE" logs -l "$SELECTOR" --all-containers --prefix --tail 300 --max-log-requests 20
  # The logs of the previous run of every container that restarted.
  local pod restarted
  if restarted=$(kubectl --namespace "$NAMESPACE" get pods -l "$SELECTOR" </dev/null \
    -o jsonpath='{range .items[?(@.status.containerStatuses[0].restartCount>0)]}{.metadata.name}{"\n"}{end}'); then
    for pod in $restarted; do
      diag kubectl --namespace "$NAMESPACE" logs "$pod" --all-containers --previous --tail 300
    done
  else
    printf '%s\n' "---- could not list the restarted pods"
  fi
  diag kubectl --namespace "$NAMESPACE" get events --sort-by .lastTimestamp
  diag "$HELM" status "$RELEASE" --namespace "$NAMESPACE"
}

down() {
  need kind
  kind delete cluster --name "$CLUSTER"
}

on_exit() {
  local rc=$?
  if ((rc != 0)); then
    log "FAILED (exit $rc)"
    dump
  fi
  exit "$rc"
}

e2e() {
  up
  load
  trap on_exit EXIT
  install
  run_tests
  log "e2e on kind passed"
}

case ${1:-} in
  up) up ;;
  build) build ;;
  load) load ;;
  install) install ;;
  test) run_tests ;;
  e2e) e2e ;;
  dump) dump ;;
  down) down ;;
  *)
    echo "usage: $0 up|build|load|install|test|e2e|dump|down" >&2
    exit 2
    ;;
esac
