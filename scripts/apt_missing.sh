# Sourced by scripts/test.sh, fault.sh, services.sh and check_compose.sh: install the system packages they need with apt-get, only when
# some are missing, so a prepared machine skips apt.
#
#   apt_install_missing WHO ON_FAIL PACKAGE...   # ON_FAIL: "exit" (exit 1) or "warn" (go on) without root/apt-get
apt_install_missing() {
  local who=$1 on_fail=$2
  shift 2
  [ $# -gt 0 ] || return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "$who: apt-get install $*" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "$@" >/dev/null
  elif [ "$on_fail" = exit ]; then
    echo "$who: missing $* and cannot install them (needs root and apt-get)" >&2
    exit 1
  else
    echo "$who: missing $* (not root or no apt-get): their tests skip here and fail on CI" >&2
  fi
}
