#!/usr/bin/env bash
# Debian's PostgreSQL server, for the tests that run the storage on Postgres (the tests start
# their own server on loopback in a temp folder; the package's own cluster is not used).
# Does nothing when initdb is already installed. Without root (or passwordless sudo) or apt-get
# it says how to get one and exits 0, so the Postgres tests skip; with MLOPS_REQUIRE_POSTGRES=1
# (CI) it exits 1 instead.
set -euo pipefail
source "$(dirname "$0")/apt_install.sh"

if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  exit 0
fi
apt_install postgres postgresql MLOPS_REQUIRE_POSTGRES
# The package may start its own cluster on port 5432: stop it, nothing but the tests' servers runs.
service postgresql stop >/dev/null 2>&1 || ${SUDO:-} service postgresql stop >/dev/null 2>&1 || true
ls -d /usr/lib/postgresql/*/bin | tail -1
