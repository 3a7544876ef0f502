#!/bin/bash
# PBS/Torque commands (qsub, qstat, qdel) from Slurm's torque wrappers, on the Slurm of
# setup_slurm.sh (run it first). The package conflicts with gridengine-client, so it is
# unpacked, not installed: the commands are in $MINIPAR_CI_DIR/pbs/bin.
# Tests need: SLURM_CONF (as for Slurm) and MINIPAR_PBS_BIN=$MINIPAR_CI_DIR/pbs/bin. Idempotent.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
D=$MINIPAR_CI_DIR/pbs
apt_install libslurm-perl libslurmdb-perl libswitch-perl
if [ ! -x "$D/root/usr/bin/qsub" ]; then
  mkdir -p "$D" && cd "$D"
  [ -f "$MINIPAR_CI_DIR/.apt-updated" ] || { apt-get update -q >/dev/null; touch "$MINIPAR_CI_DIR/.apt-updated"; }
  apt-get download slurm-wlm-torque >/dev/null
  dpkg-deb -x slurm-wlm-torque_*.deb root
  rm -f slurm-wlm-torque_*.deb
  cd - >/dev/null
fi
# the wrappers exec "$FindBin::Bin/sbatch" etc.: put Slurm's commands beside them
for b in sbatch salloc srun squeue scancel scontrol sinfo; do ln -sf "/usr/bin/$b" "$D/root/usr/bin/$b"; done
ln -sfn "$D/root/usr/bin" "$D/bin"
export SLURM_CONF=${SLURM_CONF:-$MINIPAR_CI_DIR/slurm/slurm.conf}
# check the wrappers reach Slurm: pbsnodes (qstat exits non-zero when no job exists yet)
for _ in $(seq 60); do "$D/bin/pbsnodes" >/dev/null 2>&1 && break; sleep 0.5; done
"$D/bin/pbsnodes" >/dev/null
echo "PBS wrappers ready: export MINIPAR_PBS_BIN=$D/bin"
