#!/usr/bin/env bash
# Debian's Chromium, for the test that opens the Prefect and MLflow UIs headless.
# Does nothing when a Chromium is already installed. Without root (or passwordless sudo) or
# apt-get it says how to get one and exits 0, so the browser test skips; with
# MLOPS_REQUIRE_BROWSER=1 (CI) it exits 1 instead.
set -euo pipefail
source "$(dirname "$0")/apt_install.sh"

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
apt_install browser chromium MLOPS_REQUIRE_BROWSER
chromium --version 2>/dev/null | head -1
