#!/bin/bash
# Stop the daemons of setup_slurm.sh (state stays for the next run).
set -uo pipefail
. "$(dirname "$0")/lib.sh"
D=$MINIPAR_CI_DIR/slurm
for f in slurmd slurmctld munge/munged; do stop_pidfile "$D/$f.pid"; done
