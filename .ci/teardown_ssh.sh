#!/bin/bash
# Stop the sshd of setup_ssh.sh (keys stay for the next run).
set -uo pipefail
. "$(dirname "$0")/lib.sh"
stop_pidfile "$MINIPAR_CI_DIR/ssh/sshd.pid"
