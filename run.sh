#!/usr/bin/env bash
# Runs ronda on a fresh Debian machine with Python 3.11: creates .venv, installs the
# package, then runs `ronda ARGS` (with no ARGS: the main job, see README).
# `./run.sh --setup [EXTRAS]` only prepares the environment (used by test.sh).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

apt_install() {
  # Debian packages, installed once, only when missing (root on the project's machines)
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  if [ ! -f /tmp/.ronda-apt-updated ]; then
    $sudo apt-get update -qq && touch /tmp/.ronda-apt-updated
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

setup() {
  local extras=${1:-}
  if [ ! -x .venv/bin/python ]; then
    if ! $PY -c 'import ensurepip, venv' >/dev/null 2>&1; then
      apt_install python3-venv
    fi
    $PY -m venv .venv
  fi
  local spec="."
  [ -n "$extras" ] && spec=".[$extras]"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e "$spec"
}

if [ "${1:-}" = "--setup" ]; then
  setup "${2:-}"
  exit 0
fi
if [ "${1:-}" = "--apt" ]; then
  shift
  apt_install "$@"
  exit 0
fi
setup ""
if [ $# -eq 0 ]; then
  # The main job with the embedded default: the trading platform on 127.0.0.1:8080 (the web
  # screen at http://127.0.0.1:8080/), demo reference data, journal and settlement store in
  # ./data, contracts opened and closed by the omie-2018 calendar on the real clock.
  exec .venv/bin/ronda serve
fi
exec .venv/bin/ronda "$@"
