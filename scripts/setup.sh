#!/usr/bin/env bash
# Create .venv and install kenpin with its training and test extras (CPU torch 2.13.0, pinned),
# and, as root on Debian, the system programs the tests drive for real.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# Debian packages whose programs the tests run: Chromium (the dashboard in a real browser,
# tests/test_browser.py), mosquitto (a real MQTT broker, tests/test_mqtt.py) and systemd
# (systemd-analyze checks the unit, tests/test_systemd.py). Without them those tests skip, and in
# CI a skip for want of an installable package is a failure (tests/conftest.py).
missing_debs() {
  local missing=""
  [ -x /usr/bin/chromium ] || missing+=" chromium"
  # mosquitto lives in /usr/sbin, which is not on a normal user's PATH.
  command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=" mosquitto"
  command -v systemd-analyze >/dev/null || missing+=" systemd"
  echo "${missing# }"
}

install_debs() {
  local missing log
  missing=$(missing_debs)
  [ -n "$missing" ] || return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "setup: the tests that need the Debian packages '$missing' will skip; install them as root: apt-get install $missing" >&2
    return 0
  fi
  echo "setup: installing Debian packages the tests use: $missing"
  log=$(mktemp)
  # A failed install only costs the tests that need the package (they skip, and CI fails on
  # that skip), so it is reported, not fatal: the Python side can still be set up.
  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing; } >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    echo "setup: apt-get could not install '$missing'; the tests that need them will skip" >&2
  fi
  rm -f "$log"
}

# Only for the tests (scripts/test.sh sets it): the demo needs none of these programs.
[ "${KENPIN_TEST_PACKAGES:-0}" = 1 ] && install_debs
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first and pinned: a bare "torch" requirement would pull a newer CUDA build.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
