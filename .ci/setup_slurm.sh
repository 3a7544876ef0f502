#!/bin/bash
# Single-node Slurm 22.05 (slurmctld, slurmd, munge) with every file under $MINIPAR_CI_DIR/slurm.
# Tests need: export SLURM_CONF=$MINIPAR_CI_DIR/slurm/slurm.conf. Idempotent.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
D=$MINIPAR_CI_DIR/slurm
apt_install slurmctld slurmd slurm-client munge
mkdir -p "$D/munge" "$D/state" "$D/spool" "$D/jobs"
chmod 755 "$D/munge"                      # munged insists its socket dir is o+x
[ -f "$D/munge/munge.key" ] || mungekey -c -k "$D/munge/munge.key"
alive "$D/munge/munged.pid" || munged --key-file="$D/munge/munge.key" --socket="$D/munge/munge.socket" \
    --pid-file="$D/munge/munged.pid" --log-file="$D/munge/munged.log" --seed-file="$D/munge/munged.seed"
# CPUs=16 with config_overrides: engines sleep in poll, so more tasks than cores is fine and
# lets a 2-core CI box run a controller job and several engine tasks at once.
# sched_interval=1,batch_sched_delay=0: a job starts in ~1 s instead of up to 4 s.
cat > "$D/slurm.conf" <<CONF
ClusterName=minipar
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$D/munge/munge.socket
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/slurmctld.log
SlurmdLogFile=$D/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1,batch_sched_delay=0,sched_min_interval=0
SlurmdParameters=config_overrides
KillWait=5
MpiDefault=none
ReturnToService=2
JobCompType=jobcomp/filetxt
JobCompLoc=$D/jobcomp.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=16 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
export SLURM_CONF=$D/slurm.conf
alive "$D/slurmctld.pid" || slurmctld
alive "$D/slurmd.pid"    || slurmd -N localhost      # NodeName is not the hostname
for _ in $(seq 150); do [ "$(sinfo -h -o %T 2>/dev/null)" = idle ] && break; sleep 0.2; done
[ "$(sinfo -h -o %T 2>/dev/null)" = idle ] || {
  scontrol update nodename=localhost state=resume 2>/dev/null || true; sleep 1; }
[ "$(sinfo -h -o %T)" = idle ] || { tail -20 "$D/slurmctld.log" "$D/slurmd.log"; exit 1; }
echo "Slurm ready: export SLURM_CONF=$SLURM_CONF"
