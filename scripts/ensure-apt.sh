#!/usr/bin/env bash
# ensure-apt.sh COMMAND=PACKAGE...: install the Debian package for each missing command.
# Targets call it so that a fresh machine needs nothing installed by hand.
set -euo pipefail

missing=()
for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null 2>&1 || [[ -x "/usr/sbin/${pair%%=*}" ]] || missing+=("${pair#*=}")
done
((${#missing[@]})) || exit 0

if ((EUID != 0)); then
    echo "missing: ${missing[*]}; install with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
