#!/usr/bin/env bash
# Build a local stand-in for python:3.13-slim, because no container registry is
# reachable here: Debian trixie (Python 3.13) via debootstrap, then `docker import`.
# Skips the build if the tag already exists. Needs root and a running engine
# (scripts/docker-engine.sh up).
#
#   scripts/base-image.sh                       # -> platform-python-base:3.13-trixie
#   BASE_IMAGE_TAG=foo:bar scripts/base-image.sh
#   DEBIAN_MIRROR=http://... scripts/base-image.sh   # else taken from the host's apt sources
set -euo pipefail

TAG=${BASE_IMAGE_TAG:-platform-python-base:3.13-trixie}
SUITE=trixie
# python3-venv: `python3 -m venv` + ensurepip; python3-pip: `pip` on PATH like the
# official image; netbase + tzdata: also in python:3.13-slim (/etc/services, zoneinfo).
PACKAGES=python3,python3-venv,python3-pip,ca-certificates,netbase,tzdata
CA_SRC_DIR=/usr/local/share/ca-certificates
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

log() { printf '[base-image] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# First http(s) URI of a non-security suite (or of a security suite with $1=security)
# from the host's apt config, so no mirror hostname is baked into this script.
host_mirror() {
  local want=${1:-main} f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -r ${f} ]] || continue
    # deb822: stanzas split by blank lines; skip disabled and deb-src-only ones.
    uri=$(awk -v want="${want}" '
      function flush() {
        if (types ~ /(^|[ \t])deb([ \t]|$)/ && enabled !~ /^[Nn]o/ && uris != "") {
          sec = (suites ~ /-security/)
          if ((want == "security") == sec) { split(uris, u, /[ \t]+/); print u[1]; found = 1; exit }
        }
        types = uris = suites = enabled = ""
      }
      /^[ \t]*$/ { flush(); next }
      /^[Tt]ypes:/   { sub(/^[^:]*:[ \t]*/, ""); types = $0 }
      /^URIs:/       { sub(/^[^:]*:[ \t]*/, ""); uris = $0 }
      /^[Ss]uites:/  { sub(/^[^:]*:[ \t]*/, ""); suites = $0 }
      /^[Ee]nabled:/ { sub(/^[^:]*:[ \t]*/, ""); enabled = $0 }
      END { if (!found) flush() }
    ' "${f}")
    if [[ ${uri} =~ ^https?:// ]]; then
      printf '%s\n' "${uri%/}"
      return 0
    fi
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -r ${f} ]] || continue
    # one-line style: deb [opts] URI suite components...
    uri=$(awk -v want="${want}" '
      $1 == "deb" {
        i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
        sec = ($(i + 1) ~ /-security/)
        if ((want == "security") == sec) { print $i; exit }
      }' "${f}")
    if [[ ${uri} =~ ^https?:// ]]; then
      printf '%s\n' "${uri%/}"
      return 0
    fi
  done
  return 1
}

if docker image inspect "${TAG}" >/dev/null 2>&1; then
  log "image ${TAG} already exists; nothing to do"
  exit 0
fi

[[ ${EUID} -eq 0 ]] || die "must run as root (debootstrap/chroot)"
timeout 10 docker info >/dev/null 2>&1 || die "docker engine not answering; run scripts/docker-engine.sh up"

if ! command -v debootstrap >/dev/null 2>&1; then
  log "installing debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap
fi

MIRROR=${DEBIAN_MIRROR:-$(host_mirror main || true)}
[[ -n ${MIRROR} ]] || die "no http(s) Debian mirror in the host's apt sources; set DEBIAN_MIRROR"
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-$(host_mirror security || true)}

# /var/tmp: on the real disk (not a small tmpfs), and allows exec/dev for the chroot.
WORKDIR=$(mktemp -d "${TMPDIR:-/var/tmp}/platform-base-image.XXXXXX")
ROOTFS=${WORKDIR}/rootfs
cleanup() {
  # debootstrap/chroot may leave proc/sys/dev mounted on failure; unmount
  # deepest first, then never cross into another filesystem while deleting.
  local m
  while read -r m; do umount -l "${m}" 2>/dev/null || true; done < <(
    awk -v r="${WORKDIR}" 'index($2, r "/") == 1 { print $2 }' /proc/mounts | sort -r)
  rm -rf --one-file-system "${WORKDIR}"
}
trap cleanup EXIT

log "debootstrap ${SUITE} (minbase + ${PACKAGES}) from ${MIRROR} into ${ROOTFS}"
t0=${SECONDS}
debootstrap --variant=minbase --components=main --include="${PACKAGES}" \
  "${SUITE}" "${ROOTFS}" "${MIRROR}" >"${WORKDIR}/debootstrap.log" 2>&1 || {
  tail -n 40 "${WORKDIR}/debootstrap.log" >&2
  die "debootstrap failed"
}
log "debootstrap took $((SECONDS - t0))s"

# Trust the host's extra CAs (e.g. a TLS-intercepting egress proxy) in THIS local
# image only, so pip/uv inside `docker build` can reach PyPI on this network.
shopt -s nullglob
cas=("${CA_SRC_DIR}"/*.crt)
shopt -u nullglob
if ((${#cas[@]})); then
  install -d -m 0755 "${ROOTFS}${CA_SRC_DIR}"
  install -m 0644 "${cas[@]}" "${ROOTFS}${CA_SRC_DIR}/"
  log "added ${#cas[@]} extra CA cert(s) to the image"
fi
chroot "${ROOTFS}" update-ca-certificates >/dev/null

# python:3.13-slim compatibility: `python` on PATH, and no PEP 668 marker, so
# Dockerfiles that `pip install` into the system interpreter keep working.
[[ -x ${ROOTFS}/usr/bin/python3 && -x ${ROOTFS}/usr/bin/python3.13 ]] ||
  die "python3/python3.13 missing from the rootfs"
ln -sfn /usr/bin/python3 "${ROOTFS}/usr/local/bin/python"
rm -f "${ROOTFS}"/usr/lib/python3.13/EXTERNALLY-MANAGED

# Apt inside the image (for Dockerfiles that apt-get install) uses the same mirror.
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[[ -e ${ROOTFS}${keyring} ]] || keyring=/usr/share/keyrings/debian-archive-keyring.pgp
rm -f "${ROOTFS}/etc/apt/sources.list"
{
  printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: %s\n' \
    "${MIRROR}" "${SUITE}" "${SUITE}" "${keyring}"
  if [[ -n ${SECURITY_MIRROR} ]]; then
    printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: %s\n' \
      "${SECURITY_MIRROR}" "${SUITE}" "${keyring}"
  fi
} >"${ROOTFS}/etc/apt/sources.list.d/debian.sources"

# Keep it small, like Debian's -slim images: drop docs/man/locales now and for
# later apt installs, and ship no package lists or caches.
cat >"${ROOTFS}/etc/dpkg/dpkg.cfg.d/platform-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
cat >"${ROOTFS}/etc/apt/apt.conf.d/platform-slim" <<'EOF'
APT::Keep-Downloaded-Packages "false";
Acquire::Languages "none";
EOF
find "${ROOTFS}/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
find "${ROOTFS}/usr/share/doc" -mindepth 1 -type d -empty -delete
find "${ROOTFS}/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
rm -rf "${ROOTFS:?}"/usr/share/{man,info,lintian}/* \
  "${ROOTFS}"/var/lib/apt/lists/* "${ROOTFS}"/var/cache/apt/* \
  "${ROOTFS}"/var/cache/debconf/*-old "${ROOTFS}"/var/lib/dpkg/*-old \
  "${ROOTFS}"/var/log/* "${ROOTFS}"/tmp/*
# Docker mounts its own /dev, resolv.conf and hostname at run time; do not leak
# the host's device nodes or values into the image.
rm -rf --one-file-system "${ROOTFS:?}"/dev/*
: >"${ROOTFS}/etc/resolv.conf"
: >"${ROOTFS}/etc/hostname"

log "importing rootfs as ${TAG}"
tar --numeric-owner -C "${ROOTFS}" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "ENV SSL_CERT_FILE=${CA_BUNDLE}" \
  --change "ENV PIP_CERT=${CA_BUNDLE}" \
  --change 'CMD ["python3"]' \
  --message "local python:3.13-slim stand-in: debootstrap ${SUITE} minbase" \
  - "${TAG}" >/dev/null

# Smoke test as an arbitrary non-root UID, like the services run.
docker run --rm --user 10001 "${TAG}" python -c 'import ssl, sqlite3, venv, sys; print(sys.version.split()[0])' >/dev/null ||
  die "smoke test of ${TAG} failed"
log "built ${TAG} ($(docker image inspect -f '{{.Size}}' "${TAG}" | awk '{printf "%.0f MB", $1 / 1e6}'))"
