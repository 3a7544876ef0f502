#!/bin/bash
# Stop SGE's execd and qmaster (controlled shutdown takes ~8 s), SIGKILL if they linger.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
command -v qconf >/dev/null || exit 0
qconf -ke "$(hostname)" >/dev/null 2>&1; qconf -km >/dev/null 2>&1
for f in /var/spool/gridengine/execd/*/execd.pid /var/spool/gridengine/qmaster/qmaster.pid; do
  [ -f "$f" ] && stop_pidfile "$f" 150
done
true
