# Shared by the .ci/setup_*.sh scripts (sourced, not run).
# Everything the scripts create lives under $MINIPAR_CI_DIR (default /tmp/minipar-ci).
MINIPAR_CI_DIR=${MINIPAR_CI_DIR:-/tmp/minipar-ci}
export DEBIAN_FRONTEND=noninteractive
mkdir -p "$MINIPAR_CI_DIR"

# apt_install PKG...: install what is missing; `apt-get update` at most once per boot
apt_install() {
  dpkg -s "$@" >/dev/null 2>&1 && return 0
  if [ ! -f "$MINIPAR_CI_DIR/.apt-updated" ]; then
    apt-get update -q >/dev/null && touch "$MINIPAR_CI_DIR/.apt-updated"
  fi
  apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

# alive PIDFILE: the pid in PIDFILE runs
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_pidfile PIDFILE [TRIES]: SIGTERM the pid, wait up to TRIES*0.1 s, then SIGKILL
stop_pidfile() {
  local p; p=$(cat "$1" 2>/dev/null) || return 0
  if kill "$p" 2>/dev/null; then
    for _ in $(seq "${2:-100}"); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  fi
  rm -f "$1"
}
