# Sourced by install_chromium.sh and install_postgres.sh: install a Debian package for a test
# suite, or say why not. `apt_install WHAT PACKAGE REQUIRE_VAR` installs PACKAGE with apt-get
# (as root, or through passwordless sudo). Without either it explains and returns, so the
# suite's tests skip; when the variable named REQUIRE_VAR is set (CI), it exits 1 instead.

give_up() {  # WHAT PACKAGE REQUIRE_VAR REASON
  echo "$1: $4" >&2
  echo "$1: install Debian's '$2' package to run these tests; they are skipped until then." >&2
  if [ -n "${!3:-}" ]; then exit 1; fi
  exit 0
}

apt_install() {  # WHAT PACKAGE REQUIRE_VAR
  command -v apt-get >/dev/null 2>&1 || give_up "$1" "$2" "$3" "no apt-get on this machine"
  SUDO=""
  if [ "$(id -u)" != "0" ]; then
    sudo -n true 2>/dev/null || give_up "$1" "$2" "$3" "installing needs root or passwordless sudo"
    SUDO="sudo -n"
  fi
  echo "$1: installing Debian's $2..."
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$2" >/dev/null
}
