#!/usr/bin/env bash
# Debian's Chromium, for the test that opens the Prefect and MLflow UIs headless.
# Does nothing when a Chromium is already installed. Without root (or passwordless sudo) or
# apt-get it says how to get one and exits 0, so the browser test skips; with
# MLOPS_REQUIRE_BROWSER=1 (CI) it exits 1 instead.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi

give_up() {
  echo "browser: $1" >&2
  echo "browser: install Debian's 'chromium' package to run the browser test; it is skipped until then." >&2
  if [ -n "${MLOPS_REQUIRE_BROWSER:-}" ]; then exit 1; fi
  exit 0
}

command -v apt-get >/dev/null 2>&1 || give_up "no apt-get on this machine"
SUDO=""
if [ "$(id -u)" != "0" ]; then
  sudo -n true 2>/dev/null || give_up "installing needs root or passwordless sudo"
  SUDO="sudo -n"
fi

echo "browser: installing Debian's chromium (headless UI test)..."
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
chromium --version 2>/dev/null | head -1
