#!/usr/bin/env bash
# Package the chart for a release and, with CHART_OCI_REPO set, push it there.
#
#   CHART_VERSION=0.2.0 CHART_IMAGE_PREFIX=ghcr.io/acme/platform scripts/chart-release.sh
#   ... CHART_OCI_REPO=oci://ghcr.io/acme/charts REGISTRY_USERNAME=... REGISTRY_PASSWORD=...
#
# The chart's version and appVersion both become CHART_VERSION: images.yml publishes the
# images of the same tag as <prefix>/gateway:<version>, the tag the chart defaults to. The
# packaged values.yaml names the images under CHART_IMAGE_PREFIX instead of the
# placeholder ghcr.io/example/platform, so `helm install oci://...` pulls real images.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

: "${CHART_VERSION:?set CHART_VERSION, e.g. 0.2.0 (a tag v0.2.0 without the v)}"
: "${CHART_IMAGE_PREFIX:?set CHART_IMAGE_PREFIX, e.g. ghcr.io/acme/platform}"
HELM=${HELM:-$(scripts/ensure-helm.sh)}
DIST=${CHART_DIST:-run/chart}
PLACEHOLDER=ghcr.io/example/platform

[[ $CHART_VERSION =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]] ||
  { echo "CHART_VERSION=$CHART_VERSION is not a SemVer version" >&2; exit 1; }
# GHCR names are lowercase; GitHub owners and repositories need not be.
PREFIX=${CHART_IMAGE_PREFIX,,}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cp -R deploy/helm/platform "$WORK/platform"
values="$WORK/platform/values.yaml"
grep -q "repository: $PLACEHOLDER/gateway" "$values" ||
  { echo "values.yaml no longer names $PLACEHOLDER/gateway; update $0" >&2; exit 1; }
sed -i "s#repository: $PLACEHOLDER/#repository: $PREFIX/#" "$values"

"$HELM" lint --strict "$WORK/platform"
mkdir -p "$DIST"
"$HELM" package "$WORK/platform" --version "$CHART_VERSION" --app-version "$CHART_VERSION" \
  --destination "$DIST"
package="$DIST/platform-$CHART_VERSION.tgz"
echo "packaged $package (images $PREFIX/{gateway,downstream-mock}:$CHART_VERSION)"

if [[ -n ${CHART_OCI_REPO:-} ]]; then
  registry=${CHART_OCI_REPO#oci://}
  registry=${registry%%/*}
  if [[ -n ${REGISTRY_PASSWORD:-} ]]; then
    printf '%s' "$REGISTRY_PASSWORD" |
      "$HELM" registry login "$registry" --username "${REGISTRY_USERNAME:?}" --password-stdin
  fi
  "$HELM" push "$package" "${CHART_OCI_REPO,,}"
fi
